"""CLV intervals: each formula against a simulation of the model, and calibration on CDNOW."""

from __future__ import annotations

import numpy as np
import pytest

from segloop.models.btyd import BetaGeoParams, GammaGammaParams, fit_bgnbd, unique_rows
from segloop.models.btyd_intervals import (
    laplace_draws,
    pit_bounds,
    purchase_distribution,
    purchase_pmf,
    total_interval,
    value_scale_quantiles,
)
from segloop.operators.clv_holdout import decile_error, normalized_gini
from segloop.warehouses import Warehouse
from tests.operators.test_clv import cdnow_transactions
from tests.operators.test_clv_memory import run

CDNOW = BetaGeoParams(r=0.243, alpha=4.414, a=0.793, b=2.426)
HISTORIES = [(0, 0.0, 27.0), (0, 0.0, 38.9), (2, 30.4, 38.9), (7, 35.0, 38.0), (1, 2.0, 38.0),
             (25, 37.0, 38.0)]


def simulate_future(params: BetaGeoParams, x: float, t_x: float, T: float, t: float,
                    n: int, rng: np.random.Generator) -> np.ndarray:
    """Purchases in (T, T + t] of ``n`` customers with this history, drawn from the model's
    posterior: alive or not, then a rate and a dropout probability, then the process."""
    p_alive = float(params.probability_alive(x, t_x, T))
    alive = rng.random(n) < p_alive
    lam = rng.gamma(params.r + x, 1.0 / (params.alpha + T), n)
    p = rng.beta(params.a, params.b + x, n)
    # Purchases until the one after which the customer leaves: Geometric(p) on 1, 2, ...
    until_dropout = rng.geometric(p)
    count = np.minimum(rng.poisson(lam * t), until_dropout)
    return np.where(alive, count, 0)


def plug_in(params: BetaGeoParams) -> np.ndarray:
    return np.array([[params.r, params.alpha, params.a, params.b]])


@pytest.mark.parametrize("history", HISTORIES)
def test_distribution_of_future_purchases_matches_a_simulation(history: tuple[float, float, float]) -> None:
    x, t_x, T = history
    rng = np.random.default_rng(7)
    sim = simulate_future(CDNOW, x, t_x, T, 39.0, 200_000, rng)
    pmf = purchase_pmf(plug_in(CDNOW), [x], [t_x], [T], 39.0, 12)[0]
    for k in range(8):
        share = float((sim == k).mean())
        assert abs(pmf[k] - share) < 4.5 * np.sqrt(share * (1 - share) / len(sim)) + 1e-4, k
    dist = purchase_distribution(plug_in(CDNOW), [x], [t_x], [T], 39.0)
    assert dist.p_zero[0] == pytest.approx(pmf[0])
    # Its mean is the model's closed-form expectation, its quantiles those of the simulation.
    assert dist.mean[0] == pytest.approx(float(CDNOW.conditional_expected_purchases(39.0, x, t_x, T)), rel=1e-6)
    for j, level in enumerate((0.1, 0.5, 0.9)):
        assert dist.quantiles[0, j] == np.quantile(sim, level, method="inverted_cdf")


def test_no_repeat_purchase_customer_probability_of_none_is_the_closed_form() -> None:
    # pymc-marketing 0.19.2 gives 0.906 here; the closed form and a simulation give 0.822.
    p0 = purchase_distribution(plug_in(CDNOW), [0], [0.0], [27.0], 39.0).p_zero[0]
    closed = ((CDNOW.alpha + 27.0) / (CDNOW.alpha + 27.0 + 39.0)) ** CDNOW.r
    sim = simulate_future(CDNOW, 0, 0.0, 27.0, 39.0, 400_000, np.random.default_rng(3))
    assert p0 == pytest.approx(closed, abs=1e-12)
    assert abs(p0 - float((sim == 0).mean())) < 0.003
    assert round(p0, 3) == 0.822


