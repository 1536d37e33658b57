"""How the propensity node moves rows between the warehouse and Python within ``memory_limit``.

- **One feature table per run.** The features and labels of the three snapshots (training,
  validation, scoring) are computed in one pass over the events and kept as one warehouse
  table, under a key that is its SQL (inputs, columns, snapshots, event types, target), in
  the run's shared scope: a second propensity node of the run reading the same events
  (the demo's buyers and churners) reuses it; the engine drops it when the run ends.
  Nothing event-sized is cached (the node used to keep a full copy of the events).
- **Training on a sample.** When a snapshot has more customers than the budget allows,
  the rows fetched are a stratified sample: each label keeps its share of the customers
  (so the base rate is unchanged), taken as every n-th customer id within each label
  (systematic sampling, the same on every run and engine). The node's metrics say so.
- **Scoring in chunks.** Customers are scored a chunk of ids at a time (float32 matrices),
  and the (customer, probability, score) rows are streamed into a scoring table of the
  run; the node's output is a query over it that ranks the scores in the warehouse
  (``percent_rank``), so no step holds every customer.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, cast

from segloop.errors import NodeError
from segloop.memory import rows_within

if TYPE_CHECKING:  # pragma: no cover
    import ibis.expr.types as ir
    import numpy as np
    import pyarrow as pa

    from segloop.operators.base import RunContext
    from segloop.operators.propensity_features import FeatureBuilder, Snapshot
    from segloop.warehouses.pyspark import PySparkWarehouse

TRAIN, VALID, SCORE = "t_", "v_", "s_"  # column prefixes of the snapshots in the feature table


@dataclass(frozen=True)
class Budget:
    """Rows the node may hold at once: training sample, validation sample, scoring chunk.

    A row costs about ``BYTES_PER_FEATURE`` per feature while it is trained on: the Arrow
    fetch (8-byte columns), the float32 matrix (4), scikit-learn's float64 copy (8) and its
    binned copy (1), with room for the gradients; plus a fixed ``ROW_BYTES`` (id, label).
    Training and validation rows are held together, so they split most of the budget;
    scoring happens after, a chunk at a time.
    """

    BYTES_PER_FEATURE: ClassVar[int] = 24
    ROW_BYTES: ClassVar[int] = 96
    TRAIN_SHARE: ClassVar[float] = 0.5
    VALID_SHARE: ClassVar[float] = 0.25
    SCORE_SHARE: ClassVar[float] = 0.25

    train_rows: int
    valid_rows: int
    chunk_rows: int

    @classmethod
    def of(cls, memory_limit: int, features: int) -> Budget:
        per_row = cls.BYTES_PER_FEATURE * features + cls.ROW_BYTES
        return cls(
            train_rows=max(2, rows_within(memory_limit, per_row, cls.TRAIN_SHARE)),
            valid_rows=max(2, rows_within(memory_limit, per_row, cls.VALID_SHARE)),
            chunk_rows=rows_within(memory_limit, per_row, cls.SCORE_SHARE),
        )


@dataclass(frozen=True)
class Counts:
    """Customers per snapshot and label, counted in the warehouse."""

    customers: int  # rows of the feature table: every customer with an event
    train_positives: int
    train_negatives: int
    valid_positives: int
    valid_negatives: int
    scored: int


@dataclass(frozen=True)
class PreparedFeatures:
    """The feature table of one run's snapshots, and which node built it."""

    table: ir.Table
    name: str
    built_by: str
    counts: Counts
    parts: int = 1  # queries it was built in, each for a share of the customers


def prepare(ctx: RunContext, builder: FeatureBuilder, snapshots: list[Snapshot]) -> PreparedFeatures:
    """The run's feature table for these snapshots: built by the first node that asks.

    Built in ``parts(...)`` queries of a share of the customers each where the warehouse
    holds the customers' aggregate states in its own memory (DuckDB); ``_row`` numbers the
    rows 0..n-1 in the order they were written (part by part, customer id within a part).
    """
    wide = numbered(builder.snapshots(snapshots))
    sql = ctx.warehouse.compile(wide)

    def build() -> PreparedFeatures:
        name = f"_segloop_{ctx.pipeline}__features_{secrets.token_hex(6)}"  # unique: a preview may run beside a run
        ctx.shared.on_close(lambda: ctx.warehouse.drop_table(name))
        n = parts(ctx, builder, snapshots)
        if n == 1:
            ctx.warehouse.replace_table(name, wide, count=False)
        else:
            written = 0
            for i in range(n):
                part = numbered(builder.snapshots(snapshots, part=(i, n)), written)
                if i == 0:
                    ctx.warehouse.replace_table(name, part, count=False)
                else:
                    ctx.warehouse.insert(name, part)
                written = ctx.warehouse.count_rows(name)
        table = ctx.warehouse.table(name)
        return PreparedFeatures(table, name, ctx.node, _count(ctx, table), n)

    return ctx.shared.get(("propensity.features", ctx.warehouse.backend, sql), build)


