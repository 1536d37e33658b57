"""Node `clv`: predicted customer lifetime value from transactions (BG/NBD + Gamma-Gamma).

The per-customer summary is computed inside the warehouse (one Ibis query); only one
row per customer comes to Python, where the models are fitted and applied
(``segloop.models.btyd``). Definitions, as in Fader, Hardie & Lee and in ``lifetimes``:

- purchases are counted on distinct calendar days (UTC): several orders on one day are
  one purchase whose value is their sum;
- ``frequency`` (x): purchase days after the first one, up to and including ``as_of``;
- ``recency`` (t_x): time from the first to the last purchase day; ``tenure`` (T): time
  from the first purchase day to ``as_of`` (the papers' ``T``), both in ``time_unit``;
- ``monetary_value``: mean value of the repeat purchase days (0 without repeats).

Output per customer: those columns plus ``p_alive``, ``expected_purchases`` (over
``horizon``), ``expected_spend`` (value of an average future purchase), ``predicted_clv``
(their product, discounted if ``discount_rate`` is set) and ``clv_percentile`` (0..1,
0.85 = top 15%). With ``validate`` on, the node also refits as of ``as_of - horizon``
and reports how well that forecast ranked the spend that actually followed.
"""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator

from segloop.errors import DataError
from segloop.models.scoring import (
    DAYS_PER_UNIT,
    deciles,
    parse_duration_days,
    percentile_rank,
    spearman,
)
from segloop.operators.base import NodeConfig, NodeOutput, Operator, RunContext
from segloop.operators.columns import MONEY_TYPE, money, require_columns
from segloop.operators.gates import ModelNodeConfig, check_requirements

if TYPE_CHECKING:  # pragma: no cover
    import ibis.expr.types as ir
    import numpy as np
    import pyarrow as pa

SECONDS_PER_DAY = 86400


