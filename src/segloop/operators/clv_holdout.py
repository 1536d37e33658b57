"""The clv node's quality card: refit as of ``as_of - horizon``, score what followed.

The node fits the same models on the history up to ``as_of - horizon`` and compares that
forecast with the purchases and spend that really came in the next ``horizon``:

- ``holdout_spearman``: rank correlation of predicted and actual spend (next to
  ``holdout_baseline_spearman``, the same for past spend: the model should rank better);
- ``holdout_gini``: normalized Gini of actual spend ordered by the prediction (1 = the
  best possible order, 0 = random);
- ``holdout_decile_error``: predicted vs actual spend by tenth of the forecast, as the
  summed absolute difference over the summed actual spend (0 = every decile right); the
  table ``<pipeline>__<node>__holdout`` holds the deciles;
- ``holdout_interval_coverage``: the share of customers whose randomized PIT (the rank of
  their actual purchase count in its forecast distribution) lies in [0.1, 0.9]; 0.80 when
  the intervals mean what they say, and ``holdout_purchases_p01``/``p99`` around the
  actual total ``holdout_purchases``.

Customers are scored in chunks within ``memory_limit``; beyond what the budget keeps, the
card is computed on a uniform sample of customers (``holdout_sample`` says how many). On
Spark the executors score them and only the card's columns come back (``clv_spark``).
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from segloop.errors import DataError
from segloop.models.scoring import DAYS_PER_UNIT, deciles, spearman
from segloop.operators.clv_summary import FitRows, by_customer, floats, summary_expr
from segloop.warehouses.pyspark import spark_warehouse

if TYPE_CHECKING:  # pragma: no cover
    import ibis.expr.types as ir
    import numpy as np
    import pyarrow as pa

    from segloop.operators.base import RunContext
    from segloop.operators.clv import ClvConfig, ClvOperator
    from segloop.operators.clv_model import ClvModel

BYTES_PER_CUSTOMER = 40  # predicted, actual, history, PIT kept per customer for the card


def validate(
    op: ClvOperator, source: ir.Table, config: ClvConfig, as_of: date, ctx: RunContext
) -> tuple[dict[str, Any], pa.Table | None]:
    """Metrics of the holdout forecast and its table of deciles (None when skipped)."""
    import numpy as np
    import pyarrow as pa

    from segloop.operators.clv_model import fit_model

    horizon_days = config.horizon_days()
    horizon = horizon_days / DAYS_PER_UNIT[config.time_unit]
    cut = as_of - timedelta(days=round(horizon_days))
    expr = summary_expr(source, config, cut, actual_until=as_of)
    customers = ctx.warehouse.count(expr)
    chunk = op.chunk_rows(ctx.memory_limit)
    skipped = {"holdout": f"skipped: not enough history before {cut.isoformat()}"}
    if customers < 2:
        return skipped, None
    spark = spark_warehouse(ctx.warehouse)
    in_memory = customers <= chunk
    chunks: Any
    if spark is not None:  # collapsed in Spark; the customers are scored there (clv_spark)
        rows = FitRows.from_warehouse(ctx.warehouse, expr, op.fit_rows(ctx.memory_limit), config.seed)
        chunks = []
    elif in_memory:
        summary = by_customer(ctx.warehouse.to_arrow(expr), config)
        rows = FitRows.from_summary(summary)
        chunks = [summary]
    else:
        rows = FitRows.from_warehouse(ctx.warehouse, expr, op.fit_rows(ctx.memory_limit), config.seed)
        chunks = (pa.Table.from_batches([b]) for b in ctx.warehouse.to_batches(expr, batch_rows=chunk))
    if float(np.max(rows.T, initial=0.0)) <= 0:
        return skipped, None
    try:
        model, fit = fit_model(rows, config, horizon, ctx, quiet=True)
    except DataError as exc:
        return {"holdout": f"skipped: {exc}"}, None
    if spark is not None:
        from segloop.operators.clv_spark import holdout_rows

        data, share = spark_card_rows(*holdout_rows(spark, expr, model, config, customers, horizon),
                                      config, with_pit=model.draws is not None)
    else:
        data, share = _card_rows(model, chunks, customers, config, horizon, ctx.memory_limit)
    predicted, actual = data["predicted"], data["actual"]
    score = np.nan_to_num(predicted, nan=-1.0)  # customers without a forecast rank last
    by_actual = deciles(score, actual)
    by_predicted = deciles(score, np.nan_to_num(predicted, nan=0.0))
    metrics: dict[str, Any] = {
        "holdout": f"fit as of {cut.isoformat()}, compared with spend up to {as_of.isoformat()}",
        "holdout_customers": int(customers),
        "holdout_spearman": spearman(predicted, actual),
        "holdout_baseline_spearman": spearman(data["history"], actual),
        "holdout_gini": normalized_gini(score, actual),
        "holdout_decile_error": decile_error(by_predicted["total_outcome"], by_actual["total_outcome"]),
        "holdout_predicted_spend": float(np.nansum(predicted)) / share,
        "holdout_actual_spend": float(actual.sum()) / share,
        "holdout_purchases": int(round(float(data["count"].sum()) / share)),
        "holdout_bgnbd_converged": fit["bgnbd_converged"],
    }
    if share < 1.0:
        metrics["holdout_sample"] = len(actual)
    if len(data["below"]):
        pit = data["below"] + np.random.default_rng(config.seed).random(len(actual)) * data["at"]
        metrics["holdout_interval_coverage"] = float(((pit >= 0.1) & (pit <= 0.9)).mean())
        for level in ("p01", "p50", "p99"):
            metrics[f"holdout_purchases_{level}"] = fit.get(f"purchases_total_{level}")
    return metrics, pa.table(
        {
            "band": by_actual["band"],
            "customers": by_actual["customers"],
            "predicted_spend": by_predicted["total_outcome"],
            "actual_spend": by_actual["total_outcome"],
        }
    )


def _card_rows(model: ClvModel, chunks: Any, customers: int, config: ClvConfig, horizon: float,
               memory_limit: int) -> tuple[dict[str, np.ndarray], float]:
    """The card's columns per customer (in customer id order), scored here chunk by chunk;
    a uniform sample beyond what ``memory_limit`` keeps. Returns them and the sample's share."""
    import numpy as np
    import pyarrow as pa

    from segloop.memory import rows_within

    keep = rows_within(memory_limit, BYTES_PER_CUSTOMER, share=0.25)
    share = min(1.0, keep / customers)
    rng = np.random.default_rng(config.seed)
    parts: dict[str, list[np.ndarray]] = {
        k: [] for k in ("predicted", "actual", "history", "below", "at", "count")}
    ids: list[pa.ChunkedArray] = []
    for table in chunks:
        if share < 1.0:
            table = table.filter(pa.array(rng.random(table.num_rows) < share))
        v = model.point(table)
        ids.append(table[config.customer_id])
        parts["predicted"].append(v["expected_purchases"] * v["expected_spend"])
        parts["actual"].append(floats(table["actual_spend"]))
        parts["history"].append(floats(table["total_spend"]))
        count = table["actual_purchases"].to_numpy(zero_copy_only=False).astype(np.int64)
        parts["count"].append(count)
        if model.draws is not None:
            from segloop.models.btyd_intervals import pit_bounds

            below, at = pit_bounds(model.draws, v["x"], v["t_x"], v["T"], horizon, count)
            parts["below"].append(below)
            parts["at"].append(at)
    # One order whatever the warehouse's or the chunks' (ties in the deciles, the PIT's
    # random draws): by customer id, as the summary pulled whole is.
    import pyarrow.compute as pc

    order = pc.sort_indices(pa.chunked_array([c for i in ids for c in i.chunks],
                                             type=ids[0].type)).to_numpy()
    data = {k: np.concatenate(p)[order] if p else np.zeros(0) for k, p in parts.items()}
    return data, share


