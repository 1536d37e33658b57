"""Node `clv`: warehouse summary, CDNOW reproduction from raw transactions, behaviour."""

from __future__ import annotations

import csv
import importlib.util
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from segloop.errors import DataError
from segloop.operators.base import NodeOutput, RunContext
from segloop.operators.clv import ClvConfig, ClvOperator
from segloop.warehouses import Warehouse
from tests.requirements import missing


def lifetimes_datasets() -> Path:
    spec = importlib.util.find_spec("lifetimes")
    if spec is None or not spec.submodule_search_locations:
        missing("lifetimes (dev extra) is not installed: pip install -e '.[dev]'")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets"


def cdnow_transactions() -> pa.Table:
    """CDNOW_sample.txt: master id, sample id (1..2357), yyyymmdd, CDs, dollars."""
    raw = np.loadtxt(lifetimes_datasets() / "CDNOW_sample.txt", dtype=str)
    days = np.array([f"{d[:4]}-{d[4:6]}-{d[6:]}" for d in raw[:, 2]], dtype="datetime64[us]")
    return pa.table(
        {"customer": raw[:, 1].astype(np.int64), "ts": days, "dollars": raw[:, 4].astype(float)}
    )


@pytest.fixture(scope="module")
def cdnow_wh() -> Warehouse:
    wh = Warehouse.duckdb()
    wh.create_table("cdnow", cdnow_transactions())
    return wh


def run_clv(wh: Warehouse, table: str = "cdnow", **keys: object) -> tuple[NodeOutput, RunContext]:
    config = ClvConfig.model_validate({"type": "clv", "input": "tx", **keys})
    ctx = RunContext(warehouse=wh, pipeline="p", node="ltv", run_id="r1")
    return ClvOperator(config).run({"tx": wh.table(table)}, ctx), ctx


CDNOW_KEYS = dict(
    customer_id="customer",
    timestamp="ts",
    amount="dollars",
    as_of="1997-09-30",
    time_unit="weeks",
    horizon="39 weeks",
    validate=False,
)


def test_cdnow_from_raw_transactions_reproduces_the_papers(cdnow_wh: Warehouse) -> None:
    fetched_before = cdnow_wh.rows_fetched
    out, ctx = run_clv(cdnow_wh, **CDNOW_KEYS)
    table = out.table
    assert isinstance(table, pa.Table)
    assert table.num_rows == 2357
    # Only one row per customer came to Python (6,919 transactions stayed in the warehouse).
    assert cdnow_wh.rows_fetched - fetched_before == 2357
    m = out.metrics
    published = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
    for name, value in published.items():
        assert abs(m["bgnbd"][name] - value) <= 0.005 * value, name
    assert abs(m["bgnbd_log_likelihood"] - (-9582.4)) <= 0.1
    assert m["bgnbd_converged"] is True
    for name, value in {"p": 6.25, "q": 3.74, "gamma": 15.44}.items():
        assert abs(m["gamma_gamma"][name] - value) <= 0.005 * value, name
    first = table.filter(pa.compute.equal(table["customer"], 1)).to_pylist()[0]
    assert first["frequency"] == 2
    assert round(first["recency"], 2) == 30.43
    assert round(first["tenure"], 2) == 38.86
    assert round(first["expected_purchases"], 3) == 1.226
    assert ctx.warnings == []


def test_warehouse_summary_matches_the_published_cdnow_summary(cdnow_wh: Warehouse) -> None:
    out, _ = run_clv(cdnow_wh, **CDNOW_KEYS)
    ours = {row["customer"]: row for row in out.table.to_pylist()}
    path = lifetimes_datasets() / "cdnow_customers_summary_with_transactions.csv"
    with path.open() as fh:
        published = list(csv.DictReader(fh))
    assert len(published) == len(ours)
    for row in published:
        mine = ours[int(row["ID"])]
        assert mine["frequency"] == int(row["x"])
        assert abs(mine["recency"] - float(row["t_x"])) <= 0.0051
        assert abs(mine["tenure"] - float(row["T"])) <= 0.0051
        assert abs(mine["monetary_value"] - float(row["zbar"])) <= 0.0051