class ClvConfig(ModelNodeConfig):
    GATE_METRICS: ClassVar[frozenset[str]] = frozenset(
        {"holdout_spearman", "holdout_baseline_spearman", "customers", "repeat_customers",
         "bgnbd_log_likelihood"}
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

    def run(self, inputs: dict[str, ir.Table], ctx: RunContext) -> NodeOutput:
        config = self.config
        source_name, source = next(iter(inputs.items()))
        keys = {"customer_id": config.customer_id, "timestamp": config.timestamp}
        require_columns(source, {**keys, "amount": config.amount}, ctx.node, source_name)
        unit_days = DAYS_PER_UNIT[config.time_unit]
        horizon = config.horizon_days() / unit_days
        as_of = _as_of_day(source, config, ctx)
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
        summary = by_customer(ctx.warehouse.to_arrow(summary_expr(source, config, as_of)), config)
        ctx.progress(summary.num_rows, None)
        if summary.num_rows == 0:
            raise DataError(
                f"node `{ctx.node}`: no purchases on or before {as_of} in `{source_name}`; "
                "check `as_of` and the input"
            )
        scored, fit_metrics = score_customers(summary, config, horizon, ctx)
        metrics.update(fit_metrics)
        extra: dict[str, Any] = {}
        if config.validate_:
            holdout_metrics, holdout = self._validate(source, config, as_of, ctx)
            metrics.update(holdout_metrics)
            if holdout is not None:
                extra["holdout"] = holdout
        return check_requirements(
            NodeOutput(table=scored, extra=extra, metrics=metrics, rows=scored.num_rows), config
        )

    def _validate(
        self, source: ir.Table, config: ClvConfig, as_of: date, ctx: RunContext
    ) -> tuple[dict[str, Any], pa.Table | None]:
        """Refit as of ``as_of - horizon``; compare the forecast with the spend that followed.

        Returns metrics and a table of predicted vs actual spend by tenth of the forecast.
        """
        import numpy as np
        import pyarrow as pa

        horizon_days = config.horizon_days()
        cut = as_of - timedelta(days=round(horizon_days))
        expr = summary_expr(source, config, cut, actual_until=as_of)
        summary = by_customer(ctx.warehouse.to_arrow(expr), config)
        if summary.num_rows < 2 or float(np.max(summary["tenure"].to_numpy())) <= 0:
            return {"holdout": f"skipped: not enough history before {cut.isoformat()}"}, None
        try:
            scored, fit = score_customers(
                summary, config, horizon_days / DAYS_PER_UNIT[config.time_unit], ctx, quiet=True
            )
        except DataError as exc:
            return {"holdout": f"skipped: {exc}"}, None
        predicted = _floats(scored["expected_purchases"]) * _floats(scored["expected_spend"])
        actual = summary["actual_spend"].to_numpy(zero_copy_only=False)
        history = summary["total_spend"].to_numpy(zero_copy_only=False)
        metrics = {
            "holdout": f"fit as of {cut.isoformat()}, compared with spend up to {as_of.isoformat()}",
            "holdout_customers": int(summary.num_rows),
            "holdout_spearman": spearman(predicted, actual),
            "holdout_baseline_spearman": spearman(history, actual),
            "holdout_predicted_spend": float(np.nansum(predicted)),
            "holdout_actual_spend": float(actual.sum()),
            "holdout_bgnbd_converged": fit["bgnbd_converged"],
        }
        score = np.nan_to_num(predicted, nan=-1.0)  # customers without a forecast rank last
        by_actual = deciles(score, actual)
        by_predicted = deciles(score, np.nan_to_num(predicted, nan=0.0))
        return metrics, pa.table(
            {
                "band": by_actual["band"],
                "customers": by_actual["customers"],
                "predicted_spend": by_predicted["total_outcome"],
                "actual_spend": by_actual["total_outcome"],
            }
        )


def _as_of_day(source: ir.Table, config: ClvConfig, ctx: RunContext) -> date:
    """The calibration end as a calendar day: configured, or the day of the latest timestamp."""
    if config.as_of is not None:
        return config.as_of.date() if isinstance(config.as_of, datetime) else config.as_of
    latest = ctx.warehouse.scalar(source[config.timestamp].cast("timestamp").max())
    if latest is None:
        raise DataError(
            f"node `{ctx.node}`: column `{config.timestamp}` has no timestamps; "
            "the input is empty or the column is all null"
        )
    return latest.date() if isinstance(latest, datetime) else date.fromisoformat(str(latest)[:10])


def by_customer(summary: pa.Table, config: ClvConfig) -> pa.Table:
    """The summary sorted by customer id, in Python: the model fits add rows up in this
    order, so one order (byte order, not the warehouse's collation) gives the same
    parameters, to the last bit, on every warehouse."""
    return summary.sort_by(config.customer_id)


def summary_expr(
    source: ir.Table, config: ClvConfig, as_of: date, actual_until: date | None = None
) -> ir.Table:
    """One row per customer: x, t_x, T, mean repeat value (and spend after ``as_of``).

    Runs in the warehouse. Columns: ``<customer_id>, frequency, recency, tenure,
    monetary_value, total_spend`` and, with ``actual_until``, ``actual_spend`` (sum of
    amounts on days in ``(as_of, actual_until]``) for customers known by ``as_of``.
    """
    import ibis

    cid = config.customer_id
    unit_seconds = SECONDS_PER_DAY * DAYS_PER_UNIT[config.time_unit]
    rows = source.select(
        _cid=source[cid],
        _day=source[config.timestamp].cast("timestamp").truncate("D"),
        _amount=money(source[config.amount]),
    )
    rows = rows.filter(rows._cid.notnull() & rows._day.notnull())
    end = ibis.literal(datetime.combine(as_of, datetime.min.time())).cast("timestamp")

    days = (
        rows.filter(rows._day <= end)
        .group_by(["_cid", "_day"])
        .aggregate(_value=rows._amount.sum())
    )
    days = days.mutate(_first=days._day.min().over(group_by=days._cid))
    per_customer = days.group_by("_cid").aggregate(
        _first_day=days._day.min(),
        _last_day=days._day.max(),
        _n_days=days.count(),
        _repeat_value=ibis.ifelse(days._day == days._first, ibis.literal(0, type=MONEY_TYPE), days._value).sum(),
        total_spend=days._value.sum().cast("float64"),
    )
    first_s = per_customer._first_day.epoch_seconds()
    x = per_customer._n_days - 1
    summary = per_customer.mutate(
        frequency=x.cast("int64"),
        recency=((per_customer._last_day.epoch_seconds() - first_s) / unit_seconds).cast("float64"),
        tenure=((end.epoch_seconds() - first_s) / unit_seconds).cast("float64"),
        monetary_value=ibis.ifelse(
            x > 0, per_customer._repeat_value.cast("float64") / x, 0.0
        ).cast("float64"),
    )
    columns = ["_cid", "frequency", "recency", "tenure", "monetary_value", "total_spend"]
    summary = summary.select(*columns)
    if actual_until is not None:
        stop = ibis.literal(datetime.combine(actual_until, datetime.min.time())).cast("timestamp")
        after = rows.filter((rows._day > end) & (rows._day <= stop))
        actual = after.group_by(after._cid.name("_acid")).aggregate(
            actual_spend=after._amount.sum().cast("float64")
        )
        joined = summary.left_join(actual, summary._cid == actual._acid)
        summary = joined.select(*columns, actual_spend=joined.actual_spend.fill_null(0.0))
    return summary.rename({cid: "_cid"})


def score_customers(
    summary: pa.Table,
    config: ClvConfig,
    horizon: float,
    ctx: RunContext,
    quiet: bool = False,
) -> tuple[pa.Table, dict[str, Any]]:
    """Fit both models on the summary and return the scored customers plus fit metrics."""
    import numpy as np
    import pyarrow as pa

    from segloop.models.btyd import discounted_value, fit_bgnbd

    x = summary["frequency"].to_numpy(zero_copy_only=False).astype(np.float64)
    t_x = summary["recency"].to_numpy(zero_copy_only=False)
    T = summary["tenure"].to_numpy(zero_copy_only=False)
    m = summary["monetary_value"].to_numpy(zero_copy_only=False)
    warn = (lambda message: None) if quiet else ctx.warn
    n = len(x)
    if n < ClvOperator.MIN_CUSTOMERS_WARNING:
        warn(f"only {n} customers to fit on; predictions from fewer than 100 are unreliable")

    if not (x > 0).any():
        raise DataError(
            f"node `{ctx.node}`: none of the {n} customers bought again after their first "
            "purchase day, so purchase rates cannot be learned; use a longer history"
        )
    try:
        bg, bg_fit = fit_bgnbd(x, t_x, T, penalizer=config.penalizer)
    except DataError as exc:
        raise DataError(f"node `{ctx.node}`: {exc}") from exc
    penalizer = config.penalizer
    if not bg_fit.converged and penalizer == 0.0:
        # Small or unusual data can push the MLE towards infinite parameters (a limit
        # model); a light penalty keeps it finite, as lifetimes' docs advise.
        penalizer = ClvOperator.RETRY_PENALIZER
        bg, bg_fit = fit_bgnbd(x, t_x, T, penalizer=penalizer)
        warn(
            f"the BG/NBD fit did not converge without a penalty; refitted with "
            f"`penalizer: {penalizer}` (set it yourself to silence this)"
        )
    if not bg_fit.converged:
        warn(f"the BG/NBD fit did not converge ({bg_fit.message}); predictions may be off")
    metrics: dict[str, Any] = {
        "bgnbd_penalizer": penalizer,
        "customers": n,
        "repeat_customers": int((x > 0).sum()),
        "bgnbd": bg.as_dict(),
        "bgnbd_log_likelihood": bg_fit.log_likelihood,
        "bgnbd_converged": bg_fit.converged,
        "bgnbd_iterations": bg_fit.iterations,
        "bgnbd_unique_rows": bg_fit.n_unique_rows,
    }
    spend = _expected_spend(x, m, summary, config, metrics, warn)

    p_alive = bg.probability_alive(x, t_x, T)
    purchases = bg.conditional_expected_purchases(horizon, x, t_x, T)
    if config.discount_rate:
        rate = math.log1p(config.discount_rate) / 365.25 * DAYS_PER_UNIT[config.time_unit]
        clv = discounted_value(bg, spend, x, t_x, T, horizon, rate, ClvOperator.DISCOUNT_STEPS)
    else:
        clv = purchases * spend
    finite = np.isfinite(p_alive) & np.isfinite(purchases) & np.isfinite(spend) & np.isfinite(clv)
    if not finite.all():
        # Never hand NaN/inf downstream (Segment rejects a whole batch over one NaN).
        warn(
            f"{int((~finite).sum())} customers got a non-finite prediction, left null; "
            "try `penalizer: 0.001`"
        )
    metrics["predicted_clv_total"] = float(clv[finite].sum())

    def column(values: np.ndarray) -> pa.Array:
        ok = np.isfinite(values)
        return pa.array(np.where(ok, values, 0.0), pa.float64(), mask=~ok)

    pct = np.full(n, np.nan)
    pct[finite] = percentile_rank(clv[finite])
    scored = pa.table(
        {
            config.customer_id: summary[config.customer_id],
            "frequency": summary["frequency"],
            "recency": pa.array(t_x, pa.float64()),
            "tenure": pa.array(T, pa.float64()),
            "monetary_value": pa.array(m, pa.float64()),
            "p_alive": column(p_alive),
            "expected_purchases": column(purchases),
            "expected_spend": column(spend),
            "predicted_clv": column(clv),
            "clv_percentile": column(pct),
        }
    )
    return scored, metrics


def _floats(column: Any) -> np.ndarray:
    """A float column as numpy, nulls as NaN."""
    import numpy as np

    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)


