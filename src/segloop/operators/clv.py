"""Node `clv`: predicted customer lifetime value from transactions (BG/NBD + Gamma-Gamma).

The per-customer summary is computed inside the warehouse (``clv_summary.summary_expr``);
the models are fitted on its distinct rows, collapsed in the warehouse too, and applied
(``segloop.models.btyd``). Definitions, as in Fader, Hardie & Lee and in ``lifetimes``:

- purchases are counted on distinct calendar days (UTC): several orders on one day are
  one purchase whose value is their sum;
- ``frequency`` (x): purchase days after the first one, up to and including ``as_of``;
- ``recency`` (t_x): time from the first to the last purchase day; ``tenure`` (T): time
  from the first purchase day to ``as_of`` (the papers' ``T``), both in ``time_unit``;
- ``monetary_value``: mean value of the repeat purchase days (0 without repeats).

Output per customer: those columns plus ``p_alive``, ``expected_purchases`` (over
``horizon``), ``expected_spend`` (value of an average future purchase), ``predicted_clv``
(their product, discounted if ``discount_rate`` is set), ``clv_percentile`` (0..1, 0.85 =
top 15%) and, with ``intervals`` on, ``p_no_purchase`` and the 10th/50th/90th percentiles
of the purchases and of the (undiscounted) value over the horizon
(``segloop.models.btyd_intervals``). With ``validate`` on, the node also refits as of
``as_of - horizon`` and scores that forecast against what followed (``clv_holdout``).

On Spark the executors score the customers and Spark writes them (``clv_spark``).

Memory: when the summary holds more customers than ``memory_limit`` allows at once, the
node scores it in chunks and streams them back to the warehouse; the percentile then
comes from a first pass that keeps only each customer's value (or, beyond the budget, a
sample of them, and says so in the metrics).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator

from segloop.errors import DataError
from segloop.memory import rows_within
from segloop.models.scoring import DAYS_PER_UNIT, parse_duration_days, percentile_rank
from segloop.operators.base import NodeConfig, NodeOutput, Operator, RunContext
from segloop.operators.clv_model import fit_model
from segloop.operators.clv_summary import FitRows, as_of_day, by_customer, summary_expr
from segloop.operators.columns import require_columns
from segloop.operators.gates import ModelNodeConfig, check_requirements
from segloop.warehouses.pyspark import spark_warehouse

if TYPE_CHECKING:  # pragma: no cover
    import ibis.expr.types as ir
    import pyarrow as pa


INTERVAL_COLUMNS = ("p_no_purchase", "purchases_p10", "purchases_p50", "purchases_p90",
                    "value_p10", "value_p50", "value_p90")


class ClvConfig(ModelNodeConfig):
    GATE_METRICS: ClassVar[frozenset[str]] = frozenset(
        {"holdout_spearman", "holdout_baseline_spearman", "holdout_gini", "holdout_decile_error",
         "holdout_interval_coverage", "customers", "repeat_customers", "bgnbd_log_likelihood"}
    )

    type: Literal["clv"] = "clv"
    customer_id: str = Field(default="user_id", description="Column identifying the customer.")
    timestamp: str = Field(default="timestamp", description="Column with the purchase time.")
    amount: str = Field(default="revenue", description="Column with the purchase amount.")
    as_of: date | datetime | None = Field(
        default=None,
        description="Last day of the calibration period (purchases on it count); "
        "default: the day of the latest timestamp.",
    )
    time_unit: Literal["days", "weeks"] = Field(
        default="days", description="Unit of recency, tenure and the fitted alpha."
    )
    horizon: str | float = Field(
        default="120 days",
        description="How far ahead to predict: `120 days`, `17 weeks`, `6 months`, `1 year`, "
        "or a number in `time_unit`.",
    )
    discount_rate: float | None = Field(
        default=None,
        ge=0.0,
        le=10.0,
        description="Annual discount rate for predicted_clv (0.1 = 10% a year); none by default.",
    )
    penalizer: float = Field(
        default=0.0, ge=0.0, description="L2 penalty on the model parameters (as lifetimes)."
    )
    intervals: bool = Field(
        default=True,
        description="Also output p_no_purchase and the 10th/50th/90th percentiles of purchases "
        "and value, with the parameters' uncertainty.",
    )
    seed: int = Field(default=0, description="Seed of the parameter draws and of any sample.")
    validate_: bool = Field(
        default=True,
        alias="validate",
        description="Also fit as of `as_of - horizon` and score that forecast against the "
        "spend that followed (metrics holdout_*).",
    )

    @field_validator("horizon")
    @classmethod
    def _horizon_readable(cls, value: str | float) -> str | float:
        parse_duration_days(value)  # raises ValueError with the accepted forms
        return value

    def horizon_days(self) -> float:
        return parse_duration_days(self.horizon, self.time_unit)


class ClvOperator(Operator[ClvConfig]):
    """Fits BG/NBD and Gamma-Gamma on the input's purchases and scores every customer."""

    type_name: ClassVar[str] = "clv"
    config_model: ClassVar[type[NodeConfig]] = ClvConfig
    REPORT_SECTION = "clv"
    OUTPUT_IN_PYTHON: ClassVar[bool] = True
    # Python bytes per customer while scoring a chunk: the summary, the output columns and
    # the interval work arrays (rows x draws for each distinct history).
    BYTES_PER_ROW: ClassVar[int] = 2_000
    BYTES_PER_FIT_ROW: ClassVar[int] = 400  # per distinct (x, t_x, T) or (x, m) row
    BYTES_PER_VALUE: ClassVar[int] = 8  # per customer kept for the percentile

    def run(self, inputs: dict[str, ir.Table], ctx: RunContext) -> NodeOutput:
        config = self.config
        source_name, source = next(iter(inputs.items()))
        keys = {"customer_id": config.customer_id, "timestamp": config.timestamp}
        require_columns(source, {**keys, "amount": config.amount}, ctx.node, source_name)
        unit_days = DAYS_PER_UNIT[config.time_unit]
        horizon = config.horizon_days() / unit_days
        as_of = as_of_day(source, config, ctx)
        metrics: dict[str, Any] = {
            "as_of": as_of.isoformat(),
            "time_unit": config.time_unit,
            "horizon": horizon,
            "horizon_days": config.horizon_days(),
        }

        ignored = ctx.warehouse.count(
            source.filter(source[config.customer_id].isnull() | source[config.timestamp].isnull())
        )
        metrics["ignored_rows"] = ignored
        if ignored:
            ctx.warn(
                f"{ignored} rows of `{source_name}` have no `{config.customer_id}` or "
                f"`{config.timestamp}` and were left out"
            )
        expr = summary_expr(source, config, as_of)
        customers = ctx.warehouse.count(expr)
        if customers == 0:
            raise DataError(
                f"node `{ctx.node}`: no purchases on or before {as_of} in `{source_name}`; "
                "check `as_of` and the input"
            )
        chunk = self.chunk_rows(ctx.memory_limit)
        metrics["chunk_rows"] = chunk
        output: ir.Table | pa.Table | pa.RecordBatchReader
        spark = spark_warehouse(ctx.warehouse)
        if spark is not None:  # fitted here on collapsed rows; scored and written by Spark
            from segloop.operators.clv_spark import score_in_spark

            fit_rows = FitRows.from_warehouse(ctx.warehouse, expr, self.fit_rows(ctx.memory_limit), config.seed)
            model, fit_metrics = fit_model(fit_rows, config, horizon, ctx)
            metrics.update(fit_metrics)
            output, spark_metrics = score_in_spark(ctx, spark, expr, model, config)
            metrics.update(spark_metrics)
            rows = customers
        elif customers <= chunk:  # all customers fit: one pull, as one table
            summary = by_customer(ctx.warehouse.to_arrow(expr), config)
            ctx.progress(summary.num_rows, None)
            model, fit_metrics = fit_model(FitRows.from_summary(summary), config, horizon, ctx)
            metrics.update(fit_metrics)
            output = model.score(summary, percentile_rank)
            metrics.update(model.output_metrics(output))
            rows = output.num_rows
        else:
            fit_rows = FitRows.from_warehouse(ctx.warehouse, expr, self.fit_rows(ctx.memory_limit),
                                              config.seed)
            model, fit_metrics = fit_model(fit_rows, config, horizon, ctx)
            metrics.update(fit_metrics)
            output, stream_metrics = model.stream(ctx, expr, chunk, self.values_kept(ctx.memory_limit))
            metrics.update(stream_metrics)
            rows = customers
        extra: dict[str, Any] = {}
        if config.validate_:
            from segloop.operators.clv_holdout import validate

            holdout_metrics, holdout = validate(self, source, config, as_of, ctx)
            metrics.update(holdout_metrics)
            if holdout is not None:
                extra["holdout"] = holdout
        return check_requirements(
            NodeOutput(table=output, extra=extra, metrics=metrics, rows=rows), config
        )

    @classmethod
    def chunk_rows(cls, limit: int) -> int:
        """Customers scored at once within the budget (half of it; the rest for the fit)."""
        return rows_within(limit, cls.BYTES_PER_ROW, share=0.5)

    @classmethod
    def fit_rows(cls, limit: int) -> int:
        return rows_within(limit, cls.BYTES_PER_FIT_ROW, share=0.25)

    @classmethod
    def values_kept(cls, limit: int) -> int:
        return rows_within(limit, cls.BYTES_PER_VALUE, share=0.25)