def test_pit_bounds_are_the_cdf_below_and_at_the_outcome() -> None:
    x, t_x, T = np.array([0.0, 2.0, 7.0]), np.array([0.0, 30.4, 35.0]), np.array([27.0, 38.9, 38.0])
    y = np.array([0, 3, 1])
    pmf = purchase_pmf(plug_in(CDNOW), x, t_x, T, 39.0, 5)
    below, at = pit_bounds(plug_in(CDNOW), x, t_x, T, 39.0, y)
    np.testing.assert_allclose(below, [0.0, pmf[1, :3].sum(), pmf[2, 0]])
    np.testing.assert_allclose(at, [pmf[0, 0], pmf[1, 3], pmf[2, 1]])


def simulate_histories(params: BetaGeoParams, T: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """(x, t_x) of customers observed for T, simulated from the BG/NBD process."""
    n = len(T)
    lam = rng.gamma(params.r, 1.0 / params.alpha, n)
    p = rng.beta(params.a, params.b, n)
    x, t_x = np.zeros(n), np.zeros(n)
    now = np.zeros(n)
    active = np.ones(n, dtype=bool)
    while active.any():
        now[active] += rng.exponential(1.0 / lam[active])
        bought = active & (now <= T)
        x[bought] += 1
        t_x[bought] = now[bought]
        active = bought & (rng.random(n) >= p)
    return x, t_x


def test_laplace_spread_matches_refits_on_simulated_data() -> None:
    truth = BetaGeoParams(r=0.5, alpha=5.0, a=0.8, b=2.5)
    rng = np.random.default_rng(11)
    T = rng.uniform(20, 40, 3000).round(1)
    fits, spreads = [], []
    for _ in range(30):
        x, t_x = simulate_histories(truth, T, rng)
        params, _ = fit_bgnbd(x, t_x, T)
        (xu, tu, Tu), wu, _ = unique_rows(x, t_x, T)
        draws, held = laplace_draws(params, xu, tu, Tu, wu, 400, seed=1)
        assert held
        fits.append(np.log([params.r, params.alpha, params.a, params.b]))
        spreads.append(np.log(draws).std(axis=0))
    # The Laplace standard errors agree with the spread of the estimates across data sets.
    ratio = np.array(fits).std(axis=0) / np.mean(spreads, axis=0)
    assert np.all((ratio > 0.6) & (ratio < 1.6)), ratio


def test_value_quantiles_match_a_simulation_of_purchases_and_amounts() -> None:
    gg = GammaGammaParams(p=6.25, q=3.74, gamma=15.44)
    rng = np.random.default_rng(5)
    for x, t_x, T, m in [(2, 30.4, 38.9, 22.35), (7, 35.0, 38.0, 40.0), (0, 0.0, 30.0, 0.0)]:
        n = 300_000
        counts = simulate_future(CDNOW, x, t_x, T, 39.0, n, rng)
        nu = rng.gamma(gg.q + gg.p * x, 1.0 / (gg.gamma + m * x), n)
        value = np.where(counts > 0, rng.gamma(np.maximum(counts, 1) * gg.p, 1.0) / nu, 0.0)
        scale = value_scale_quantiles(gg, plug_in(CDNOW), [x], [t_x], [T], 39.0)[0]
        ours = scale * (gg.gamma + m * x)
        sim = np.quantile(value, [0.1, 0.5, 0.9])
        for mine, theirs in zip(ours, sim, strict=True):
            assert mine == pytest.approx(theirs, abs=0.3, rel=0.02), (x, ours, sim)


def test_total_interval_matches_simulated_totals() -> None:
    rng = np.random.default_rng(9)
    histories = np.array(HISTORIES * 50, dtype=float)
    x, t_x, T = histories.T
    dist = purchase_distribution(plug_in(CDNOW), x, t_x, T, 39.0)
    lo, mid, hi = total_interval(dist.draw_mean, dist.draw_var, levels=(0.1, 0.5, 0.9))
    totals = np.zeros(20_000)
    for (xi, ti, Ti) in HISTORIES:
        for _ in range(50):
            totals += simulate_future(CDNOW, xi, ti, Ti, 39.0, len(totals), rng)
    sim = np.quantile(totals, [0.1, 0.5, 0.9])
    assert [lo, mid, hi] == pytest.approx(list(sim), rel=0.04)


def test_normalized_gini_and_decile_error() -> None:
    rng = np.random.default_rng(2)
    actual = rng.gamma(0.5, 10.0, 5000)
    assert normalized_gini(actual, actual) == pytest.approx(1.0)
    assert normalized_gini(-actual, actual) < -0.9
    assert abs(normalized_gini(rng.random(5000), actual)) < 0.05
    assert decile_error([1, 2, 3], [1, 2, 3]) == 0.0 and decile_error([2, 2], [1, 1]) == 1.0


@pytest.fixture(scope="module")
def cdnow_39_39() -> dict[str, object]:
    """The clv node on CDNOW as of 1998-06-30 with a 39-week horizon: its holdout check is
    the classic setup (fit on 39 weeks to 1997-09-30, compare with the next 39)."""
    wh = Warehouse.duckdb()
    wh.create_table("cdnow", cdnow_transactions())
    out, _ = run(wh, as_of="1998-06-30", validate=True)
    return {"out": out.metrics}


def test_cdnow_intervals_are_calibrated(cdnow_39_39: dict[str, object]) -> None:
    m = cdnow_39_39["out"]
    assert isinstance(m, dict)
    assert m["holdout_customers"] == 2357 and m["holdout_purchases"] == 1882
    # Randomized PIT of each customer's holdout count: 80% inside [0.1, 0.9].
    assert abs(m["holdout_interval_coverage"] - 0.80) <= 0.02
    # The total's 98% interval covers the actual 1,882 (the point forecast is ~1,653).
    assert m["holdout_purchases_p01"] < 1882 < m["holdout_purchases_p99"]
    assert 1600 < m["holdout_purchases_p50"] < 1750


def test_cdnow_total_needs_the_parameter_uncertainty() -> None:
    raw = cdnow_transactions()
    wh = Warehouse.duckdb()
    wh.create_table("cdnow", raw)
    out, _ = run(wh, as_of="1997-09-30", validate=False)
    params = BetaGeoParams(**out.metrics["bgnbd"])
    table = out.table
    x, t_x, T = (table[c].to_numpy() for c in ("frequency", "recency", "tenure"))
    (xu, tu, Tu), wu, _ = unique_rows(x.astype(float), t_x, T)
    fixed = purchase_distribution(plug_in(params), xu, tu, Tu, 39.0)
    lo, hi = total_interval(fixed.draw_mean, fixed.draw_var, wu, levels=(0.01, 0.99))
    assert hi < 1882  # plug-in parameters: too sure of itself
    assert out.metrics["purchases_total_p01"] < 1882 < out.metrics["purchases_total_p99"]


def test_card_metrics_are_gates() -> None:
    wh = Warehouse.duckdb()
    wh.create_table("cdnow", cdnow_transactions())
    out, _ = run(wh, as_of="1998-06-30", validate=True, intervals=False,
                 require={"holdout_gini": 0.3, "holdout_decile_error": 0.0})
    assert out.metrics["gate"] == "failed" and out.error is not None
    assert "`holdout_decile_error`" in out.error and "holdout_gini" not in out.error
    # Without intervals there is no PIT: a gate on it says the metric was not computed.
    assert "holdout_interval_coverage" not in out.metrics
    out, _ = run(wh, as_of="1998-06-30", validate=True, intervals=False,
                 require={"holdout_interval_coverage": 0.7})
    assert out.error is not None and "was not computed" in out.error