def numbered(wide: ir.Table, start: int = 0) -> ir.Table:
    """``wide`` with ``_row`` (``start``, ``start`` + 1, ... in customer id order), in that order."""
    import ibis

    row = ibis.row_number().over(order_by=wide._cid)
    return wide.mutate(_row=row + start if start else row).order_by("_row")


GROUP_STATE_BYTES = 16
"""Memory an aggregate state takes per customer and thread while the feature query groups
(DuckDB keeps a 16-byte sum, or a min/max with its flag, in a hash table). With
``GROUP_STATE_SHARE`` and 2 threads, a part may hold one customer-aggregate per 64 bytes
of DuckDB's ``memory_limit``. Measured on DuckDB 2.0.1, 2 threads, 300,000 customers under
192 MiB: the feature query's first 40 aggregates passed (one per 16.8 bytes), its first
60 failed (one per 11.2 bytes)."""
GROUP_STATE_SHARE = 0.5
"""Share of the warehouse's memory the feature query's groups may take."""


def parts(ctx: RunContext, builder: FeatureBuilder, snapshots: list[Snapshot]) -> int:
    """In how many queries of a share of the customers each the feature table is built:
    1 unless the warehouse keeps the aggregate states in its own memory (DuckDB) and
    customers x aggregates x ``GROUP_STATE_BYTES`` x threads would exceed
    ``GROUP_STATE_SHARE`` of it. Customers are counted approximately (HyperLogLog: constant
    memory, one scan of the events' ids)."""
    import math

    memory = ctx.warehouse.group_state_memory()
    if memory is None:
        return 1
    limit, threads = memory
    per_customer = builder.aggregates(snapshots) * GROUP_STATE_BYTES * threads
    events = builder.rows
    customers = int(ctx.warehouse.rows(events.aggregate(n=events._cid.approx_nunique()))[0]["n"] or 0)
    return max(1, math.ceil(customers * per_customer / (limit * GROUP_STATE_SHARE)))


def _count(ctx: RunContext, wide: ir.Table) -> Counts:
    def n(condition: Any) -> Any:
        return condition.ifelse(1, 0).sum()

    t, v = wide[f"{TRAIN}events"] > 0, wide[f"{VALID}events"] > 0
    row = ctx.warehouse.rows(
        wide.aggregate(
            customers=wide.count(),
            tp=n(t & (wide[f"{TRAIN}_label"] == 1)),
            tn=n(t & (wide[f"{TRAIN}_label"] == 0)),
            vp=n(v & (wide[f"{VALID}_label"] == 1)),
            vn=n(v & (wide[f"{VALID}_label"] == 0)),
            s=n(wide[f"{SCORE}events"] > 0),
        )
    )[0]
    value = {key: int(row[key] or 0) for key in row}
    return Counts(value["customers"], value["tp"], value["tn"], value["vp"], value["vn"], value["s"])


def labelled_rows(
    builder: FeatureBuilder, wide: ir.Table, prefix: str, positives: int, negatives: int, cap: int
) -> tuple[ir.Table, bool]:
    """A snapshot's labelled rows ordered by customer id; a stratified sample above ``cap``.

    Each label keeps its share of ``cap`` (at least one row), so the sample's base rate is
    the snapshot's. Within a label every (n/k)-th customer in id order is kept: the
    (i+1)-th row is kept when floor((i+1) k / n) > floor(i k / n), exactly k of n rows.
    """
    import ibis

    rows = builder.select_snapshot(wide, prefix, labelled=True)
    total = positives + negatives
    if total <= cap:
        return rows.order_by("_cid"), False
    k_pos = min(positives, max(1, round(cap * positives / total)))
    k_neg = min(negatives, max(1, cap - k_pos))
    positive = rows._label == 1
    n = ibis.ifelse(positive, positives, negatives).cast("float64")
    k = ibis.ifelse(positive, k_pos, k_neg).cast("float64")
    i = ibis.row_number().over(group_by=rows._label, order_by=rows._cid).cast("float64")
    marked = rows.mutate(_keep=((i + 1) * k / n).floor() > (i * k / n).floor())
    kept = marked.filter(marked._keep).drop("_keep")
    return kept.order_by("_cid"), True


