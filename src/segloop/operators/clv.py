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

Memory: when the summary holds more customers than ``memory_limit`` allows at once, the
node scores it in chunks and streams them back to the warehouse; the percentile then
comes from a first pass that keeps only each customer's value (or, beyond the budget, a
sample of them, and says so in the metrics).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator

from segloop.errors import DataError
from segloop.memory import rows_within
from segloop.models.scoring import DAYS_PER_UNIT, parse_duration_days, percentile_rank
from segloop.operators.base import NodeConfig, NodeOutput, Operator, RunContext
from segloop.operators.clv_summary import FitRows, as_of_day, by_customer, summary_expr
from segloop.operators.columns import require_columns
from segloop.operators.gates import ModelNodeConfig, check_requirements

if TYPE_CHECKING:  # pragma: no cover
    import ibis.expr.types as ir
    import numpy as np
    import pyarrow as pa

    from segloop.models.btyd import BetaGeoParams, GammaGammaParams

# Purchase-count quantiles computed per distinct history: the three output ones, and the
# count the value's distribution is summed up to (btyd_intervals.VALUE_TAIL).
LEVELS = (0.1, 0.5, 0.9, 1.0 - 1e-4)
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
    MIN_CUSTOMERS_WARNING: ClassVar[int] = 100
    DISCOUNT_STEPS: ClassVar[int] = 12
    RETRY_PENALIZER: ClassVar[float] = 0.001
    DRAWS: ClassVar[int] = 16  # parameter draws behind each customer's intervals
    TOTAL_DRAWS: ClassVar[int] = 128  # ... and behind the interval of the total
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
        output: pa.Table | pa.RecordBatchReader
        if customers <= chunk:  # all customers fit: one pull, as one table
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


def fit_model(
    rows: FitRows, config: ClvConfig, horizon: float, ctx: RunContext, quiet: bool = False
) -> tuple[ClvModel, dict[str, Any]]:
    """Fit both models on the collapsed rows; the scoring model plus fit metrics."""
    import numpy as np

    from segloop.models.btyd import fit_bgnbd

    warn = (lambda message: None) if quiet else ctx.warn
    n = rows.customers
    if n < ClvOperator.MIN_CUSTOMERS_WARNING:
        warn(f"only {n} customers to fit on; predictions from fewer than 100 are unreliable")
    repeat = int(round(float(rows.w[rows.x > 0].sum())))
    if repeat == 0:
        raise DataError(
            f"node `{ctx.node}`: none of the {n} customers bought again after their first "
            "purchase day, so purchase rates cannot be learned; use a longer history"
        )
    try:
        bg, bg_fit = fit_bgnbd(rows.x, rows.t_x, rows.T, weights=rows.w, penalizer=config.penalizer)
    except Exception as exc:
        if not isinstance(exc, DataError):
            raise
        raise DataError(f"node `{ctx.node}`: {exc}") from exc
    penalizer = config.penalizer
    if not bg_fit.converged and penalizer == 0.0:
        # Small or unusual data can push the MLE towards infinite parameters (a limit
        # model); a light penalty keeps it finite, as lifetimes' docs advise.
        penalizer = ClvOperator.RETRY_PENALIZER
        bg, bg_fit = fit_bgnbd(rows.x, rows.t_x, rows.T, weights=rows.w, penalizer=penalizer)
        warn(
            f"the BG/NBD fit did not converge without a penalty; refitted with "
            f"`penalizer: {penalizer}` (set it yourself to silence this)"
        )
    if not bg_fit.converged:
        warn(f"the BG/NBD fit did not converge ({bg_fit.message}); predictions may be off")
    metrics: dict[str, Any] = {
        "bgnbd_penalizer": penalizer,
        "customers": n,
        "repeat_customers": repeat if rows.sampled == 1.0 else int(round(repeat / rows.sampled)),
        "bgnbd": bg.as_dict(),
        "bgnbd_log_likelihood": bg_fit.log_likelihood,
        "bgnbd_converged": bg_fit.converged,
        "bgnbd_iterations": bg_fit.iterations,
        "bgnbd_unique_rows": bg_fit.n_unique_rows,
    }
    if rows.sampled < 1.0:
        metrics["fit_sample_share"] = round(rows.sampled, 6)
        metrics["fit_customers"] = bg_fit.n_customers
        warn(f"the models were fitted on a sample of {bg_fit.n_customers} of {n} customers "
             "(their distinct histories did not fit in `memory_limit`)")
    gg, mean_value = _spend_model(rows, config, metrics, warn)
    draws = None
    if config.intervals:
        from segloop.models.btyd_intervals import (
            expected_totals,
            laplace_draws,
            mixture_quantiles,
            purchase_distribution,
        )

        (draws, many), held = laplace_draws(
            bg, rows.x, rows.t_x, rows.T, rows.w, (ClvOperator.DRAWS, ClvOperator.TOTAL_DRAWS),
            seed=config.seed, penalizer=penalizer)
        metrics["interval_parameter_draws"] = len(draws) if held else 0
        if not held:
            warn("the parameters' uncertainty could not be estimated (the fit's curvature is "
                 "flat); intervals show the purchase process noise only")
        dist = purchase_distribution(draws, rows.x, rows.t_x, rows.T, horizon, levels=LEVELS)
        # The total over all customers: its spread comes from the parameters (shared by
        # every customer), so it takes more draws (`many`); their expected totals are
        # closed-form. The process noise's variance hardly moves between draws: its mean.
        means = expected_totals(bg, many, rows.x, rows.t_x, rows.T, rows.w, horizon, seed=config.seed)
        variance = float((rows.w @ dist.draw_var).mean())
        total = mixture_quantiles(means, variance, (0.01, 0.1, 0.5, 0.9, 0.99))
        scale = 1.0 / rows.sampled
        for level, value in zip(("p01", "p10", "p50", "p90", "p99"), total, strict=True):
            metrics[f"purchases_total_{level}"] = round(value * scale, 2)
    model = ClvModel(bg=bg, gg=gg, mean_value=mean_value, horizon=horizon, config=config,
                     draws=draws, warn=warn)
    if draws is not None:
        model.known = (rows.x, rows.t_x, rows.T, dist)
    return model, metrics


