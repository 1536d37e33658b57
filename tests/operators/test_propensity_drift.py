"""The level of propensity's probabilities: BG/NBD's expected buying rate and the logit shift.

The expected rate is checked against customers simulated from BG/NBD itself (what they
actually did in the window), the shift against its definition, both on DuckDB.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest

from segloop.operators.base import RunContext
from segloop.operators.propensity import PropensityConfig
from segloop.operators.propensity_drift import expected_buying_rate, logit_shift, shifted
from segloop.operators.propensity_features import FeatureBuilder
from segloop.warehouses import Warehouse

START = datetime(2024, 1, 1)


def bgnbd_purchases(n: int, seed: int) -> tuple[pa.Table, np.ndarray]:
    """Customers joining over half a year, buying as BG/NBD says (r 0.6, alpha 40 days,
    a 0.8, b 3): their purchase days and, per customer, the days of all purchases."""
    rng = np.random.default_rng(seed)
    lam, p = rng.gamma(0.6, 1 / 40.0, n), rng.beta(0.8, 3.0, n)
    clock = rng.uniform(0, 180, n)
    ids, days = [np.arange(n)], [np.floor(clock)]
    active = np.ones(n, dtype=bool)
    while active.any():
        idx = np.flatnonzero(active)
        clock[idx] += rng.exponential(1 / lam[idx])
        idx = idx[clock[idx] < 400]
        ids.append(idx)
        days.append(np.floor(clock[idx]))
        # after each repeat purchase the customer drops out with probability p
        active[:] = False
        active[idx[rng.random(len(idx)) >= p[idx]]] = True
    cid, day = np.concatenate(ids), np.concatenate(days)
    ts = np.datetime64(START) + (day * 86400).astype("timedelta64[s]")
    table = pa.table({"user_id": cid, "timestamp": ts.astype("datetime64[us]"),
                      "event": pa.array(["Order Completed"] * len(cid))})
    return table, day


def test_expected_buying_rate_matches_customers_drawn_from_the_model() -> None:
    table, day = bgnbd_purchases(20_000, seed=3)
    wh = Warehouse.duckdb()
    wh.create_table("orders", table)
    config = PropensityConfig(type="propensity", input="orders", window_days=90)
    builder = FeatureBuilder(wh, wh.table("orders"), None, config)
    ctx = RunContext(warehouse=wh, pipeline="p", node="n", run_id="r")
    cid = table["user_id"].to_numpy()
    for at_day in (200, 270):
        at = START + timedelta(days=at_day)
        got = expected_buying_rate(ctx, builder, at, timedelta(days=90), 100_000)
        assert got is not None and got.converged
        known = np.unique(cid[day < at_day])
        bought = np.unique(cid[(day >= at_day) & (day < at_day + 90)])
        actual = np.isin(known, bought).mean()
        assert got.buyers == len(known)
        assert got.rate == pytest.approx(actual, abs=0.012), (at_day, got.rate, actual)
    # Too few buyers to fit: no estimate, the node keeps the validation window's rate.
    wh.create_table("few", table.slice(0, 50))
    few = FeatureBuilder(wh, wh.table("few"), None, config)
    assert expected_buying_rate(ctx, few, START + timedelta(days=300), timedelta(days=90), 10**5) is None
    # Within a row budget: every k-th buyer, the same rate up to sampling noise.
    at = START + timedelta(days=270)
    full = expected_buying_rate(ctx, builder, at, timedelta(days=90), 100_000)
    part = expected_buying_rate(ctx, builder, at, timedelta(days=90), 2_000)
    assert full is not None and part is not None and part.rows <= 2_000 < full.rows
    assert part.buyers == full.buyers and part.rate == pytest.approx(full.rate, abs=0.02)
    # The same to the last digit on every run, however the warehouse's threads group the rows:
    # the probabilities sent follow this rate, and a rerun must not change them.
    again = {expected_buying_rate(ctx, builder, at, timedelta(days=90), 100_000) for _ in range(8)}
    assert again == {full}


def test_logit_shift_sets_the_mean_and_keeps_the_order() -> None:
    rng = np.random.default_rng(0)
    p = np.clip(rng.beta(1, 4, 5000), 1e-4, 1 - 1e-4)
    p[:3] = [0.0, 1.0, 0.5]  # the ends stay finite
    wh = Warehouse.duckdb()
    wh.create_table("s", pa.table({"_cid": np.arange(len(p)), "probability": p}))
    scores = wh.table("s")
    for target in (0.05, 0.2, 0.9):
        d = logit_shift(RunContext(warehouse=wh, pipeline="p", node="n", run_id="r"), scores, target)
        out = wh.to_arrow(scores.select("_cid", q=shifted(scores.probability, d)).order_by("_cid"))
        q = out["q"].to_numpy()
        assert q.mean() == pytest.approx(target, abs=1e-7)
        assert np.all(np.diff(q[np.argsort(p, kind="stable")]) >= 0)  # same order
        assert np.all((q > 0) & (q < 1))
    with pytest.raises(ValueError, match="between 0 and 1"):
        logit_shift(RunContext(warehouse=wh, pipeline="p", node="n", run_id="r"), scores, 1.0)
