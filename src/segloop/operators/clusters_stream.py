"""The clusters node within ``memory_limit``: train on a sample, assign in streamed chunks.

When there are more customers than ``fit_rows`` (or than the node's budget holds), the
node trains k-means (as float32) on a sample the warehouse picks by a hash of the customer id
(the ``fit_rows`` ids with the lowest md5 of ``seed:id``: the same customers on every run,
every warehouse and any row order; only the sample crosses into Python), and then reads all
rows in chunks of at most ``ClustersOperator.ASSIGN_ROWS``: each chunk is scaled with the
sample's transform, assigned to the nearest centre and streamed back to the warehouse,
while the cluster profiles are summed up on the way.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import ibis.expr.types as ir
    import numpy as np
    import pyarrow as pa

    from segloop.operators.base import RunContext

def fetch_sample(
    ctx: RunContext, source: ir.Table, cid: str, columns: list[str], rows: int, seed: int,
    batch_rows: int, total: int | None = None,
) -> tuple[pa.Array, np.ndarray]:
    """Ids and a float32 matrix of the ``rows`` customers whose ids hash lowest (md5 of
    ``seed:id``, ``Warehouse.key_hash``, ties by id), sorted by id (k-means'
    start depends on row order). The warehouse picks them (a top-``rows`` by hash), so
    exactly ``rows`` are pulled into Python (fewer only if there are fewer customers), the
    same customers on every run, engine and row order; rows with a NULL id are never picked.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from segloop.warehouses.sampling import sample_filter

    selected = _select(source, cid, columns)
    key = selected[cid]
    hashed = selected.filter(key.notnull()).mutate(_segloop_hash=ctx.warehouse.key_hash(key, str(seed)))
    # The top-n alone holds the rows it ranks in the warehouse's memory (+80 MB at 1M rows
    # on DuckDB); a hash range expected to hold n plus six standard deviations leaves it a
    # few percent more than n to rank, and misses one of the n lowest with odds below 1e-9.
    total = ctx.warehouse.count(source) if total is None else total  # rows of ``source``
    if total > rows:
        share = min(1.0, (rows + 6 * rows**0.5 + 10) / total)
        hashed = hashed.filter(sample_filter(hashed["_segloop_hash"], share))
    sample = hashed.order_by(["_segloop_hash", cid]).limit(rows).drop("_segloop_hash")
    ids: list[pa.Array] = []
    blocks: list[np.ndarray] = []
    for batch in ctx.warehouse.to_batches(sample, batch_rows=batch_rows):
        ids.append(batch.column(0))
        blocks.append(_matrix(batch, len(columns)))
        ctx.progress(batch.num_rows, None)
    id_array = pa.chunked_array(ids).combine_chunks() if ids else pa.array([], pa.string())
    matrix = np.vstack(blocks) if blocks else np.empty((0, len(columns)), np.float32)
    order = pc.sort_indices(id_array).to_numpy()
    return id_array.take(pa.array(order)), matrix[order]


def _select(source: ir.Table, cid: str, columns: list[str]) -> ir.Table:
    return source.select(source[cid], *[source[c].cast("float64").name(c) for c in columns])


def _matrix(batch: pa.RecordBatch, width: int, dtype: str = "float32") -> np.ndarray:
    import numpy as np

    if not batch.num_rows:
        return np.empty((0, width), dtype)
    return np.column_stack([
        batch.column(i + 1).to_numpy(zero_copy_only=False).astype(dtype) for i in range(width)
    ])


@dataclass
class Scaler:
    """The node's transform, fitted on the training rows and applied to any chunk:
    ``sign(v) * log1p(|v|)`` when ``log`` (``log1p`` for non-negative values), then the
    training rows' mean and standard deviation."""

    log: bool
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, values: np.ndarray, log: bool) -> Scaler:
        logged = _log(values, log)
        std = logged.std(axis=0)
        std[std == 0] = 1.0  # a constant column carries no information; keep it at 0
        return cls(log=log, mean=logged.mean(axis=0), std=std)

    def apply(self, values: np.ndarray) -> np.ndarray:
        out: np.ndarray = (_log(values, self.log) - self.mean) / self.std
        return out.astype(values.dtype, copy=False)


def _log(values: np.ndarray, log: bool) -> np.ndarray:
    import numpy as np

    if not log:
        return values
    return np.sign(values) * np.log1p(np.abs(values))


@dataclass
class Profiles:
    """Cluster sizes and column sums, added up chunk by chunk."""

    k: int
    width: int
    sizes: np.ndarray = field(init=False)
    sums: np.ndarray = field(init=False)
    done: bool = False

    def __post_init__(self) -> None:
        import numpy as np

        self.sizes = np.zeros(self.k, dtype=np.int64)
        self.sums = np.zeros((self.k, self.width))

    def add(self, labels: np.ndarray, values: np.ndarray) -> None:
        import numpy as np

        self.sizes += np.bincount(labels, minlength=self.k)
        for j in range(self.width):
            self.sums[:, j] += np.bincount(labels, weights=values[:, j], minlength=self.k)

    def means(self) -> np.ndarray:
        import numpy as np

        with np.errstate(invalid="ignore", divide="ignore"):
            out: np.ndarray = self.sums / self.sizes[:, None]
        return out


def stream_assignments(
    ctx: RunContext,
    source: ir.Table,
    cid: str,
    columns: list[str],
    medians: np.ndarray,
    scaler: Scaler,
    model: Any,
    mapping: np.ndarray,
    names: list[str],
    batch_rows: int,
    schema: pa.Schema,
) -> tuple[pa.RecordBatchReader, Profiles]:
    """Every customer's cluster, chunk by chunk, as a reader the engine writes from; the
    profiles fill in as it is read (the engine writes the main table before the extras)."""
    import numpy as np
    import pyarrow as pa

    profiles = Profiles(len(names), len(columns))
    name_array = pa.array(names, pa.string())

    def batches() -> Iterator[pa.RecordBatch]:
        for batch in ctx.warehouse.to_batches(_select(source, cid, columns), batch_rows=batch_rows):
            values = _matrix(batch, len(columns), "float64")
            missing = np.isnan(values)
            if missing.any():
                values = np.where(missing, medians[None, :], values)
            labels = mapping[model.predict(scaler.apply(values.astype(np.float32)))]
            profiles.add(labels, values)
            data: dict[str, Any] = {
                cid: batch.column(0),
                "cluster": pa.array(labels, pa.int64()),
                "cluster_name": name_array.take(pa.array(labels)),
            }
            for j, column in enumerate(columns):
                if column not in data:
                    data[column] = pa.array(values[:, j], pa.float64())
            ctx.progress(batch.num_rows, None)
            yield pa.table(data).cast(schema).to_batches()[0] if batch.num_rows else pa.RecordBatch.from_pylist([], schema=schema)
        profiles.done = True

    return pa.RecordBatchReader.from_batches(schema, batches()), profiles