def _spend_model(
    rows: FitRows, config: ClvConfig, metrics: dict[str, Any], warn: Any
) -> tuple[GammaGammaParams | None, float]:
    """Gamma-Gamma fitted on repeat buyers; without it, the plain mean purchase value."""
    from segloop.models.btyd import fit_gamma_gamma

    mean_value = rows.total_spend / max(1.0, rows.purchase_days)
    try:
        gg, gg_fit = fit_gamma_gamma(rows.gx, rows.gm, weights=rows.gw, penalizer=config.penalizer)
        if not gg_fit.converged and config.penalizer == 0.0:
            gg, gg_fit = fit_gamma_gamma(rows.gx, rows.gm, weights=rows.gw,
                                         penalizer=ClvOperator.RETRY_PENALIZER)
            warn(
                "the Gamma-Gamma fit did not converge without a penalty; refitted with "
                f"`penalizer: {ClvOperator.RETRY_PENALIZER}`"
            )
    except DataError as exc:
        warn(f"spend model not fitted ({exc}); every customer gets the mean purchase value")
        metrics["gamma_gamma"] = None
        return None, mean_value
    metrics.update(
        {
            "gamma_gamma": gg.as_dict(),
            "gamma_gamma_log_likelihood": gg_fit.log_likelihood,
            "gamma_gamma_converged": gg_fit.converged,
            "gamma_gamma_customers": gg_fit.n_customers,
        }
    )
    if not gg_fit.converged:
        warn(f"the Gamma-Gamma fit did not converge ({gg_fit.message}); spend may be off")
    if gg.q <= 1.0:
        warn(
            f"the fitted spend model has q = {gg.q:.3f} <= 1 (very heavy-tailed purchase values); "
            "expected spend falls back towards each customer's own mean"
        )
    return gg, mean_value


