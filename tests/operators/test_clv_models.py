"""BG/NBD and Gamma-Gamma math: published CDNOW results, lifetimes parity, recovery."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from segloop.errors import DataError
from segloop.models.btyd import (
    BetaGeoParams,
    GammaGammaParams,
    discounted_value,
    fit_bgnbd,
    fit_gamma_gamma,
    unique_rows,
)
from tests.requirements import missing, require_module


def lifetimes_datasets() -> Path:
    """The CDNOW files shipped in the lifetimes wheel (not importable as a module)."""
    spec = importlib.util.find_spec("lifetimes")
    if spec is None or not spec.submodule_search_locations:
        missing("lifetimes (dev extra) is not installed: pip install -e '.[dev]'")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets"


@pytest.fixture(scope="module")
def cdnow() -> dict[str, np.ndarray]:
    path = lifetimes_datasets() / "cdnow_customers_summary_with_transactions.csv"
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    return {k: np.array([float(r[k]) for r in rows]) for k in ("x", "t_x", "T", "zbar")}


def within(value: float, published: float, rel: float = 0.005) -> bool:
    return abs(value - published) <= rel * abs(published)


def test_bgnbd_reproduces_fader_hardie_lee_2005_on_cdnow(cdnow: dict[str, np.ndarray]) -> None:
    params, fit = fit_bgnbd(cdnow["x"], cdnow["t_x"], cdnow["T"])
    assert len(cdnow["x"]) == 2357
    assert within(params.r, 0.243)
    assert within(params.alpha, 4.414)
    assert within(params.a, 0.793)
    assert within(params.b, 2.426)
    assert abs(fit.log_likelihood - (-9582.4)) <= 0.1
    assert fit.converged
    assert fit.n_customers == 2357
    assert fit.n_unique_rows < 2357  # fitted on unique rows
    # Customer 1 (x=2, t_x=30.43, T=38.86): expected purchases in the next 39 weeks.
    assert round(float(params.conditional_expected_purchases(39, 2, 30.43, 38.86)), 3) == 1.226


def test_gamma_gamma_reproduces_fader_hardie_on_cdnow(cdnow: dict[str, np.ndarray]) -> None:
    params, fit = fit_gamma_gamma(cdnow["x"], cdnow["zbar"])
    assert fit.n_customers == 946  # customers with at least one repeat purchase
    assert within(params.p, 6.25)
    assert within(params.q, 3.74)
    assert within(params.gamma, 15.44)
    assert fit.converged
    # Expected spend shrinks a customer's own mean towards the population mean.
    population = params.population_mean_spend
    own = 100.0
    one, many = params.conditional_expected_spend([1, 50], [own, own])
    assert population < one < many < own


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning:lifetimes.*")
def test_predictions_match_lifetimes_formulas_including_heavy_buyers() -> None:
    lifetimes = require_module("lifetimes", "pip install -e '.[dev]'")
    rng = np.random.default_rng(7)
    n = 2000
    x = rng.integers(0, 400, n).astype(float)
    T = rng.uniform(1, 150, n)
    t_x = np.where(x > 0, rng.uniform(0, 1, n) * T, 0.0)
    t = rng.uniform(0.5, 150, n)
    ours = BetaGeoParams(r=0.243, alpha=4.414, a=0.793, b=2.426)
    ref = lifetimes.BetaGeoFitter()
    ref.params_ = dict(r=ours.r, alpha=ours.alpha, a=ours.a, b=ours.b)
    expected = ref.conditional_expected_number_of_purchases_up_to_time(t, x, t_x, T)
    got = ours.conditional_expected_purchases(t, x, t_x, T)
    ok = np.isfinite(expected)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got[ok], expected[ok], rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(
        ours.probability_alive(x, t_x, T),
        ref.conditional_probability_alive(x, t_x, T),
        rtol=1e-9,
        atol=1e-12,
    )
    # Unconditional expectation: eq. (9) equals the conditional one for a brand-new customer.
    np.testing.assert_allclose(
        ours.expected_purchases([10.0, 39.0]),
        ref.expected_number_of_purchases_up_to_time(np.array([10.0, 39.0])),
        rtol=1e-9,
    )


def test_weighted_unique_fit_equals_fit_on_repeated_rows(cdnow: dict[str, np.ndarray]) -> None:
    x, t_x, T = cdnow["x"][:800], cdnow["t_x"][:800], cdnow["T"][:800]
    weighted, wfit = fit_bgnbd(x, t_x, T, weights=np.full(800, 3.0))
    repeated, rfit = fit_bgnbd(np.tile(x, 3), np.tile(t_x, 3), np.tile(T, 3))
    for name in ("r", "alpha", "a", "b"):
        assert getattr(weighted, name) == pytest.approx(getattr(repeated, name), rel=1e-6)
    assert wfit.log_likelihood == pytest.approx(rfit.log_likelihood, rel=1e-9)
    assert rfit.n_customers == 2400


def simulate_bgnbd(
    n: int, r: float, alpha: float, a: float, b: float, seed: int
) -> tuple[np.ndarray, ...]:
    """Draw customers from the BG/NBD story (continuous time)."""
    rng = np.random.default_rng(seed)
    lam = rng.gamma(r, 1.0 / alpha, n)
    p = rng.beta(a, b, n)
    T = rng.uniform(10, 60, n)
    x, t_x, clock = np.zeros(n), np.zeros(n), np.zeros(n)
    active = np.ones(n, dtype=bool)
    while active.any():
        idx = np.flatnonzero(active)
        clock[idx] += rng.exponential(1.0 / lam[idx])
        bought = clock[idx] <= T[idx]
        buyers = idx[bought]
        x[buyers] += 1
        t_x[buyers] = clock[buyers]
        active[idx[~bought]] = False
        active[buyers[rng.random(len(buyers)) < p[buyers]]] = False
    return x, t_x, T


def test_fit_recovers_simulated_parameters() -> None:
    truth = dict(r=0.5, alpha=6.0, a=0.7, b=3.0)
    x, t_x, T = simulate_bgnbd(100_000, seed=1, **truth)
    params, fit = fit_bgnbd(x, t_x, T)
    assert fit.converged
    for name, value in truth.items():
        assert getattr(params, name) == pytest.approx(value, rel=0.1), name


def test_gamma_gamma_recovers_simulated_parameters() -> None:
    rng = np.random.default_rng(3)
    p, q, gamma = 4.0, 5.0, 30.0
    x = rng.integers(1, 20, 50_000).astype(float)
    nu = rng.gamma(q, 1.0 / gamma, len(x))
    m = rng.gamma(p * x, 1.0 / (nu * x))  # mean of x Gamma(p, nu) values
    params, fit = fit_gamma_gamma(x, m)
    assert fit.converged
    assert params.p == pytest.approx(p, rel=0.1)
    assert params.q == pytest.approx(q, rel=0.1)
    assert params.gamma == pytest.approx(gamma, rel=0.1)


def test_discounting_lowers_value_and_zero_rate_is_plain_product() -> None:
    params = BetaGeoParams(r=0.243, alpha=4.414, a=0.793, b=2.426)
    x, t_x, T = np.array([0.0, 2.0, 10.0]), np.array([0.0, 30.43, 38.0]), np.array([38.86] * 3)
    spend = np.array([20.0, 22.35, 40.0])
    plain = discounted_value(params, spend, x, t_x, T, horizon=52.0)
    np.testing.assert_allclose(
        plain, params.conditional_expected_purchases(52.0, x, t_x, T) * spend
    )
    discounted = discounted_value(params, spend, x, t_x, T, horizon=52.0, rate_per_unit=0.01)
    assert np.all(discounted < plain)
    assert np.all(discounted > plain * np.exp(-0.01 * 52.0))


@pytest.mark.parametrize(
    ("x", "t_x", "T", "words"),
    [
        ([1.0, -1.0], [1.0, 0.0], [2.0, 2.0], "negative or not a whole number"),
        ([1.5], [1.0], [2.0], "not a whole number"),
        ([2.0], [3.0], [2.0], "larger than T"),
        ([0.0], [1.0], [2.0], "x is 0"),
        ([1.0], [float("nan")], [2.0], "missing"),
        ([], [], [], "no customers"),
    ],
)
def test_bad_summaries_are_rejected_with_a_reason(
    x: list[float], t_x: list[float], T: list[float], words: str
) -> None:
    with pytest.raises(DataError, match=words):
        fit_bgnbd(x, t_x, T)


def test_gamma_gamma_needs_repeat_buyers() -> None:
    with pytest.raises(DataError, match="repeat purchase"):
        fit_gamma_gamma([0.0, 0.0, 1.0], [0.0, 0.0, 5.0])


def test_unique_rows_round_trip() -> None:
    a = np.array([1.0, 0.0, 1.0, 1.0, 0.0])
    b = np.array([2.0, 0.0, 2.0, 3.0, 0.0])
    (ua, ub), counts, inverse = unique_rows(a, b)
    assert list(zip(ua, ub, strict=True)) == [(0.0, 0.0), (1.0, 2.0), (1.0, 3.0)]
    assert counts.tolist() == [2.0, 2.0, 1.0]
    np.testing.assert_array_equal(ua[inverse], a)
    np.testing.assert_array_equal(ub[inverse], b)


def test_gamma_gamma_population_mean_needs_q_above_one() -> None:
    assert GammaGammaParams(p=2.0, q=0.9, gamma=1.0).population_mean_spend == float("inf")


def test_a_fit_stopped_early_is_not_reported_as_converged(cdnow: dict[str, np.ndarray]) -> None:
    _, fit = fit_bgnbd(cdnow["x"], cdnow["t_x"], cdnow["T"], max_iterations=2)
    assert not fit.converged
    assert fit.gradient_norm > 1e-5


def test_predictions_stay_finite_when_the_fit_drifts_to_huge_a_and_b() -> None:
    # Data without dropout-by-purchase pushes a and b towards infinity (fixed a/(a+b));
    # one closed form overflows there, the other for heavy buyers: both must be handled.
    huge = BetaGeoParams(r=1.47, alpha=27.3, a=68980.0, b=963846.0)
    x = np.array([0.0, 1.0, 5.0, 30.0, 400.0])
    T = np.array([10.0, 50.0, 100.0, 200.0, 200.0])
    t_x = np.where(x > 0, 0.8 * T, 0.0)
    with np.errstate(all="raise"):
        got = huge.conditional_expected_purchases(120.0, x, t_x, T)
    assert np.all(np.isfinite(got)) and np.all(got >= 0)
    # Ten times larger a and b (same dropout probability) gives nearly the same forecast.
    limit = BetaGeoParams(r=1.47, alpha=27.3, a=689800.0, b=9638460.0)
    np.testing.assert_allclose(
        got, limit.conditional_expected_purchases(120.0, x, t_x, T), rtol=1e-3
    )
