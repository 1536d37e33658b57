"""The clv node on Spark: fitted on the driver from collapsed rows, scored and written by Spark.

On a ``pyspark`` warehouse nothing per customer reaches the driver:

- the per-customer summary is the same Ibis query as elsewhere (``clv_summary``), run as
  Spark SQL;
- the fit reads the summary collapsed in Spark to distinct ``(x, t_x, T)`` and ``(x, m)``
  rows with counts (``FitRows.from_warehouse``): their number is bounded by the distinct
  purchase histories, not by the customers, and thinned beyond ``memory_limit`` as on the
  other warehouses;
- scoring ships the fitted model (parameters, parameter draws) to the executors, which
  apply ``ClvModel.score`` to their partitions' rows with ``mapInArrow``: the same code, so
  predictions and intervals are those of the single-machine path (to float rounding);
- Spark writes the scores to a scratch table of the run; the node's output is a query over
  it that adds ``clv_percentile`` with ``percent_rank`` (the same definition as
  ``scoring.percentile_rank``), which the engine has Spark write as the node's table;
- the holdout card scores its customers the same way and brings only the columns the card
  needs to the driver, for at most ``HOLDOUT_CUSTOMERS`` customers (a uniform sample of
  Spark's beyond that; ``holdout_sample`` then says how many).
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from segloop.errors import NodeError

if TYPE_CHECKING:  # pragma: no cover
    import ibis.expr.types as ir
    import pyarrow as pa

    from segloop.operators.base import RunContext
    from segloop.operators.clv import ClvConfig
    from segloop.operators.clv_model import ClvModel
    from segloop.warehouses.pyspark import PySparkWarehouse

# Customers whose holdout forecast comes to the driver for the card (7 floats each); a
# uniform sample of this many above it. The card's figures are shares and correlations,
# which a sample this size pins down far below their run-to-run noise.
HOLDOUT_CUSTOMERS = 200_000


def shippable(model: ClvModel) -> ClvModel:
    """The model as the executors get it: without the run's context (``warn`` holds the
    node's context, which holds the warehouse) nor the fit's rows (recomputed per history)."""
    return dataclasses.replace(model, warn=_ignore, known=None)


def _ignore(message: str) -> None:
    return None


def score_in_spark(ctx: RunContext, wh: PySparkWarehouse, summary: ir.Table, model: ClvModel,
                   config: ClvConfig) -> tuple[ir.Table, dict[str, Any]]:
    """Score every customer of ``summary`` in Spark's executors; the node's output query and
    the scoring metrics (totals, non-finite predictions), computed in Spark."""
    import ibis
    import pyarrow as pa

    remote = shippable(model)
    empty = pa.Table.from_batches([], schema=summary.schema().to_pyarrow())
    schema = remote.score(empty, _no_percentile).drop_columns(["clv_percentile"]).schema

    def apply(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            if batch.num_rows:
                scored = remote.score(pa.Table.from_batches([batch]), _no_percentile)
                yield from scored.drop_columns(["clv_percentile"]).cast(schema).to_batches()

    frame = wh.dataframe(summary).mapInArrow(apply, spark_schema(schema))
    name = f"_segloop_{ctx.pipeline}__{ctx.node}__clv_{secrets.token_hex(6)}"
    try:
        wh.write_dataframe(frame, name)
    except Exception as exc:
        raise NodeError(ctx.node, f"scoring in Spark failed ({first_line(exc)}). The executors "
                        "apply the model in Python: they need segloop installed (in local mode "
                        "they use the Python that runs segloop, unless PYSPARK_PYTHON names another)") from exc
    ctx.shared.on_close(lambda: wh.drop_table(name))
    scores = wh.table(name)
    finite = (scores.p_alive.notnull() & scores.expected_purchases.notnull()
              & scores.expected_spend.notnull() & scores.predicted_clv.notnull())
    totals = wh.rows(scores.aggregate(
        customers=scores.count(),
        total=scores.predicted_clv.sum(),
        bad=scores.predicted_clv.isnull().ifelse(1, 0).sum(),
        finite=finite.ifelse(1, 0).sum(),
    ))[0]
    model._warn_non_finite(int(totals["bad"] or 0))
    # scoring.percentile_rank over the customers with a finite prediction: the share of the
    # others strictly lower; one customer alone is 1.0; the others get none.
    if int(totals["finite"] or 0) == 1:
        rank: Any = ibis.literal(1.0, "float64")
    else:
        rank = ibis.percent_rank().over(group_by=finite, order_by=scores.predicted_clv).cast("float64")
    columns = [c for c in schema.names]
    at = columns.index("predicted_clv") + 1
    output = scores.select(*columns[:at], ibis.ifelse(finite, rank, ibis.null("float64")).name("clv_percentile"),
                           *columns[at:])
    metrics = {"predicted_clv_total": float(totals["total"] or 0.0), "scoring": "spark"}
    return output.order_by(config.customer_id), metrics


def holdout_rows(wh: PySparkWarehouse, summary: ir.Table, model: ClvModel, config: ClvConfig,
                 customers: int, horizon: float) -> tuple[pa.Table, float]:
    """What the holdout card needs per customer (``cid, predicted, actual, history, count,
    below, at``), computed in the executors; at most ``HOLDOUT_CUSTOMERS`` rows come back
    (a sample of Spark's above it). Returns them and the share of customers they are."""
    import numpy as np
    import pyarrow as pa

    remote = shippable(model)
    cid = config.customer_id
    cid_type = summary.schema()[cid].to_pyarrow()
    schema = pa.schema([(cid, cid_type), ("predicted", pa.float64()), ("actual", pa.float64()),
                        ("history", pa.float64()), ("count", pa.int64()), ("below", pa.float64()),
                        ("at", pa.float64())])

    def apply(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from segloop.models.btyd_intervals import pit_bounds
        from segloop.operators.clv_summary import floats

        for batch in batches:
            if not batch.num_rows:
                continue
            table = pa.Table.from_batches([batch])
            v = remote.point(table)
            count = table["actual_purchases"].to_numpy(zero_copy_only=False).astype(np.int64)
            if remote.draws is not None:
                below, at = pit_bounds(remote.draws, v["x"], v["t_x"], v["T"], horizon, count)
            else:
                below = at = np.full(len(count), np.nan)
            yield pa.record_batch([
                table[cid].combine_chunks().cast(cid_type),
                pa.array(v["expected_purchases"] * v["expected_spend"], pa.float64()),
                pa.array(floats(table["actual_spend"]), pa.float64()),
                pa.array(floats(table["total_spend"]), pa.float64()),
                pa.array(count, pa.int64()), pa.array(below, pa.float64()), pa.array(at, pa.float64()),
            ], schema=schema)

    frame = wh.dataframe(summary)
    share = 1.0
    if customers > HOLDOUT_CUSTOMERS:
        share = HOLDOUT_CUSTOMERS / customers
        frame = frame.sample(withReplacement=False, fraction=share, seed=config.seed)
    return wh.collect_dataframe(frame.mapInArrow(apply, spark_schema(schema))), share


def spark_schema(schema: pa.Schema) -> Any:
    """Spark's schema of an Arrow schema (the types Ibis gives the same columns)."""
    import ibis
    from ibis.backends.pyspark.datatypes import PySparkSchema

    return PySparkSchema.from_ibis(ibis.Schema.from_pyarrow(schema))


def first_line(exc: BaseException) -> str:
    return next(iter(str(exc).strip().splitlines()), type(exc).__name__)[:300]


def _no_percentile(values: Any) -> Any:
    import numpy as np

    return np.zeros(len(values))