@dataclass
class ClvModel:
    """The fitted models, applied to any chunk of the summary."""

    bg: BetaGeoParams
    gg: GammaGammaParams | None
    mean_value: float
    horizon: float
    config: ClvConfig
    draws: np.ndarray | None
    warn: Any
    known: tuple[Any, ...] | None = None  # (x, t_x, T, distribution) of the fit's rows

    def point(self, chunk: pa.Table) -> dict[str, np.ndarray]:
        """p_alive, expected purchases and spend, and predicted CLV of each row."""
        import numpy as np

        from segloop.models.btyd import discounted_value

        x = chunk["frequency"].to_numpy(zero_copy_only=False).astype(np.float64)
        t_x = chunk["recency"].to_numpy(zero_copy_only=False).astype(np.float64)
        T = chunk["tenure"].to_numpy(zero_copy_only=False).astype(np.float64)
        m = chunk["monetary_value"].to_numpy(zero_copy_only=False).astype(np.float64)
        if self.gg is None:
            spend = np.full(len(x), self.mean_value)
        else:
            spend = self.gg.conditional_expected_spend(x, np.clip(m, 0.0, None))
            spend = np.where(np.isfinite(spend) & (spend >= 0), spend, np.clip(m, 0.0, None))
        p_alive = self.bg.probability_alive(x, t_x, T)
        purchases = self.bg.conditional_expected_purchases(self.horizon, x, t_x, T)
        config = self.config
        if config.discount_rate:
            rate = math.log1p(config.discount_rate) / 365.25 * DAYS_PER_UNIT[config.time_unit]
            clv = discounted_value(self.bg, spend, x, t_x, T, self.horizon, rate,
                                   ClvOperator.DISCOUNT_STEPS)
        else:
            clv = purchases * spend
        return {"x": x, "t_x": t_x, "T": T, "m": m, "p_alive": p_alive,
                "expected_purchases": purchases, "expected_spend": spend, "predicted_clv": clv}

    def score(self, chunk: pa.Table, percentile: Any) -> pa.Table:
        """The output rows of ``chunk``; ``percentile`` maps finite CLV values to 0..1."""
        import numpy as np
        import pyarrow as pa

        v = self.point(chunk)
        clv = v["predicted_clv"]
        finite = (np.isfinite(v["p_alive"]) & np.isfinite(v["expected_purchases"])
                  & np.isfinite(v["expected_spend"]) & np.isfinite(clv))
        pct = np.full(len(clv), np.nan)
        pct[finite] = percentile(clv[finite])
        config = self.config
        columns: dict[str, Any] = {
            config.customer_id: chunk[config.customer_id],
            "frequency": chunk["frequency"],
            "recency": pa.array(v["t_x"], pa.float64()),
            "tenure": pa.array(v["T"], pa.float64()),
            "monetary_value": pa.array(v["m"], pa.float64()),
            "p_alive": _column(v["p_alive"]),
            "expected_purchases": _column(v["expected_purchases"]),
            "expected_spend": _column(v["expected_spend"]),
            "predicted_clv": _column(clv),
            "clv_percentile": _column(pct),
        }
        if self.draws is not None:
            for name, values in self.intervals(v).items():
                columns[name] = _column(values)
        return pa.table(columns)

    def intervals(self, v: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """P(no purchase) and percentiles of purchases and value, per distinct history."""
        import numpy as np

        from segloop.models.btyd import unique_rows
        from segloop.models.btyd_intervals import purchase_distribution, value_scale_quantiles

        assert self.draws is not None  # noqa: S101 - only called with intervals on
        (xu, tu, Tu), _, inverse = unique_rows(v["x"], v["t_x"], v["T"])
        if self.known is not None and all(
            len(a) == len(b) and np.array_equal(a, b) for a, b in zip(self.known[:3], (xu, tu, Tu))
        ):
            dist = self.known[3]  # all customers in one chunk: the fit's rows are these
        else:
            dist = purchase_distribution(self.draws, xu, tu, Tu, self.horizon, levels=LEVELS)
        out = {"p_no_purchase": dist.p_zero[inverse]}
        for j, name in enumerate(("purchases_p10", "purchases_p50", "purchases_p90")):
            out[name] = dist.quantiles[inverse, j]
        if self.gg is not None and self.gg.q > 1.0:
            scale = value_scale_quantiles(self.gg, self.draws, xu, tu, Tu, self.horizon,
                                          reach=dist.quantiles[:, 3])
            value = scale[inverse] * (self.gg.gamma + np.clip(v["m"], 0.0, None) * v["x"])[:, None]
        else:
            value = np.full((len(inverse), 3), np.nan)
        fallback = dist.quantiles[inverse, :3] * v["expected_spend"][:, None]
        value = np.where(np.isfinite(value), value, fallback)
        for j, name in enumerate(("value_p10", "value_p50", "value_p90")):
            out[name] = value[:, j]
        return out

    def output_metrics(self, table: pa.Table) -> dict[str, Any]:
        """Totals and a warning about non-finite predictions, from a whole output table."""
        import numpy as np

        clv = np.asarray(table["predicted_clv"].to_numpy(zero_copy_only=False), dtype=np.float64)
        bad = int(table["predicted_clv"].null_count)
        self._warn_non_finite(bad)
        return {"predicted_clv_total": float(np.nansum(clv))}

    def _warn_non_finite(self, bad: int) -> None:
        if bad:
            # Never hand NaN/inf downstream (Segment rejects a whole batch over one NaN).
            self.warn(f"{bad} customers got a non-finite prediction, left null; "
                      "try `penalizer: 0.001`")

    def stream(self, ctx: RunContext, expr: ir.Table, chunk: int,
               keep: int) -> tuple[pa.RecordBatchReader, dict[str, Any]]:
        """Score the summary chunk by chunk, streamed back to the warehouse.

        A first pass computes each customer's CLV only, for the percentiles and the
        totals (the metrics are recorded before the output is written); the second pass,
        pulled by the engine as it writes, scores each chunk in full.
        """
        import numpy as np
        import pyarrow as pa

        rng = np.random.default_rng(self.config.seed)
        values: list[np.ndarray] = []
        held = 0
        total, bad, seen = 0.0, 0, 0
        share = 1.0
        for batch in ctx.warehouse.to_batches(expr, batch_rows=chunk):
            clv = self.point(pa.Table.from_batches([batch]))["predicted_clv"]
            finite = clv[np.isfinite(clv)]
            bad += len(clv) - len(finite)
            total += float(finite.sum())
            seen += len(clv)
            if share < 1.0:
                finite = finite[rng.random(len(finite)) < share]
            values.append(finite)
            held += len(finite)
            while held > keep:  # over the budget: keep every other value (a uniform sample)
                share /= 2.0
                values = [v[rng.random(len(v)) < 0.5] for v in values]
                held = sum(len(v) for v in values)
        self._warn_non_finite(bad)
        ranked = np.sort(np.concatenate(values)) if values else np.zeros(0)
        exact = share == 1.0
        metrics: dict[str, Any] = {"predicted_clv_total": total, "scored_in_chunks": True}
        if not exact:
            metrics["percentile_sample"] = len(ranked)
        denominator = max(len(ranked) - 1.0, 1.0) if exact else max(float(len(ranked)), 1.0)

        def percentile(clv: np.ndarray) -> np.ndarray:
            out: np.ndarray = np.searchsorted(ranked, clv, side="left") / denominator
            return np.clip(out, 0.0, 1.0) if len(ranked) > 1 else np.ones(len(clv))

        schema = self.score(pa.Table.from_batches([], schema=expr.schema().to_pyarrow()),
                            percentile).schema

        def batches() -> Iterator[pa.RecordBatch]:
            for batch in ctx.warehouse.to_batches(expr, batch_rows=chunk):
                scored = self.score(pa.Table.from_batches([batch]), percentile)
                ctx.progress(batch.num_rows, None)
                yield from scored.cast(schema).to_batches()

        return pa.RecordBatchReader.from_batches(schema, batches()), metrics


def _column(values: np.ndarray) -> pa.Array:
    """Floats with NaN/inf as nulls (never handed downstream)."""
    import numpy as np
    import pyarrow as pa

    ok = np.isfinite(values)
    return pa.array(np.where(ok, values, 0.0), pa.float64(), mask=~ok)