def test_output_columns_and_percentiles(cdnow_wh: Warehouse) -> None:
    out, _ = run_clv(cdnow_wh, **CDNOW_KEYS)
    t = out.table
    assert t.column_names == [
        "customer",
        "frequency",
        "recency",
        "tenure",
        "monetary_value",
        "p_alive",
        "expected_purchases",
        "expected_spend",
        "predicted_clv",
        "clv_percentile",
        "p_no_purchase",
        "purchases_p10",
        "purchases_p50",
        "purchases_p90",
        "value_p10",
        "value_p50",
        "value_p90",
    ]
    clv = t["predicted_clv"].to_numpy()
    pct = t["clv_percentile"].to_numpy()
    p_alive = t["p_alive"].to_numpy()
    assert np.all((p_alive > 0) & (p_alive <= 1))
    assert np.all(clv >= 0)
    assert pct.min() == 0.0 and pct.max() == 1.0
    assert pct[np.argmax(clv)] == 1.0
    # Higher value, higher percentile (ties share one).
    order = np.argsort(clv)
    assert np.all(np.diff(pct[order]) >= 0)
    np.testing.assert_allclose(
        clv, t["expected_purchases"].to_numpy() * t["expected_spend"].to_numpy()
    )


def test_days_and_weeks_give_the_same_forecast(cdnow_wh: Warehouse) -> None:
    keys = {**CDNOW_KEYS, "horizon": "91 days"}
    weeks, _ = run_clv(cdnow_wh, **keys)
    days, _ = run_clv(cdnow_wh, **{**keys, "time_unit": "days"})
    np.testing.assert_allclose(
        days.table["recency"].to_numpy(), weeks.table["recency"].to_numpy() * 7
    )
    np.testing.assert_allclose(
        days.metrics["bgnbd"]["alpha"], weeks.metrics["bgnbd"]["alpha"] * 7, rtol=1e-4
    )
    np.testing.assert_allclose(
        days.table["expected_purchases"].to_numpy(),
        weeks.table["expected_purchases"].to_numpy(),
        rtol=1e-4,
    )
    assert weeks.metrics["horizon"] == 13.0 and days.metrics["horizon"] == 91.0


def test_discounting_lowers_clv_and_longer_horizons_raise_it(cdnow_wh: Warehouse) -> None:
    base, _ = run_clv(cdnow_wh, **CDNOW_KEYS)
    discounted, _ = run_clv(cdnow_wh, **{**CDNOW_KEYS, "discount_rate": 0.15})
    longer, _ = run_clv(cdnow_wh, **{**CDNOW_KEYS, "horizon": "2 years"})
    b = base.table["predicted_clv"].to_numpy()
    assert np.all(discounted.table["predicted_clv"].to_numpy() < b)
    assert np.all(longer.table["predicted_clv"].to_numpy() > b)


def small_shop(wh: Warehouse) -> None:
    d = datetime(2026, 1, 1)
    rows = [
        ("ann", d, 10.0),
        ("ann", d + timedelta(hours=3), 5.0),  # same day: one purchase worth 15
        ("ann", d + timedelta(days=10), 20.0),
        ("ann", d + timedelta(days=30, hours=23), 40.0),
        ("ann", d + timedelta(days=45), 1000.0),  # after as_of: ignored
        ("bob", d + timedelta(days=5), 7.0),
        ("cy", d + timedelta(days=40), 9.0),  # first purchase after as_of: not scored
        (None, d, 3.0),
        ("dee", None, 3.0),
    ]
    customers = [f"c{i}" for i in range(40)]
    rng = np.random.default_rng(0)
    for i, c in enumerate(customers):
        for k in range(1 + i % 4):
            rows.append((c, d + timedelta(days=int(rng.integers(0, 30)), hours=k), float(5 + i)))
    wh.create_table(
        "shop",
        pa.table(
            {
                "user_id": [r[0] for r in rows],
                "timestamp": pa.array([r[1] for r in rows], pa.timestamp("us")),
                "revenue": [r[2] for r in rows],
            }
        ),
    )


def test_purchases_count_distinct_days_until_as_of() -> None:
    wh = Warehouse.duckdb()
    small_shop(wh)
    out, ctx = run_clv(wh, table="shop", as_of=date(2026, 1, 31), validate=False)
    rows = {r["user_id"]: r for r in out.table.to_pylist()}
    assert "cy" not in rows and None not in rows and "dee" not in rows
    ann = rows["ann"]
    assert ann["frequency"] == 2  # days 0 (two orders), 10, 30
    assert ann["recency"] == 30.0
    assert ann["tenure"] == 30.0
    assert ann["monetary_value"] == 30.0  # (20 + 40) / 2; day-0 orders are the first purchase
    assert rows["bob"]["frequency"] == 0 and rows["bob"]["monetary_value"] == 0.0
    assert rows["bob"]["p_alive"] == 1.0  # BG/NBD: no repeat purchase, no evidence of dropout
    assert out.metrics["ignored_rows"] == 2
    assert any("2 rows" in w for w in ctx.warnings)
    assert any("fewer than 100" in w for w in ctx.warnings)
    # 42 customers push the plain MLE to infinite parameters: refitted with a light penalty.
    assert out.metrics["bgnbd_penalizer"] == 0.001 and out.metrics["bgnbd_converged"]
    assert any("refitted with `penalizer: 0.001`" in w for w in ctx.warnings)
    assert out.table["predicted_clv"].null_count == 0