def _expected_spend(
    x: np.ndarray,
    m: np.ndarray,
    summary: pa.Table,
    config: ClvConfig,
    metrics: dict[str, Any],
    warn: Any,
) -> np.ndarray:
    """Gamma-Gamma expected value of a future purchase; the plain mean when it cannot fit."""
    import numpy as np

    from segloop.models.btyd import fit_gamma_gamma

    try:
        gg, gg_fit = fit_gamma_gamma(x, m, penalizer=config.penalizer)
        if not gg_fit.converged and config.penalizer == 0.0:
            gg, gg_fit = fit_gamma_gamma(x, m, penalizer=ClvOperator.RETRY_PENALIZER)
            warn(
                "the Gamma-Gamma fit did not converge without a penalty; refitted with "
                f"`penalizer: {ClvOperator.RETRY_PENALIZER}`"
            )
    except DataError as exc:
        warn(f"spend model not fitted ({exc}); every customer gets the mean purchase value")
        total = summary["total_spend"].to_numpy(zero_copy_only=False)
        mean_value = float(total.sum() / max(1.0, float((x + 1).sum())))
        metrics["gamma_gamma"] = None
        return np.full(len(x), mean_value)
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
    spend = gg.conditional_expected_spend(x, np.clip(m, 0.0, None))
    return np.where(np.isfinite(spend) & (spend >= 0), spend, np.clip(m, 0.0, None))