def spark_card_rows(table: pa.Table, share: float, config: ClvConfig,
                    with_pit: bool) -> tuple[dict[str, np.ndarray], float]:
    """The card's columns from the rows Spark scored (``clv_spark.holdout_rows``), in
    customer id order as ``_card_rows`` gives them (ties of the deciles, the PIT's draws)."""
    import numpy as np

    table = table.sort_by(config.customer_id)
    data = {k: floats(table[k]) for k in ("predicted", "actual", "history", "below", "at")}
    data["count"] = table["count"].to_numpy(zero_copy_only=False).astype(np.int64)
    if not with_pit:
        data["below"] = data["at"] = np.zeros(0)
    return data, share


def normalized_gini(score: np.ndarray, actual: np.ndarray) -> float:
    """Gini of ``actual`` ordered by ``score`` over the Gini of the best order (1 = best).

    The area between the cumulative share of actual value (customers by descending
    score) and the diagonal, divided by the same for customers ordered by actual value.
    """
    import numpy as np

    def gini(order_by: np.ndarray) -> float:
        order = np.lexsort((np.arange(len(order_by)), -order_by))  # ties: input order
        cum = np.cumsum(actual[order]) / actual.sum()
        return float(cum.sum() / len(cum) - (len(cum) + 1) / (2 * len(cum)))

    if len(actual) < 2 or actual.sum() <= 0:
        return float("nan")
    best = gini(actual)
    return gini(score) / best if best > 0 else float("nan")


def decile_error(predicted: list[float], actual: list[float]) -> float:
    """Summed |predicted - actual| over the deciles, over the summed actual (0 = exact)."""
    import numpy as np

    p, a = np.asarray(predicted, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    return float(np.abs(p - a).sum() / a.sum()) if a.sum() > 0 else float("nan")