def score_chunks(
    ctx: RunContext,
    builder: FeatureBuilder,
    prepared: PreparedFeatures,
    chunk_rows: int,
    score: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    on_chunk: Callable[[int], None],
) -> pa.RecordBatchReader:
    """(``_cid``, ``probability``, ``_score``) of every customer of the scoring snapshot,
    a chunk of ``chunk_rows`` customer ids at a time; ``score(matrix)`` gives the
    probabilities and the model's raw scores of a chunk."""
    import pyarrow as pa

    names = builder.feature_names()
    wide = prepared.table
    cid_type = wide.schema()["_cid"].to_pyarrow()
    schema = pa.schema([("_cid", cid_type), ("probability", pa.float64()), ("_score", pa.float64())])

    def batches() -> Iterator[pa.RecordBatch]:
        for start in range(0, prepared.counts.customers, chunk_rows):
            part = wide.filter((wide._row >= start) & (wide._row < start + chunk_rows))  # 0-based
            rows = ctx.warehouse.to_arrow(builder.select_snapshot(part, SCORE).order_by("_cid"))
            if not rows.num_rows:
                continue
            probability, raw = score(matrix(rows, names))
            on_chunk(rows.num_rows)
            yield pa.record_batch(
                [rows["_cid"].combine_chunks().cast(cid_type), pa.array(probability, pa.float64()),
                 pa.array(raw, pa.float64())],
                schema=schema,
            )

    return pa.RecordBatchReader.from_batches(schema, batches())


def spark_session(ctx: RunContext) -> Any | None:
    """The Spark session behind the warehouse, when it is Spark (Ibis's pyspark backend)."""
    session = getattr(ctx.warehouse.con, "_session", None)
    return session if type(session).__module__.startswith("pyspark") else None


def score_in_spark(
    ctx: RunContext,
    session: Any,
    builder: FeatureBuilder,
    prepared: PreparedFeatures,
    name: str,
    score: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
) -> None:
    """Score every customer inside Spark and let Spark write the scoring table.

    The trained model travels to the executors with ``score`` (pickled); each applies it to
    its partitions' rows with ``mapInPandas``. Nothing per customer reaches the driver.
    """
    names = builder.feature_names()
    frame = session.sql(ctx.warehouse.compile(builder.select_snapshot(prepared.table, SCORE)))
    cid_type = frame.schema["_cid"].dataType.simpleString()

    def apply(parts: Iterator[Any]) -> Iterator[Any]:
        import numpy as np
        import pandas as pd

        for part in parts:
            x = part[names].to_numpy(dtype=np.float32, na_value=np.nan)
            probability, raw = score(x)
            yield pd.DataFrame({"_cid": part["_cid"], "probability": probability, "_score": raw})

    scored = frame.mapInPandas(apply, f"_cid {cid_type}, probability double, _score double")
    try:  # the warehouse's own write: a view in the way is replaced, its table listing kept current
        cast("PySparkWarehouse", ctx.warehouse).write_dataframe(scored, name)
    except Exception as exc:
        first = next(iter(str(exc).strip().splitlines()), type(exc).__name__)
        raise NodeError(
            ctx.node,
            f"scoring in Spark failed ({first[:300]}). The executors run the model in Python: "
            "they need segloop and scikit-learn installed (in local mode they use the Python that "
            "runs segloop, unless PYSPARK_PYTHON names another)",
        ) from exc


def ranked_output(ctx: RunContext, scores: ir.Table, customer_id: str, scored: int) -> ir.Table:
    """The node's output over its scoring table: the percentile of each customer's score
    among all, ranked in the warehouse (``percent_rank``: the share of the others with a
    strictly lower score; a single customer is 1.0, as ``scoring.percentile_rank``)."""
    import ibis

    if scored == 1:
        percentile: Any = ibis.literal(1.0, "float64")
    else:
        percentile = ibis.percent_rank().over(order_by=scores._score).cast("float64")
    out = scores.select(scores._cid.name(customer_id), scores.probability, percentile.name("percentile"))
    return out.order_by(customer_id)


def scoring_table(ctx: RunContext) -> str:
    """Where the node streams its scores during the run (dropped when the run ends); a name
    of its own, so a preview of the node beside a run, or a second call, cannot overwrite it."""
    return f"_segloop_{ctx.pipeline}__{ctx.node}__scores_{secrets.token_hex(6)}"


def matrix(table: pa.Table, names: list[str]) -> np.ndarray:
    """Feature columns as a float32 matrix; nulls become NaN (the model treats them as missing)."""
    import numpy as np
    import pyarrow.compute as pc

    out = np.empty((table.num_rows, len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        out[:, j] = pc.cast(table[name], "float64").to_numpy(zero_copy_only=False)  # null -> NaN
    return out
