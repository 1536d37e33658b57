"""The level of the propensity node's probabilities when the base rate drifts.

Calibration (segloop.models.calibration) maps the model's score to the rate observed in the
most recent labelled window. That fixes the *shape*; the *level* it gives the scoring
snapshot still follows the scores, and scores follow the features: on CDNOW the holiday
quarter's purchases make every recency feature look good on 1 January, so the calibrated
mean rose to 0.185 while the rate of the next 90 days fell to 0.162 (cohorts age, the holiday
is over). Features cannot tell a gift from a habit; a model of the purchase process can.

So with ``base_rate: clv`` (the default) the node also fits the clv node's BG/NBD model
(segloop.models.btyd) as of the validation snapshot and as of the scoring snapshot, each on
the target-event days before it, and asks each how many of its customers buy at least once
in the window that follows (``1 - P(no purchase)``, Fader, Hardie & Lee's closed form). The
ratio of the two is the drift BG/NBD expects (aging, dropout, the recent purchases it has
seen); the expected rate of the scoring window is the validation window's actual rate times
that ratio. The calibrated probabilities are then moved by one constant on the logit scale
until their mean is that rate: order, percentiles and AUC do not change, and a customer's
odds relative to the others stay as calibration made them.

``base_rate: validation`` uses the validation window's rate itself (no drift); ``model``
keeps the calibrated probabilities as they are (the behaviour before this module).

The BG/NBD inputs are per-customer ``(x, t_x, T)`` summaries of distinct target-event days,
collapsed to distinct rows with counts in the warehouse: small at any size. The shift is
solved by Newton's method with one aggregate query over the node's scoring table per step,
and applied in the output query, so no step holds every customer and Spark's executors
need nothing new.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from segloop.operators.propensity_features import DAY_SECONDS

if TYPE_CHECKING:  # pragma: no cover
    import ibis.expr.types as ir

    from segloop.operators.base import RunContext
    from segloop.operators.propensity_features import FeatureBuilder

MIN_BUYERS = 100  # fewer customers with a target event: no BG/NBD, the validation rate stands
MIN_REPEAT_BUYERS = 20
_EPS = 1e-6
_NEWTON_STEPS = 30


@dataclass(frozen=True)
class ExpectedRate:
    """What BG/NBD expects of one snapshot's buyers: the share buying again in the window."""

    rate: float
    buyers: int
    converged: bool
    rows: int  # distinct (x, t_x, T) rows fetched to fit it


