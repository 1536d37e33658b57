"""The recommend node's output tables, scored one chunk of customers at a time and streamed.

``OutputStream.main()`` is a ``pyarrow.RecordBatchReader``: each batch is one chunk of
customers (a range of customer codes, sized by ``memory_limit``) scored and turned into
rows; the engine writes it before asking for the next, so the node never holds more than
a chunk of its output. The long table (one row per recommendation) is built from the same
chunks: each chunk's long rows go to a scratch table while the main table is written, and
``OutputStream.long()`` streams them back by range when the engine writes ``__long``
(after the main table; no query result stays open while the engine writes, which DuckDB
would not allow on one connection). The scratch tables are dropped at the end.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Iterator

    import numpy as np
    import pyarrow as pa
    import scipy.sparse as sp

    from segloop.models.als import Scorer
    from segloop.models.interactions import Budget, ScratchTables
    from segloop.operators.base import RunContext
    from segloop.operators.recommend import RecommendConfig

SCORE_DECIMALS = 4


class OutputStream:
    """Scores every customer chunk by chunk; the main and long tables as Arrow streams."""

    def __init__(self, scratch: ScratchTables, scorer: Scorer, config: RecommendConfig,
                 wide_columns: dict[str, str], item_ids: np.ndarray, budget: Budget, n_customers: int,
                 weights: sp.csr_matrix | None, bought: sp.csr_matrix | None, metrics: dict[str, Any],
                 seconds: dict[str, float], ctx: RunContext):
        self.scratch, self.scorer, self.config = scratch, scorer, config
        self.wide_columns, self.item_ids, self.budget = wide_columns, item_ids, budget
        self.n_customers = n_customers
        # Without a sample the whole matrices are in memory already: chunks are slices of
        # them; with a sample each chunk's rows are fetched from the scratch pairs table.
        self.weights, self.bought = weights, bought
        self.metrics, self.seconds, self.ctx = metrics, seconds, ctx
        self.id_type = scratch.customer_id_type()

    # -- schemas ---------------------------------------------------------------------------

    def main_schema(self) -> pa.Schema:
        import pyarrow as pa

        n = self.config.top_n
        fields = [pa.field(self.config.customer_id, self.id_type), pa.field("recommended", pa.list_(pa.string())),
                  pa.field("scores", pa.string()), pa.field("source", pa.string())]
        fields += [pa.field(f"rec_{j}", pa.string()) for j in range(1, n + 1)]
        fields += [pa.field(f"score_{j}", pa.float64()) for j in range(1, n + 1)]
        fields += [pa.field(column, pa.float64()) for column in self.wide_columns.values()]
        return pa.schema(fields)

    def long_schema(self, with_code: bool = False) -> pa.Schema:
        import pyarrow as pa

        fields = [pa.field(self.config.customer_id, self.id_type), pa.field("item_id", pa.string()),
                  pa.field("score", pa.float64()), pa.field("rank", pa.int64()), pa.field("source", pa.string())]
        return pa.schema(fields + ([pa.field("_u", pa.int64())] if with_code else []))

    # -- streams ---------------------------------------------------------------------------

    def main(self) -> pa.RecordBatchReader:
        import pyarrow as pa

        return pa.RecordBatchReader.from_batches(self.main_schema(), self._main_batches())

    def long(self) -> pa.RecordBatchReader:
        import pyarrow as pa

        return pa.RecordBatchReader.from_batches(self.long_schema(), self._long_batches())

    def _ranges(self) -> Iterator[tuple[int, int]]:
        step = self.budget.chunk_customers
        for lo in range(0, self.n_customers, step):
            yield lo, min(lo + step, self.n_customers)

    def _main_batches(self) -> Iterator[pa.RecordBatch]:
        import numpy as np

        clock = time.perf_counter()
        wh, long_name = self.scratch.warehouse, self.scratch.names["long"]
        shown = np.zeros(self.scorer.n_items, dtype=bool)
        try:
            wh.create_table(long_name, self.long_schema(with_code=True).empty_table())
            for lo, hi in self._ranges():
                ids, weights, bought = self._chunk(lo, hi)
                users = np.arange(lo, hi)
                items, scores, from_popular, factors = self.scorer.score(users, weights, bought, self.config.top_n)
                shown[items[items >= 0]] = True
                main, long = self._batches(ids, items, scores, from_popular, factors, bought, lo)
                if long.num_rows:
                    wh.insert(long_name, long)
                self.ctx.progress(hi - lo, self.n_customers)
                yield main
        except BaseException:
            self.scratch.drop()
            raise
        self.scratch.drop(("customers", "items", "pairs"))  # the long rows are all that is left to read
        # Read by the engine after the output is written (a second update of the node's metrics).
        self.metrics["catalogue_coverage"] = round(float(shown.mean()), 4) if len(shown) else 0.0
        self.seconds["score"] = round(time.perf_counter() - clock, 3)

    def _long_batches(self) -> Iterator[pa.RecordBatch]:
        try:
            table = self.scratch.warehouse.table(self.scratch.names["long"])
            for lo, hi in self._ranges():
                part = table.filter((table._u >= lo) & (table._u < hi)).order_by(["_u", "rank"]).drop("_u")
                batches = list(self.scratch.warehouse.to_batches(part, batch_rows=self.budget.batch_rows))
                yield from (b.cast(self.long_schema()) if b.schema != self.long_schema() else b for b in batches)
        finally:
            self.scratch.drop()

    def _chunk(self, lo: int, hi: int) -> tuple[pa.Array, sp.csr_matrix, sp.csr_matrix]:
        """Customer ids and (weights, bought) rows of codes ``lo..hi-1``."""
        import numpy as np

        if self.weights is not None and self.bought is not None:
            ids = self.scratch.customer_ids(lo, hi, self.budget.batch_rows)
            return ids, self.weights[lo:hi], self.bought[lo:hi]
        ids, pairs = self.scratch.chunk(lo, hi, self.budget.batch_rows, ("weight", "bought"))
        rows = (pairs.users - lo).astype(np.int32)
        n_items = self.scorer.n_items
        return ids, pairs.matrix("weight", rows, hi - lo, n_items), pairs.matrix("bought", rows, hi - lo, n_items)

    def _batches(self, ids: pa.Array, items: np.ndarray, scores: np.ndarray, from_popular: np.ndarray,
                 factors: np.ndarray | None, bought: sp.csr_matrix, lo: int) -> tuple[pa.RecordBatch, pa.Table]:
        """One chunk's rows of the main table (a batch) and of the long table (with ``_u``)."""
        import numpy as np
        import orjson
        import pyarrow as pa

        n = self.config.top_n
        valid = items >= 0
        names = np.full(items.shape, None, dtype=object)
        names[valid] = self.item_ids[items[valid]]
        rounded = np.round(scores.astype("float64"), SCORE_DECIMALS)  # NaN where no item
        recommended, score_json = [], []
        for row in range(len(names)):
            row_items = [x for x in names[row].tolist() if x is not None]
            recommended.append(row_items)
            score_json.append(orjson.dumps({item: float(rounded[row, j]) for j, item in enumerate(row_items)}).decode())
        source = np.where(from_popular, "popular", "model")
        columns: list[Any] = [ids, pa.array(recommended, pa.list_(pa.string())), pa.array(score_json, pa.string()),
                              pa.array(source, pa.string())]
        columns += [pa.array(names[:, j].tolist(), pa.string()) for j in range(n)]
        columns += [pa.array(rounded[:, j], pa.float64(), from_pandas=True) for j in range(n)]
        columns += self._wide(from_popular, factors, bought)
        main = pa.RecordBatch.from_arrays(columns, schema=self.main_schema())
        rows, ranks = np.nonzero(valid)
        long = pa.Table.from_arrays([
            ids.take(pa.array(rows)), pa.array(self.item_ids[items[rows, ranks]].tolist(), pa.string()),
            pa.array(rounded[rows, ranks], pa.float64(), from_pandas=True), pa.array(ranks + 1, pa.int64()),
            pa.array(source[rows], pa.string()), pa.array(rows + lo, pa.int64()),
        ], schema=self.long_schema(with_code=True))
        return main, long

    def _wide(self, from_popular: np.ndarray, factors: np.ndarray | None, bought: sp.csr_matrix) -> list[pa.Array]:
        """The ALS score of each ``wide_items`` item (null: no history, bought, or no such item)."""
        import numpy as np
        import pyarrow as pa

        if not self.wide_columns:
            return []
        lookup = {item: i for i, item in enumerate(self.item_ids.tolist())}
        warm = np.flatnonzero(~from_popular)
        out = []
        for item in self.wide_columns:
            index = lookup.get(item)
            values = np.full(len(from_popular), np.nan)
            if index is not None and factors is not None and self.scorer.model is not None:
                values[warm] = np.round((factors @ self.scorer.model.item_factors[index]).astype("float64"),
                                        SCORE_DECIMALS)
                if self.config.exclude_purchased:
                    values[np.asarray(bought[:, index].todense()).ravel() > 0] = np.nan
            out.append(pa.array(values, pa.float64(), from_pandas=True))
        return out
