"""BG/NBD and Gamma-Gamma customer-base models, fitted by maximum likelihood.

"Buy 'til you die" models predict a customer's future purchases from three numbers:
``x`` (repeat purchases), ``t_x`` (time of the last purchase, measured from the first)
and ``T`` (time from the first purchase to the end of the calibration period), and their
future spend from ``x`` and the mean value ``m`` of the repeat purchases.

- BG/NBD: Fader, Hardie & Lee (2005), "Counting Your Customers the Easy Way",
  Marketing Science 24(2); likelihood from section 7 and http://brucehardie.com/notes/004/,
  P(alive) from http://brucehardie.com/notes/021/.
- Gamma-Gamma: Fader & Hardie (2013), "The Gamma-Gamma Model of Monetary Value",
  http://brucehardie.com/notes/025/.

Why a module of its own rather than the ``lifetimes`` package: lifetimes is unmaintained,
needs pandas and fits on one row per customer with numerical gradients. Here every
likelihood is written in log space (``gammaln``, ``logaddexp``) with its analytic
gradient, parameters are optimised on the log scale (so they stay positive), and the fit
runs on the *unique* ``(x, t_x, T)`` rows weighted by their counts, so a million
customers with day-level data fit in about a second.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from segloop.errors import DataError

FloatArray = NDArray[np.float64]
GRADIENT_TOLERANCE = 1e-5  # on the mean log-likelihood per customer, w.r.t. log-parameters

__all__ = [
    "BetaGeoParams",
    "FitResult",
    "GammaGammaParams",
    "discounted_value",
    "fit_bgnbd",
    "fit_gamma_gamma",
    "unique_rows",
]


@dataclass(frozen=True)
class FitResult:
    """Diagnostics of one maximum-likelihood fit (recorded in the run's metrics)."""

    log_likelihood: float
    converged: bool
    iterations: int
    message: str
    n_customers: int
    n_unique_rows: int
    gradient_norm: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------------
# BG/NBD
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BetaGeoParams:
    """BG/NBD parameters: purchase rates ~ Gamma(r, alpha), dropout p ~ Beta(a, b).

    ``alpha`` is in the time unit of the data it was fitted on (weeks for CDNOW).
    """

    r: float
    alpha: float
    a: float
    b: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def log_likelihood(self, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> FloatArray:
        """Per-customer log-likelihood of the observed ``(x, t_x, T)``."""
        return _bgnbd_ll(np.array([self.r, self.alpha, self.a, self.b]), _f(x), _f(t_x), _f(T))

    def probability_alive(self, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> FloatArray:
        """P(customer still active at ``T``), Fader, Hardie & Lee note 021."""
        xa, ta, Ta = _f(x), _f(t_x), _f(T)
        return 1.0 / (1.0 + self._dropout_odds(xa, ta, Ta))

    def conditional_expected_purchases(
        self, t: ArrayLike, x: ArrayLike, t_x: ArrayLike, T: ArrayLike
    ) -> FloatArray:
        """E[purchases in (T, T + t] | x, t_x, T], equation (10) of the 2005 paper.

        The ``((alpha+T)/(alpha+T+t))^(r+x) * 2F1(r+x, b+x; a+b+x-1; z)`` term overflows for
        heavy buyers (large x); Euler's transformation gives the same value as
        ``(1-z)^(a-1) * 2F1(a+b-1-r, a-1; a+b+x-1; z)``, which stays finite there but not when
        the fit drifts to very large a and b (no sign of dropout by purchase). Each row uses
        the form that is finite.
        """
        from scipy.special import hyp2f1

        ta, xa, txa, Ta = np.broadcast_arrays(_f(t), _f(x), _f(t_x), _f(T))
        r, alpha, a, b = self.r, self.alpha, self._a_safe(), self.b
        one_minus_z = (alpha + Ta) / (alpha + Ta + ta)
        z = ta / (alpha + Ta + ta)
        log_1mz = np.log(one_minus_z)
        with np.errstate(all="ignore"):
            term = np.exp((a - 1.0) * log_1mz) * hyp2f1(
                a + b - 1.0 - r, a - 1.0, a + b + xa - 1.0, z
            )
            bad = ~np.isfinite(term)
            if bad.any():
                original = np.exp((r + xa[bad]) * log_1mz[bad]) * hyp2f1(
                    r + xa[bad], b + xa[bad], a + b + xa[bad] - 1.0, z[bad]
                )
                term[bad] = original
        bracket = 1.0 - term
        numerator = (a + b + xa - 1.0) / (a - 1.0) * bracket
        out: FloatArray = numerator / (1.0 + self._dropout_odds(xa, txa, Ta))
        return np.where(ta > 0, out, 0.0)

    def expected_purchases(self, t: ArrayLike) -> FloatArray:
        """E[purchases in (0, t]] for a new customer (no history), equation (9)."""
        ta = _f(t)
        zeros = np.zeros_like(ta)
        return self.conditional_expected_purchases(ta, zeros, zeros, zeros)

    def _dropout_odds(self, x: FloatArray, t_x: FloatArray, T: FloatArray) -> FloatArray:
        """``a/(b+x-1) * ((alpha+T)/(alpha+t_x))^(r+x)`` for x > 0, else 0 (in log space)."""
        has = x > 0
        xs = np.where(has, x, 1.0)
        log_odds = (
            np.log(self.a)
            - np.log(self.b + xs - 1.0)
            + (self.r + xs) * (np.log(self.alpha + T) - np.log(self.alpha + t_x))
        )
        return np.where(has, np.exp(np.minimum(log_odds, 700.0)), 0.0)

    def _a_safe(self) -> float:
        # The closed forms divide by (a - 1); a == 1 exactly is a removable singularity.
        return self.a if abs(self.a - 1.0) > 1e-9 else 1.0 + 1e-9


class _ByValue:
    """Evaluate functions of ``x`` once per distinct value (x has few: 0, 1, 2, ...).

    ``gammaln``/``digamma`` dominate the likelihoods' cost; computing them on the distinct
    purchase counts and indexing back makes each optimiser step several times cheaper.
    """

    def __init__(self, x: FloatArray):
        self.values, inverse = np.unique(x, return_inverse=True)
        self.inverse = inverse.reshape(-1)

    def __call__(self, fn: Any) -> FloatArray:
        out: FloatArray = np.asarray(fn(self.values), dtype=np.float64)[self.inverse]
        return out


def _bgnbd_terms(
    params: FloatArray, x: FloatArray, t_x: FloatArray, T: FloatArray, by_x: _ByValue
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]:
    """(ll, a3, log(alpha+T), log(alpha+t_x), tail) of the BG/NBD log-likelihood."""
    from scipy.special import gammaln

    r, alpha, a, b = params
    has = x > 0
    log_a_t = np.log(alpha + T)
    log_a_tx = np.log(alpha + t_x)
    head = by_x(lambda u: gammaln(r + u) + gammaln(b + u) - gammaln(a + b + u))
    head_const = -gammaln(r) + r * np.log(alpha) + gammaln(a + b) - gammaln(b)
    a3 = -(r + x) * log_a_t
    # a4 - a3 for x > 0: log(a/(b+x-1)) + (r+x) (log(alpha+T) - log(alpha+t_x))
    log_odds = by_x(
        lambda u: np.where(u > 0, np.log(a) - np.log(b + np.maximum(u, 1.0) - 1.0), 0.0)
    )
    diff = np.where(has, log_odds + (r + x) * (log_a_t - log_a_tx), -np.inf)
    tail = a3 + np.logaddexp(0.0, diff)
    ll = head + head_const + tail
    return ll, a3, log_a_t, log_a_tx, tail


def _bgnbd_ll(params: FloatArray, x: FloatArray, t_x: FloatArray, T: FloatArray) -> FloatArray:
    """Per-row BG/NBD log-likelihood (Fader, Hardie & Lee 2005, section 7)."""
    return _bgnbd_terms(params, x, t_x, T, _ByValue(x))[0]


def _bgnbd_objective(
    params: FloatArray,
    x: FloatArray,
    t_x: FloatArray,
    T: FloatArray,
    w: FloatArray,
    by_x: _ByValue,
) -> tuple[float, FloatArray]:
    """Weighted log-likelihood sum and its gradient w.r.t. (r, alpha, a, b)."""
    from scipy.special import digamma

    r, alpha, a, b = params
    ll, a3, log_a_t, log_a_tx, tail = _bgnbd_terms(params, x, t_x, T, by_x)
    w3 = np.exp(a3 - tail)  # posterior share of the "still alive at T" branch
    w4 = 1.0 - w3
    ww3, ww4 = w * w3, w * w4
    sw, sw4 = float(w.sum()), float(ww4.sum())
    inv_b = by_x(lambda u: 1.0 / (b + np.maximum(u, 1.0) - 1.0))
    d_r = (
        w @ by_x(lambda u: digamma(r + u))
        + sw * (np.log(alpha) - digamma(r))
        - ww3 @ log_a_t
        - ww4 @ log_a_tx
    )
    d_alpha = (
        sw * r / alpha
        - (ww3 * (r + x)) @ (1.0 / (alpha + T))
        - (ww4 * (r + x)) @ (1.0 / (alpha + t_x))
    )
    psi_abx = w @ by_x(lambda u: digamma(a + b + u))
    psi_ab = sw * digamma(a + b)
    d_a = psi_ab - psi_abx + sw4 / a
    d_b = psi_ab + w @ by_x(lambda u: digamma(b + u)) - sw * digamma(b) - psi_abx - ww4 @ inv_b
    return float(w @ ll), np.array([d_r, d_alpha, d_a, d_b])


def fit_bgnbd(
    x: ArrayLike,
    t_x: ArrayLike,
    T: ArrayLike,
    weights: ArrayLike | None = None,
    penalizer: float = 0.0,
    max_iterations: int = 2000,
) -> tuple[BetaGeoParams, FitResult]:
    """Fit BG/NBD by maximum likelihood on (optionally weighted) customer summaries.

    Rows are collapsed to unique ``(x, t_x, T)`` first (weights summed). Time is rescaled
    so the largest ``T`` is 10 while optimising (conditioning; ``alpha`` is scaled back),
    and ``penalizer`` adds ``penalizer * sum(params**2)`` to the mean negative
    log-likelihood, as lifetimes' ``penalizer_coef`` does.
    """
    xa, ta, Ta = _f(x), _f(t_x), _f(T)
    w = np.ones_like(xa) if weights is None else _f(weights)
    _check_summary(xa, ta, Ta, w)
    (xu, tu, Tu), wu, _ = unique_rows(xa, ta, Ta, weights=w)
    scale = 10.0 / float(Tu.max())
    t_s, T_s = tu * scale, Tu * scale
    total = float(wu.sum())

    by_x = _ByValue(xu)

    def objective(log_params: FloatArray) -> tuple[float, FloatArray]:
        params = np.exp(log_params)
        ll_sum, grad = _bgnbd_objective(params, xu, t_s, T_s, wu, by_x)
        value = -ll_sum / total + penalizer * float(params @ params)
        d_params = -grad / total + 2.0 * penalizer * params
        return value, d_params * params  # chain rule for log-parameters

    res = _minimize(objective, np.zeros(4), max_iterations)
    r, alpha_s, a, b = np.exp(res.x)
    params = BetaGeoParams(r=float(r), alpha=float(alpha_s / scale), a=float(a), b=float(b))
    ll_total = float(wu @ params.log_likelihood(xu, tu, Tu))
    return params, _fit_result(res, ll_total, total, len(xu))


# ----------------------------------------------------------------------------------------
# Gamma-Gamma
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GammaGammaParams:
    """Gamma-Gamma spend model: transaction values ~ Gamma(p, nu), nu ~ Gamma(q, gamma)."""

    p: float
    q: float
    gamma: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    @property
    def population_mean_spend(self) -> float:
        """Mean transaction value across customers, ``p*gamma/(q-1)`` (infinite if q <= 1)."""
        return self.p * self.gamma / (self.q - 1.0) if self.q > 1.0 else float("inf")

    def conditional_expected_spend(self, x: ArrayLike, m: ArrayLike) -> FloatArray:
        """E[value of a future transaction | x repeat purchases with mean value m].

        A weighted mean of the population mean and the customer's own mean, the weight on
        the customer growing with ``x``; customers without repeat purchases get the
        population mean.
        """
        xa, ma = np.broadcast_arrays(_f(x), _f(m))
        px = self.p * xa
        out: FloatArray = self.p * (self.gamma + xa * ma) / (px + self.q - 1.0)
        return out

    def log_likelihood(self, x: ArrayLike, m: ArrayLike) -> FloatArray:
        """Per-customer log-density of the observed mean spend ``m`` given ``x`` (> 0)."""
        return _gg_ll(np.array([self.p, self.q, self.gamma]), _f(x), _f(m))


def _gg_ll(params: FloatArray, x: FloatArray, m: FloatArray) -> FloatArray:
    """Per-row Gamma-Gamma log-density of the mean value ``m`` of ``x`` transactions."""
    from scipy.special import gammaln

    p, q, g = params
    by_x = _ByValue(x)
    px = p * x
    head = by_x(lambda u: gammaln(p * u + q) - gammaln(p * u) + p * u * np.log(u))
    ll: FloatArray = (
        head - gammaln(q) + q * np.log(g) + (px - 1.0) * np.log(m) - (px + q) * np.log(g + m * x)
    )
    return ll


def _gg_objective(
    params: FloatArray,
    x: FloatArray,
    m: FloatArray,
    log_m: FloatArray,
    w: FloatArray,
    by_x: _ByValue,
) -> tuple[float, FloatArray]:
    """Weighted Gamma-Gamma log-likelihood sum and its gradient w.r.t. (p, q, gamma)."""
    from scipy.special import digamma, gammaln

    p, q, g = params
    px = p * x
    mx = m * x
    log_gm = np.log(g + mx)
    sw = float(w.sum())
    head = by_x(lambda u: gammaln(p * u + q) - gammaln(p * u) + p * u * np.log(u))
    ll_sum = (
        w @ head
        + sw * (q * np.log(g) - gammaln(q))
        + (w * (px - 1.0)) @ log_m
        - (w * (px + q)) @ log_gm
    )
    psi_pxq = by_x(lambda u: digamma(p * u + q))
    psi_px = by_x(lambda u: digamma(p * u))
    log_x = by_x(np.log)
    wx = w * x
    d_p = wx @ (psi_pxq - psi_px + log_m + log_x - log_gm)
    d_q = w @ (psi_pxq - log_gm) + sw * (np.log(g) - digamma(q))
    d_g = sw * q / g - (w * (px + q)) @ (1.0 / (g + mx))
    return float(ll_sum), np.array([d_p, d_q, d_g])


def fit_gamma_gamma(
    x: ArrayLike,
    m: ArrayLike,
    weights: ArrayLike | None = None,
    penalizer: float = 0.0,
    max_iterations: int = 2000,
) -> tuple[GammaGammaParams, FitResult]:
    """Fit Gamma-Gamma on customers with ``x > 0`` repeat purchases and mean value ``m > 0``.

    Customers without repeat purchases (or with non-positive mean value) carry no
    information about spend variation and are left out, as in Fader & Hardie's note.
    Values are rescaled to a median of 1 while optimising (``gamma`` is scaled back).
    """
    xa, ma = _f(x), _f(m)
    w = np.ones_like(xa) if weights is None else _f(weights)
    if xa.shape != ma.shape or xa.shape != w.shape:
        raise DataError("Gamma-Gamma fit: x, m and weights must have the same length")
    keep = (xa > 0) & (ma > 0) & np.isfinite(ma) & (w > 0)
    if int(keep.sum()) < 2:
        raise DataError(
            "Gamma-Gamma fit needs at least 2 customers with a repeat purchase of positive "
            f"value; found {int(keep.sum())}. Use a longer history or a larger customer base."
        )
    (xu, mu), wu, _ = unique_rows(xa[keep], ma[keep], weights=w[keep])
    scale = 1.0 / float(np.median(mu))
    m_s = mu * scale
    total = float(wu.sum())

    by_x = _ByValue(xu)
    log_m = np.log(m_s)

    def objective(log_params: FloatArray) -> tuple[float, FloatArray]:
        params = np.exp(log_params)
        ll_sum, grad = _gg_objective(params, xu, m_s, log_m, wu, by_x)
        value = -ll_sum / total + penalizer * float(params @ params)
        d_params = -grad / total + 2.0 * penalizer * params
        return value, d_params * params

    res = _minimize(objective, np.zeros(3), max_iterations)
    p, q, g_s = np.exp(res.x)
    params = GammaGammaParams(p=float(p), q=float(q), gamma=float(g_s / scale))
    ll_total = float(wu @ params.log_likelihood(xu, mu))
    return params, _fit_result(res, ll_total, total, len(xu))


# ----------------------------------------------------------------------------------------
# Customer value over a horizon
# ----------------------------------------------------------------------------------------


def discounted_value(
    bgnbd: BetaGeoParams,
    spend: ArrayLike,
    x: ArrayLike,
    t_x: ArrayLike,
    T: ArrayLike,
    horizon: float,
    rate_per_unit: float = 0.0,
    steps: int = 12,
) -> FloatArray:
    """Expected value of future purchases over ``horizon``, discounted continuously.

    The horizon is cut into ``steps`` equal slices; purchases expected in a slice are
    discounted at its midpoint by ``exp(-rate_per_unit * t)``. With ``rate_per_unit=0``
    this is exactly ``expected_purchases(horizon) * spend``.
    """
    spend_a = _f(spend)
    if rate_per_unit <= 0.0:
        return bgnbd.conditional_expected_purchases(horizon, x, t_x, T) * spend_a
    edges = np.linspace(0.0, horizon, steps + 1)
    total = np.zeros(np.broadcast(_f(x), spend_a).shape)
    previous = np.zeros_like(total)
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        current = bgnbd.conditional_expected_purchases(hi, x, t_x, T)
        total += (current - previous) * np.exp(-rate_per_unit * (lo + hi) / 2.0)
        previous = current
    out: FloatArray = total * spend_a
    return out


# ----------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------


def unique_rows(
    *columns: FloatArray, weights: FloatArray | None = None
) -> tuple[tuple[FloatArray, ...], FloatArray, NDArray[np.intp]]:
    """Collapse rows to unique value tuples: (unique columns, summed weights, inverse)."""
    n = len(columns[0])
    w = np.ones(n) if weights is None else weights
    if n == 0:
        return tuple(c.copy() for c in columns), np.zeros(0), np.zeros(0, dtype=np.intp)
    # lexsort + run boundaries is several times faster than np.unique(axis=0) on floats.
    order = np.lexsort(columns[::-1])
    sorted_cols = [c[order] for c in columns]
    new_run = np.zeros(n, dtype=bool)
    new_run[0] = True
    for c in sorted_cols:
        new_run[1:] |= c[1:] != c[:-1]
    run_id = np.cumsum(new_run) - 1
    inverse = np.empty(n, dtype=np.intp)
    inverse[order] = run_id
    firsts = np.flatnonzero(new_run)
    summed = np.bincount(run_id, weights=w[order], minlength=len(firsts)).astype(np.float64)
    return tuple(c[firsts] for c in sorted_cols), summed, inverse


def _f(values: ArrayLike) -> FloatArray:
    return np.asarray(values, dtype=np.float64)


def _check_summary(x: FloatArray, t_x: FloatArray, T: FloatArray, w: FloatArray) -> None:
    """Reject summaries the likelihood is undefined for, saying how many rows and why."""
    if not (x.shape == t_x.shape == T.shape == w.shape) or x.ndim != 1:
        raise DataError("BG/NBD fit: x, t_x, T and weights must be 1-d arrays of one length")
    if len(x) == 0:
        raise DataError("BG/NBD fit: no customers to fit on")
    problems = {
        "x (repeat purchases) is negative or not a whole number": (x < 0) | (x != np.round(x)),
        "t_x (recency) is negative or larger than T": (t_x < 0) | (t_x > T),
        "t_x is not 0 although x is 0": (x == 0) & (t_x != 0),
        "a value is missing or infinite": ~(np.isfinite(x) & np.isfinite(t_x) & np.isfinite(T)),
        "a weight is negative": w < 0,
    }
    for what, bad in problems.items():
        if bad.any():
            raise DataError(
                f"BG/NBD fit: {what} in {int(bad.sum())} rows (first: row {int(np.argmax(bad))})"
            )
    if not (T > 0).any():
        raise DataError(
            "BG/NBD fit: every customer has T = 0 (all first purchases on the last day); "
            "move `as_of` later or use a longer history"
        )


def _minimize(objective: Any, start: FloatArray, max_iterations: int) -> Any:
    from scipy.optimize import minimize
    from threadpoolctl import threadpool_limits

    # The objective is a handful of vector dot products per step: BLAS threads waking up
    # for each one cost more than they save (2-5x slower measured on 2 cores).
    with threadpool_limits(limits=1, user_api="blas"):
        return minimize(
            objective,
            start,
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": max_iterations, "ftol": 1e-14, "gtol": 1e-9},
        )


def _fit_result(res: Any, ll_total: float, total: float, n_unique: int) -> FitResult:
    grad = np.asarray(getattr(res, "jac", np.zeros(1)), dtype=np.float64)
    # L-BFGS-B may stop with "ABNORMAL" when the line search cannot improve in floating
    # point at the optimum; a vanishing gradient of the mean log-likelihood is what counts.
    stationary = (
        bool(np.all(np.isfinite(grad))) and float(np.max(np.abs(grad))) < GRADIENT_TOLERANCE
    )
    converged = (bool(res.success) or stationary) and bool(np.isfinite(ll_total))
    return FitResult(
        log_likelihood=ll_total,
        converged=converged,
        iterations=int(res.nit),
        message=str(res.message),
        n_customers=int(round(total)),
        n_unique_rows=n_unique,
        gradient_norm=float(np.linalg.norm(grad)),
    )