def test_missing_column_names_node_and_key() -> None:
    wh = Warehouse.duckdb()
    small_shop(wh)
    with pytest.raises(DataError, match=r"node `ltv`: `amount: price` not found in input `tx`"):
        run_clv(wh, table="shop", amount="price")


def test_no_purchases_before_as_of_is_a_clear_error() -> None:
    wh = Warehouse.duckdb()
    small_shop(wh)
    with pytest.raises(DataError, match="no purchases on or before 2025-01-01"):
        run_clv(wh, table="shop", as_of="2025-01-01")


@pytest.mark.parametrize("horizon", ["soon", "-3 days", "0", "12 parsecs"])
def test_unreadable_horizon_is_rejected(horizon: str) -> None:
    with pytest.raises(ValidationError, match="horizon"):
        ClvConfig.model_validate({"type": "clv", "input": "tx", "horizon": horizon})


def test_unknown_keys_are_rejected() -> None:
    with pytest.raises(ValidationError, match="horizn"):
        ClvConfig.model_validate({"type": "clv", "input": "tx", "horizn": "3 days"})


def test_empty_input_is_a_clear_error() -> None:
    wh = Warehouse.duckdb()
    wh.create_table(
        "empty",
        pa.table(
            {
                "user_id": pa.array([], pa.string()),
                "timestamp": pa.array([], pa.timestamp("us")),
                "revenue": pa.array([], pa.float64()),
            }
        ),
    )
    with pytest.raises(DataError, match="node `ltv`: column `timestamp` has no timestamps"):
        run_clv(wh, table="empty")


def pg_or_skip(request: pytest.FixtureRequest) -> Warehouse:
    """The throwaway PostgreSQL warehouse of tests/fixtures_pg.py, or skip."""
    import os

    try:
        return request.getfixturevalue("pg_warehouse")
    except pytest.FixtureLookupError:
        if os.environ.get("SEGLOOP_REQUIRE_PG") == "1":
            pytest.fail("SEGLOOP_REQUIRE_PG=1 but the pg_warehouse fixture is missing")
        pytest.skip("the pg_warehouse fixture (tests/fixtures_pg.py) is not available")


@pytest.mark.postgres
def test_same_summary_and_fit_on_postgres(
    request: pytest.FixtureRequest, cdnow_wh: Warehouse
) -> None:
    pg = pg_or_skip(request)
    pg.create_table("cdnow", cdnow_transactions())
    on_pg, _ = run_clv(pg, **{**CDNOW_KEYS, "validate": True})
    on_duck, _ = run_clv(cdnow_wh, **{**CDNOW_KEYS, "validate": True})
    for name, value in on_duck.metrics["bgnbd"].items():
        assert on_pg.metrics["bgnbd"][name] == pytest.approx(value, rel=1e-6)
    pg_rows = sorted(on_pg.table.to_pylist(), key=lambda r: r["customer"])
    duck_rows = sorted(on_duck.table.to_pylist(), key=lambda r: r["customer"])
    assert len(pg_rows) == len(duck_rows) == 2357
    for a, b in zip(pg_rows, duck_rows, strict=True):
        assert a["frequency"] == b["frequency"]
        assert a["predicted_clv"] == pytest.approx(b["predicted_clv"], rel=1e-6)


def test_no_repeat_purchases_is_a_clear_error() -> None:
    wh = Warehouse.duckdb()
    day = datetime(2026, 1, 1)
    wh.create_table(
        "once",
        pa.table(
            {
                "user_id": [f"c{i}" for i in range(20)],
                "timestamp": pa.array(
                    [day + timedelta(days=i) for i in range(20)], pa.timestamp("us")
                ),
                "revenue": [10.0] * 20,
            }
        ),
    )
    with pytest.raises(DataError, match="none of the 20 customers bought again"):
        run_clv(wh, table="once")