def expected_buying_rate(
    ctx: RunContext, builder: FeatureBuilder, at: datetime, window: timedelta, max_rows: int
) -> ExpectedRate | None:
    """BG/NBD fitted on the target-event days before ``at``: mean P(at least one in the window).

    At most ``max_rows`` rows come to Python: beyond that many buyers, every k-th buyer in
    id order (the same on every run and engine) is summarised. None when there are too few
    buyers (or repeat buyers) to fit it.
    """
    import numpy as np

    from segloop.models.btyd import fit_bgnbd

    per = _per_buyer(builder, at)
    total = int(ctx.warehouse.scalar(per.count()) or 0)
    if total < MIN_BUYERS:
        return None
    step = -(-total // max(max_rows, 1))  # ceil
    if step > 1:
        i = _row_number(per)
        per = per.mutate(_i=i).filter((i % step) == 0).drop("_i")
    rows = ctx.warehouse.to_arrow(_collapse(per))
    if not rows.num_rows:
        return None
    x, t_x, T, n = (rows[c].to_numpy(zero_copy_only=False).astype(np.float64)
                    for c in ("x", "t_x", "T", "n"))
    buyers = int(n.sum())
    if buyers < MIN_BUYERS or float(n[x > 0].sum()) < MIN_REPEAT_BUYERS:
        return None
    try:
        params, fit = fit_bgnbd(x, t_x, T, weights=n)
    except (ValueError, FloatingPointError, ArithmeticError):
        return None
    t = window.total_seconds() / DAY_SECONDS
    alive = params.probability_alive(x, t_x, T)
    stay = ((params.alpha + T) / (params.alpha + T + t)) ** (params.r + x)
    buy = alive * (1.0 - stay)  # 1 - P(no purchase): alive and at least one purchase
    rate = float(np.dot(n, buy) / buyers)
    if not math.isfinite(rate) or rate <= 0.0:
        return None
    return ExpectedRate(rate=rate, buyers=total, converged=fit.converged, rows=rows.num_rows)


def _row_number(table: ir.Table) -> ir.IntegerValue:
    import ibis

    return ibis.row_number().over(order_by=table._cid)


def _per_buyer(builder: FeatureBuilder, at: datetime) -> ir.Table:
    """``(_cid, x, t_x, T)`` of the customers with a target event before ``at``, in days
    (distinct calendar days, as the clv node counts them)."""
    import ibis

    e = builder.events
    cut = ibis.literal(at).cast("timestamp")
    hits = e.filter(builder.is_event(e, builder.target) & (e._ts < cut))
    days = hits.select(_cid=hits._cid, _day=hits._ts.truncate("D")).distinct()
    per = days.group_by("_cid").aggregate(
        _n=days.count(), _first=days._day.min(), _last=days._day.max()
    )
    at_s = cut.epoch_seconds()
    first_s = per._first.epoch_seconds()
    return per.select(
        _cid=per._cid,
        x=(per._n - 1).cast("float64"),
        t_x=((per._last.epoch_seconds() - first_s) / DAY_SECONDS).cast("float64"),
        T=((at_s - first_s) / DAY_SECONDS).cast("float64"),
    )


def _collapse(per: ir.Table) -> ir.Table:
    """Distinct ``(x, t_x, T)`` with how many customers share each, in a fixed order: the
    fit's sums (and so its last digits, the drift's and every probability's) follow the order
    the rows arrive in, which a warehouse's grouping leaves to its threads."""
    return per.group_by(["x", "t_x", "T"]).aggregate(n=per.count()).order_by(["x", "t_x", "T"])


def logit_shift(ctx: RunContext, scores: ir.Table, target: float) -> float:
    """The constant that, added to every probability's logit, makes their mean ``target``.

    Newton's method on ``mean(sigmoid(logit(p) + d)) = target`` (increasing in ``d``), one
    aggregate query over the scoring table per step.
    """
    if not 0.0 < target < 1.0:
        raise ValueError(f"a target rate must lie strictly between 0 and 1, not {target}")
    logit = _logit(scores.probability)
    d = 0.0
    for _ in range(_NEWTON_STEPS):
        s = _sigmoid(logit + d)
        # Exact decimal sums: a sum of doubles depends on the order the warehouse adds them in
        # (threads, chunks, partitions), and so would the shift, in its last digits.
        row = ctx.warehouse.rows(scores.aggregate(
            m=_exact(s).sum(), v=_exact(s * (1.0 - s)).sum(), n=scores.count()))[0]
        n = int(row["n"] or 0)
        if n == 0:
            break
        mean, slope = float(row["m"]) / n, float(row["v"]) / n
        gap = mean - target
        if abs(gap) < 1e-9 or slope <= 0.0:
            break
        d -= max(min(gap / slope, 2.0), -2.0)  # bounded steps: the function is flat far out
    return d


def shifted(probability: ir.FloatingValue, d: float) -> ir.FloatingValue:
    """``probability`` moved by ``d`` on the logit scale (a SQL expression)."""
    if d == 0.0:
        return probability
    return _sigmoid(_logit(probability) + d)


def _exact(value: ir.FloatingValue) -> ir.NumericValue:
    """``value`` (between 0 and 1) as a decimal with 18 places, so that sums are exact."""
    import ibis.expr.datatypes as dt

    return value.cast(dt.Decimal(38, 18))


def _logit(p: ir.FloatingValue) -> ir.FloatingValue:
    import ibis

    q = ibis.greatest(ibis.least(p.cast("float64"), 1.0 - _EPS), _EPS)
    return (q / (1.0 - q)).ln()


def _sigmoid(z: ir.FloatingValue) -> ir.FloatingValue:
    return 1.0 / (1.0 + (-z).exp())
