"""How sure a CLV forecast is: the distribution of each customer's future purchases and value.

The point forecast of ``segloop.models.btyd`` says how many purchases a customer is
expected to make; a marketer also needs how likely none is, and a range. Two sources of
uncertainty are combined:

- **process noise**, from the BG/NBD model itself. A customer still alive at ``T`` has
  purchase rate ``lambda ~ Gamma(r + x, alpha + T)`` and dropout ``p ~ Beta(a, b + x)``
  (independent given the history), and from ``T`` on behaves like a new customer with those
  parameters, so the count in the next ``t`` follows Fader, Hardie & Lee's (2005) equation
  (8) with ``(r + x, alpha + T, a, b + x)``; a customer already gone buys nothing:

      P(N = k) = (1 - P_alive) [k = 0] + P_alive * P_FHL(k; r + x, alpha + T, a, b + x, t)

  so ``P(N = 0) = 1 - P_alive + P_alive * ((alpha + T) / (alpha + T + t)) ** (r + x)``.
- **parameter uncertainty**: the fitted ``(r, alpha, a, b)`` are estimates. A Laplace
  approximation (a normal on the log-parameters with the inverse Hessian of the
  log-likelihood as covariance, the Hessian taken by central differences of the analytic
  gradient) gives ``draws`` parameter sets; each customer's distribution is the mixture over
  them. On CDNOW this is what widens the interval of the total forecast enough to cover the
  actual count; plug-in parameters give a range that is too narrow.

Everything is computed per unique ``(x, t_x, T)`` row (the summary's few thousand distinct
histories), so the cost and memory do not grow with customers.

Value: a customer's spend over the horizon is ``V = (G_1 + ... + G_N) / nu`` with
``G_i ~ Gamma(p, 1)`` and ``nu ~ Gamma(q + p x, gamma + m x)`` (the Gamma-Gamma posterior),
so ``V / (gamma + m x)`` is a mixture over ``N`` of beta-prime distributions that depends
on the history alone: its quantiles are computed per distinct history too, and scaled per
customer. The Gamma-Gamma parameters are taken as fitted (their uncertainty is small next
to the spread of single purchases).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from segloop.models.btyd import BetaGeoParams, GammaGammaParams, _bgnbd_objective, _ByValue

FloatArray = NDArray[np.float64]
QUANTILES: tuple[float, ...] = (0.1, 0.5, 0.9)
TAIL = 1e-9  # stop summing the distribution once this little probability is left
MAX_COUNT = 100_000
VALUE_TAIL = 1e-4  # the value's distribution is summed over counts up to this tail
VALUE_GRID = 240  # points of the log grid the value's distribution is read on  # no horizon sees more purchases than this (a guard, not a model limit)

__all__ = ["PurchaseDistribution", "laplace_draws", "purchase_distribution", "purchase_pmf",
           "value_scale_quantiles", "total_interval", "expected_totals", "mixture_quantiles", "pit_bounds"]


def laplace_draws(
    params: BetaGeoParams,
    x: ArrayLike,
    t_x: ArrayLike,
    T: ArrayLike,
    weights: ArrayLike,
    draws: int | tuple[int, ...],
    seed: int = 0,
    penalizer: float = 0.0,
) -> tuple[Any, bool]:
    """``draws`` parameter sets (rows of r, alpha, a, b) around the fit, and whether the
    Laplace approximation held (a negative-definite Hessian); without it, the fit itself.

    Draws are quasi-random with a fixed seed, so a run's intervals are the same every time.
    With a tuple of sizes, one array of draws per size (the Hessian is taken once).
    """
    xa, ta, Ta, wa = (np.asarray(v, dtype=np.float64) for v in (x, t_x, T, weights))
    theta = np.log([params.r, params.alpha, params.a, params.b])
    by_x = _ByValue(xa)
    total = float(wa.sum())

    def grad(log_params: FloatArray) -> FloatArray:
        values = np.exp(log_params)
        _, g = _bgnbd_objective(values, xa, ta, Ta, wa, by_x)
        # penalized objective (as fitted): ll - total * penalizer * sum(params**2)
        g = g - 2.0 * total * penalizer * values
        return g * values

    hessian = np.empty((4, 4))
    for j in range(4):
        step = 1e-4
        up, down = theta.copy(), theta.copy()
        up[j] += step
        down[j] -= step
        hessian[:, j] = (grad(up) - grad(down)) / (2 * step)
    hessian = (hessian + hessian.T) / 2.0
    fitted = np.exp(theta)[None, :]
    sizes = draws if isinstance(draws, tuple) else (draws,)
    chol = None
    with contextlib.suppress(np.linalg.LinAlgError):  # not negative definite: no Laplace
        chol = np.linalg.cholesky(np.linalg.inv(-hessian))
    held = chol is not None and bool(np.all(np.isfinite(chol)))
    out = [_quasi_normal(theta, chol, n, seed) if held and n > 1 else fitted for n in sizes]
    return (tuple(out) if isinstance(draws, tuple) else out[0]), held


def _quasi_normal(theta: FloatArray, chol: Any, n: int, seed: int) -> FloatArray:
    """``n`` draws of ``exp(N(theta, chol chol'))`` from a randomly shifted Halton sequence:
    a few cover the distribution as evenly as many random ones would (scipy's Sobol would
    do as well, but importing scipy.stats costs seconds)."""
    from scipy.special import ndtri

    shift = np.random.default_rng(seed).random(4)
    u = (_halton(n, (2, 3, 5, 7)) + shift[None, :]) % 1.0
    z = ndtri(np.clip(u, 1e-12, 1 - 1e-12))
    out: FloatArray = np.exp(theta[None, :] + z @ chol.T)
    return out


def _halton(n: int, bases: tuple[int, ...]) -> FloatArray:
    """The first ``n`` points (from the second) of the Halton sequence in these bases."""
    out = np.zeros((n, len(bases)))
    for j, base in enumerate(bases):
        index = np.arange(1, n + 1)
        scale = 1.0
        while index.any():
            scale /= base
            out[:, j] += scale * (index % base)
            index //= base
    return out


def _alive(draws: FloatArray, x: FloatArray, t_x: FloatArray, T: FloatArray) -> FloatArray:
    """P(alive at T), rows x draws."""
    r, alpha, a, b = (draws[:, i][None, :] for i in range(4))
    xs = np.maximum(x, 1.0)[:, None]
    log_odds = (np.log(a) - np.log(b + xs - 1.0)
                + (r + xs) * (np.log(alpha + T[:, None]) - np.log(alpha + t_x[:, None])))
    odds = np.where((x > 0)[:, None], np.exp(np.minimum(log_odds, 700.0)), 0.0)
    out: FloatArray = 1.0 / (1.0 + odds)
    return out


class _Terms:
    """``P(N = k)`` for k = 0, 1, ... as (rows x draws) arrays (FHL eq. 8, conditional).

    ``next_column()`` returns the next term; ``keep(mask)`` drops finished rows.
    """

    def __init__(self, draws: FloatArray, x: FloatArray, t_x: FloatArray, T: FloatArray, t: float):
        r, alpha, a, b = (draws[:, i][None, :] for i in range(4))
        self.a = a
        self.alive = _alive(draws, x, t_x, T)
        self.rr = r + x[:, None]
        aa = alpha + T[:, None]
        self.bb = b + x[:, None]
        self.s = t / (aa + t)
        self.nb = np.exp(self.rr * (np.log(aa) - np.log(aa + t)))  # NB term at k = 0
        self.coef = np.ones_like(self.nb)  # B(a, b'+k) / B(a, b')
        self.prev_coef = self.coef
        self.nb_cum = np.zeros_like(self.nb)  # NB terms summed up to k - 1
        self.k = 0

    def next_column(self) -> FloatArray:
        k = self.k
        if k == 0:
            out: FloatArray = self.alive * self.nb + (1.0 - self.alive)
        else:
            p = self.coef * self.nb + self.a / (self.a + self.bb + k - 1.0) * self.prev_coef * (
                1.0 - self.nb_cum)
            out = self.alive * p
        self.nb_cum = self.nb_cum + self.nb
        self.prev_coef = self.coef
        self.coef = self.coef * (self.bb + k) / (self.a + self.bb + k)
        self.k = k + 1
        self.nb = self.nb * (self.rr + k) / (k + 1) * self.s
        return out

    def keep(self, mask: NDArray[np.bool_]) -> None:
        for name in ("alive", "rr", "bb", "s", "nb", "coef", "prev_coef", "nb_cum"):
            setattr(self, name, getattr(self, name)[mask])


@dataclass
class PurchaseDistribution:
    """Per row: P(no purchase), quantiles and moments of the purchase count (mixture over
    the parameter draws), plus per-draw means and variances for the total's interval."""

    p_zero: FloatArray
    quantiles: FloatArray  # rows x len(QUANTILES)
    mean: FloatArray
    second_moment: FloatArray
    draw_mean: FloatArray  # rows x draws
    draw_var: FloatArray  # rows x draws


def purchase_distribution(
    draws: FloatArray,
    x: ArrayLike,
    t_x: ArrayLike,
    T: ArrayLike,
    t: float,
    levels: tuple[float, ...] = QUANTILES,
) -> PurchaseDistribution:
    """The distribution of purchases in ``(T, T + t]`` per row, mixed over parameter ``draws``.

    Sums the distribution term by term until at most ``TAIL`` probability is left in every
    row (rows that are done drop out, so a few heavy buyers do not slow the rest).
    """
    xa, ta, Ta = (np.asarray(v, dtype=np.float64).reshape(-1) for v in (x, t_x, T))
    n, d = len(xa), len(draws)
    level_arr = np.asarray(levels, dtype=np.float64)
    quantiles = np.full((n, len(levels)), float(MAX_COUNT))
    found = np.zeros((n, len(levels)), dtype=bool)
    cdf = np.zeros(n)
    m1, m2 = np.zeros((n, d)), np.zeros((n, d))
    terms = _Terms(draws, xa, ta, Ta, float(t))
    active = np.arange(n)
    p_zero = np.zeros(n)
    for k in range(MAX_COUNT):
        column = terms.next_column()
        mixed = column.mean(axis=1)
        if k == 0:
            p_zero = mixed.copy()
        else:
            m1[active] += k * column
            m2[active] += float(k) * k * column
        cdf[active] += mixed
        reached = (cdf[active, None] >= level_arr[None, :] - 1e-12) & ~found[active]
        if reached.any():
            rows, cols = np.nonzero(reached)
            quantiles[active[rows], cols] = k
            found[active[rows], cols] = True
        done = (cdf[active] >= 1.0 - TAIL) & found[active].all(axis=1)
        if done.all():
            break
        if done.any():
            active = active[~done]
            terms.keep(~done)
    draw_var = np.maximum(m2 - m1 * m1, 0.0)
    return PurchaseDistribution(p_zero=p_zero, quantiles=quantiles, mean=m1.mean(axis=1),
                                second_moment=m2.mean(axis=1), draw_mean=m1, draw_var=draw_var)


def purchase_pmf(draws: FloatArray, x: ArrayLike, t_x: ArrayLike, T: ArrayLike, t: float,
                 upto: int) -> FloatArray:
    """``P(N = k)`` for k = 0..upto (rows x (upto + 1)), mixed over ``draws``."""
    xa, ta, Ta = (np.asarray(v, dtype=np.float64).reshape(-1) for v in (x, t_x, T))
    terms = _Terms(draws, xa, ta, Ta, float(t))
    return np.column_stack([terms.next_column().mean(axis=1) for _ in range(upto + 1)])


def value_scale_quantiles(
    gg: GammaGammaParams,
    draws: FloatArray,
    x: ArrayLike,
    t_x: ArrayLike,
    T: ArrayLike,
    t: float,
    levels: tuple[float, ...] = QUANTILES,
    reach: FloatArray | None = None,
) -> FloatArray:
    """Quantiles of ``W = V / (gamma + m x)`` per distinct history (rows x levels).

    Given ``N = k`` purchases, ``V = G / nu`` with ``G ~ Gamma(k p, 1)`` and
    ``nu ~ Gamma(q + p x, rate gamma + m x)``, so ``W`` is beta-prime: ``P(W <= w | k) =
    I_{w / (1 + w)}(k p, q + p x)``, which depends on the history only, not on ``m``; a
    customer's value quantiles are these times ``gamma + m x``. For each distinct ``x`` the
    beta-prime CDFs are tabulated once on a log grid of ``w``; each row's mixture over ``k``
    is then one matrix product, and its quantiles are read off the grid (interpolated in
    ``log w``). The sum over ``k`` stops where the distribution has ``VALUE_TAIL`` left.
    """
    from scipy.special import betainc

    xa, ta, Ta = (np.asarray(v, dtype=np.float64).reshape(-1) for v in (x, t_x, T))
    n = len(xa)
    out = np.zeros((n, len(levels)))
    if n == 0:
        return out
    if reach is None:  # the count below which all but VALUE_TAIL of the distribution lies
        reach = purchase_distribution(draws, xa, ta, Ta, t, levels=(1.0 - VALUE_TAIL,)).quantiles[:, 0]
    for value in np.unique(xa):
        rows = np.flatnonzero(xa == value)
        upto = max(int(reach[rows].max()), 1)
        pmf = purchase_pmf(draws, xa[rows], ta[rows], Ta[rows], t, upto)
        # Each row summed up to its own reach: the same result whatever rows come along.
        pmf[np.arange(upto + 1)[None, :] > reach[rows][:, None]] = 0.0
        shape_q = gg.q + gg.p * value
        # W | k is near k p / (q + p x): the quantiles lie well within this grid (fixed, so a
        # customer's result does not depend on the other rows of the chunk).
        log_w = np.log(gg.p / shape_q) + np.linspace(np.log(1e-4), np.log(1e6), VALUE_GRID)
        w = np.exp(log_w)
        k = np.arange(1, upto + 1, dtype=np.float64)[:, None]
        table = betainc(k * gg.p, shape_q, (w / (1.0 + w))[None, :])  # K x grid
        cdf = pmf[:, :1] + pmf[:, 1:] @ table  # rows x grid
        for j, level in enumerate(levels):
            above = cdf >= level
            first = np.where(above.any(axis=1), above.argmax(axis=1), VALUE_GRID - 1)
            prev = np.maximum(first - 1, 0)
            c0, c1 = cdf[np.arange(len(rows)), prev], cdf[np.arange(len(rows)), first]
            frac = np.where(c1 > c0, (level - c0) / np.where(c1 > c0, c1 - c0, 1.0), 1.0)
            q = np.exp(log_w[prev] + np.clip(frac, 0.0, 1.0) * (log_w[first] - log_w[prev]))
            out[rows, j] = np.where(pmf[:, 0] >= level, 0.0, q)
    return out


def total_interval(draw_mean: FloatArray, draw_var: FloatArray, weights: ArrayLike | None = None,
                   levels: tuple[float, ...] = (0.03, 0.5, 0.97)) -> list[float]:
    """Quantiles of the total purchases of all rows (each ``weights`` customers), from
    per-row, per-draw means and variances (``PurchaseDistribution``)."""
    w = np.ones(draw_mean.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)
    return mixture_quantiles(w @ draw_mean, w @ draw_var, levels)


def expected_totals(center: BetaGeoParams, draws: FloatArray, x: ArrayLike, t_x: ArrayLike,
                    T: ArrayLike, weights: ArrayLike, t: float, max_rows: int = 4096,
                    seed: int = 0) -> FloatArray:
    """Expected total purchases of all rows under each parameter draw (closed form, eq. 10).

    Beyond ``max_rows`` rows, how much each draw moves the total away from ``center``'s is
    measured on a fixed sample of rows (drawn in proportion to their weights) and scaled
    up; the total at ``center`` itself is exact.
    """
    xa, ta, Ta = (np.asarray(v, dtype=np.float64) for v in (x, t_x, T))
    w = np.asarray(weights, dtype=np.float64)
    exact = float(w @ center.conditional_expected_purchases(t, xa, ta, Ta))
    if len(xa) > max_rows:
        rows = np.random.default_rng(seed).choice(len(xa), max_rows, replace=True, p=w / w.sum())
        xa, ta, Ta = xa[rows], ta[rows], Ta[rows]
        w = np.full(max_rows, float(weights_sum(weights)) / max_rows)
    base = float(w @ center.conditional_expected_purchases(t, xa, ta, Ta))
    return np.array([
        exact + float(w @ BetaGeoParams(*map(float, d)).conditional_expected_purchases(t, xa, ta, Ta)) - base
        for d in draws
    ])


def weights_sum(weights: ArrayLike) -> float:
    return float(np.asarray(weights, dtype=np.float64).sum())


def mixture_quantiles(means: ArrayLike, variances: ArrayLike, levels: tuple[float, ...]) -> list[float]:
    """Quantiles of an equal-weight mixture of normals ``N(means[d], variances[d])``.

    Given the parameters, a total over many customers is a sum of independent counts, close
    to normal; over the parameter draws it is a mixture of those normals.
    """
    from scipy.special import ndtr

    mu = np.asarray(means, dtype=np.float64)
    sd = np.sqrt(np.maximum(np.broadcast_to(np.asarray(variances, dtype=np.float64), mu.shape), 1e-300))
    out = []
    for level in levels:
        lo, hi = float((mu - 8 * sd).min()), float((mu + 8 * sd).max())
        for _ in range(100):
            mid = (lo + hi) / 2.0
            if float(ndtr((mid - mu) / sd).mean()) < level:
                lo = mid
            else:
                hi = mid
        out.append((lo + hi) / 2.0)
    return out


def pit_bounds(draws: FloatArray, x: ArrayLike, t_x: ArrayLike, T: ArrayLike, t: float,
               y: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """``(P(N < y), P(N = y))`` per row: the randomized PIT is ``below + U * at``.

    For whole-number outcomes the PIT with a uniform ``U`` is uniform on [0, 1] when the
    forecast distribution is right, so its spread judges the intervals.
    """
    xa, ta, Ta = (np.asarray(v, dtype=np.float64).reshape(-1) for v in (x, t_x, T))
    ya = np.asarray(y, dtype=np.int64).reshape(-1)
    below, at = np.zeros(len(ya)), np.zeros(len(ya))
    terms = _Terms(draws, xa, ta, Ta, float(t))
    active = np.arange(len(ya))
    for k in range(int(ya.max(initial=0)) + 1):
        mixed = terms.next_column().mean(axis=1)
        yk = ya[active]
        below[active] += np.where(yk > k, mixed, 0.0)
        at[active] += np.where(yk == k, mixed, 0.0)
        more = yk > k
        if not more.all():
            active = active[more]
            terms.keep(more)
    return below, at
