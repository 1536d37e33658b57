"""The clv node's fitted models, applied to any chunk of the customer summary.

``fit_model`` fits BG/NBD and Gamma-Gamma on the collapsed rows of ``clv_summary.FitRows``
(retrying with a light penalty when the plain fit runs off to infinite parameters) and,
with intervals on, draws the parameters' uncertainty (``segloop.models.btyd_intervals``).
``ClvModel`` scores a chunk: the point predictions, the percentile from a function the
caller gives (exact over all customers, or from a first streamed pass), and the
intervals per distinct history. Used by the node (``operators.clv``) and its holdout
check (``operators.clv_holdout``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from segloop.errors import DataError
from segloop.models.scoring import DAYS_PER_UNIT

if TYPE_CHECKING:  # pragma: no cover
    import ibis.expr.types as ir
    import numpy as np
    import pyarrow as pa

    from segloop.models.btyd import BetaGeoParams, GammaGammaParams
    from segloop.operators.base import RunContext
    from segloop.operators.clv import ClvConfig
    from segloop.operators.clv_summary import FitRows

MIN_CUSTOMERS_WARNING = 100
DISCOUNT_STEPS = 12
RETRY_PENALIZER = 0.001
DRAWS = 16  # parameter draws behind each customer's intervals
TOTAL_DRAWS = 128  # ... and behind the interval of the total
# Purchase-count quantiles computed per distinct history: the three output ones, and the
# count the value's distribution is summed up to (btyd_intervals.VALUE_TAIL).
LEVELS = (0.1, 0.5, 0.9, 1.0 - 1e-4)


def fit_model(
    rows: FitRows, config: ClvConfig, horizon: float, ctx: RunContext, quiet: bool = False
) -> tuple[ClvModel, dict[str, Any]]:
    """Fit both models on the collapsed rows; the scoring model plus fit metrics."""

    from segloop.models.btyd import fit_bgnbd

    warn = (lambda message: None) if quiet else ctx.warn
    n = rows.customers
    if n < MIN_CUSTOMERS_WARNING:
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
        penalizer = RETRY_PENALIZER
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
            bg, rows.x, rows.t_x, rows.T, rows.w, (DRAWS, TOTAL_DRAWS),
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
                                         penalizer=RETRY_PENALIZER)
            warn(
                "the Gamma-Gamma fit did not converge without a penalty; refitted with "
                f"`penalizer: {RETRY_PENALIZER}`"
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
                                   DISCOUNT_STEPS)
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
            len(a) == len(b) and np.array_equal(a, b) for a, b in zip(self.known[:3], (xu, tu, Tu), strict=True)
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
