"""Node `propensity`: features and labels in the warehouse, validation, scoring, warnings."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from segloop.errors import DataError
from segloop.models.scoring import deciles, percentile_rank, roc_auc, spearman, top_lift
from segloop.operators.base import NodeOutput, RunContext
from segloop.operators.propensity import FeatureBuilder, PropensityConfig, PropensityOperator, snake
from segloop.warehouses import Warehouse

END = datetime(2026, 3, 1)


def synthetic_events(customers: int, days: int = 240, seed: int = 5) -> pa.Table:
    """Customers with a hidden buying rate and lifetime; views are 4x as frequent as orders."""
    rng = np.random.default_rng(seed)
    rate = rng.gamma(2.0, 1 / 40.0, customers)  # orders per day
    start = rng.uniform(0, days * 0.6, customers)
    alive = np.minimum(days, start + rng.exponential(120.0, customers))
    span = np.maximum(alive - start, 0.1)
    rows: dict[str, list] = {"user_id": [], "timestamp": [], "event_text": [], "revenue": []}
    begin = END - timedelta(days=days)
    for event, mult in (("Product Viewed", 4.0), ("Order Completed", 1.0)):
        n = rng.poisson(rate * span * mult)
        cust = np.repeat(np.arange(customers), n)
        t = start[cust] + rng.random(len(cust)) * span[cust]
        rows["user_id"] += [f"c{c}" for c in cust]
        rows["timestamp"] += [begin + timedelta(days=float(x)) for x in t]
        rows["event_text"] += [event] * len(cust)
        rows["revenue"] += (
            list(np.round(rng.gamma(2, 30, len(cust)), 2)) if mult == 1.0 else [None] * len(cust)
        )
    rows["user_id"] += [None] * 50  # anonymous visitors: never scored
    rows["timestamp"] += [begin + timedelta(days=float(x)) for x in rng.uniform(0, days, 50)]
    rows["event_text"] += ["Product Viewed"] * 50
    rows["revenue"] += [None] * 50
    return pa.table(
        {
            "user_id": pa.array(rows["user_id"], pa.string()),
            "timestamp": pa.array(rows["timestamp"], pa.timestamp("us")),
            "event_text": rows["event_text"],
            "event": [snake(e) for e in rows["event_text"]],
            "revenue": pa.array(rows["revenue"], pa.float64()),
        }
    )


@pytest.fixture(scope="module")
def shop() -> Warehouse:
    wh = Warehouse.duckdb()
    wh.create_table("events", synthetic_events(3000))
    wh.create_table("small", synthetic_events(250, seed=9))
    return wh


def run_node(wh: Warehouse, table: str = "events", **keys: object) -> tuple[NodeOutput, RunContext]:
    config = PropensityConfig.model_validate({"type": "propensity", "input": "ev", **keys})
    ctx = RunContext(warehouse=wh, pipeline="p", node="buyers", run_id="r1")
    return PropensityOperator(config).run({"ev": wh.table(table)}, ctx), ctx


def scored(out: NodeOutput, wh: Warehouse) -> pa.Table:
    """The node's output as the engine writes it (a query over its scores, ranked in the warehouse)."""
    assert out.table is not None
    return wh.to_arrow(out.table)


def test_learns_who_will_buy_and_scores_every_known_customer(shop: Warehouse) -> None:
    fetched = shop.rows_fetched
    out, ctx = run_node(shop)
    pulled = shop.rows_fetched - fetched
    m = out.metrics
    assert m["auc"] > 0.7, m
    assert m["quality"] in {"good", "excellent"}
    assert m["lift_top_decile"] > 1.5
    assert m["spend_features"] is True  # from the revenue column of the events
    assert m["validation_positives"] >= 100 and m["validation_negatives"] >= 100
    table = scored(out, shop)
    assert table.column_names == ["user_id", "probability", "percentile"]
    ids = table["user_id"].to_pylist()
    assert None not in ids and len(set(ids)) == len(ids) == m["scored_customers"]
    p = table["probability"].to_numpy()
    pct = table["percentile"].to_numpy()
    assert np.all((p > 0) & (p < 1))
    assert pct.max() == 1.0 and pct.min() == 0.0
    # Calibration can merge neighbouring scores into one probability step; the percentile
    # keeps the model's full order, which never contradicts the probabilities.
    assert pct[p == p.max()].max() == 1.0
    assert np.all(np.diff(p[np.argsort(pct, kind="stable")]) >= 0)
    # Only per-customer rows came to Python: three snapshots plus the event-type list, and
    # the distinct (x, t_x, T) purchase summaries BG/NBD sets the level from (at most one
    # row per buyer at each of two snapshots).
    assert m["base_rate_method"] == "clv" and m["clv_summary_rows"] <= 2 * m["clv_buyers"]
    assert pulled <= 3 * 3000 + m["features"] + m["clv_summary_rows"]
    assert not any("fewer than" in w for w in ctx.warnings)


def test_churn_mode_flips_the_label(shop: Warehouse) -> None:
    perform, _ = run_node(shop)
    churn, _ = run_node(shop, mode="churn")
    assert churn.metrics["validation_positives"] == perform.metrics["validation_negatives"]
    assert churn.metrics["auc"] > 0.7
    rho = spearman(scored(perform, shop)["probability"].to_numpy(),
                   scored(churn, shop)["probability"].to_numpy())
    assert rho < -0.8


def test_event_and_event_text_columns_match_the_same_events(shop: Warehouse) -> None:
    by_text, _ = run_node(shop, event="event_text")
    by_snake, _ = run_node(shop, event="event", target_event="order_completed")
    for key in ("validation_positives", "training_positives", "auc"):
        assert by_text.metrics[key] == by_snake.metrics[key]


def test_few_positives_warn_but_do_not_fail(shop: Warehouse) -> None:
    out, ctx = run_node(shop, table="small")
    assert scored(out, shop).num_rows > 0
    assert any("fewer than 100" in w for w in ctx.warnings)


def test_target_event_that_never_happens_is_a_clear_error(shop: Warehouse) -> None:
    with pytest.raises(DataError, match=r"node `buyers`.*0 positive.*target_event") as error:
        run_node(shop, target_event="Order Complete")
    assert "most frequent events: " in str(error.value) and "order_completed" in str(error.value)  # to pick from


def test_missing_column_names_the_key(shop: Warehouse) -> None:
    with pytest.raises(DataError, match=r"`event: event_name` not found in input `ev`"):
        run_node(shop, event="event_name")


def test_features_and_labels_by_hand() -> None:
    d = datetime(2026, 1, 1)
    events = [
        ("ann", d, "Product Viewed"),
        ("ann", d + timedelta(minutes=10), "Product Viewed"),  # same session
        ("ann", d + timedelta(days=2), "Order Completed"),  # new session
        ("ann", d + timedelta(days=11), "Order Completed"),  # in the label window
        ("bob", d + timedelta(days=1), "Product Viewed"),
        ("bob", d + timedelta(days=15), "Product Viewed"),  # after the window: no label
        ("cy", d + timedelta(days=12), "Order Completed"),  # first seen after snapshot
    ]
    wh = Warehouse.duckdb()
    wh.create_table(
        "ev",
        pa.table(
            {
                "user_id": [e[0] for e in events],
                "timestamp": pa.array([e[1] for e in events], pa.timestamp("us")),
                "event": [e[2] for e in events],
            }
        ),
    )
    orders = pa.table(
        {
            "user_id": ["ann", "ann"],
            "timestamp": pa.array(
                [d + timedelta(days=2), d + timedelta(days=11)], pa.timestamp("us")
            ),
            "revenue": [30.0, 50.0],
        }
    )
    wh.create_table("orders", orders)
    config = PropensityConfig(type="propensity", input="ev", orders="orders", window_days=5)
    builder = FeatureBuilder(wh, wh.table("ev"), wh.table("orders"), config, ["product_viewed"])
    snapshot = d + timedelta(days=10)
    rows = {
        r["_cid"]: r for r in wh.to_arrow(builder.labelled(snapshot, timedelta(days=5))).to_pylist()
    }
    assert set(rows) == {"ann", "bob"}
    ann, bob = rows["ann"], rows["bob"]
    assert (ann["_label"], bob["_label"]) == (1, 0)
    assert ann["events"] == 3 and ann["sessions"] == 2 and ann["active_days"] == 2
    assert ann["target_count"] == 1 and ann["ev0_count"] == 2
    assert ann["days_since_last_event"] == pytest.approx(8.0)
    assert ann["days_since_first_event"] == pytest.approx(10.0)
    assert (
        ann["orders"] == 1
        and ann["spend"] == 30.0
        and ann["days_since_last_order"] == pytest.approx(8.0)
    )
    assert bob["target_count"] == 0 and bob["days_since_last_target"] is None
    assert bob["orders"] == 0 and bob["spend"] == 0.0 and bob["avg_order_value"] is None
    assert config.upstream() == ["ev", "orders"]
    # With an 8-day lookback only ann's order on day 2 (8 days before) counts; bob's view on
    # day 1 falls outside, so bob is not part of that snapshot at all.
    short = PropensityConfig(type="propensity", input="ev", window_days=5, lookback_days=8)
    recent = FeatureBuilder(wh, wh.table("ev"), None, short).features(snapshot)
    rows = {r["_cid"]: r for r in wh.to_arrow(recent).to_pylist()}
    assert set(rows) == {"ann"} and rows["ann"]["events"] == 1


def test_unknown_mode_and_bad_window_are_rejected() -> None:
    with pytest.raises(ValidationError, match="mode"):
        PropensityConfig.model_validate({"type": "propensity", "input": "ev", "mode": "buy"})
    with pytest.raises(ValidationError, match="window_days"):
        PropensityConfig.model_validate({"type": "propensity", "input": "ev", "window_days": 0})


def test_cutoff_too_late_warns_that_labels_are_incomplete(shop: Warehouse) -> None:
    _, ctx = run_node(shop, cutoff=END - timedelta(days=10))
    assert any("validation labels are incomplete" in w for w in ctx.warnings)


def test_empty_input_is_a_clear_error() -> None:
    wh = Warehouse.duckdb()
    wh.create_table("empty", synthetic_events(10).slice(0, 0))
    with pytest.raises(DataError, match="node `buyers`: the input has no events"):
        run_node(wh, table="empty")


@pytest.mark.postgres
def test_same_features_and_quality_on_postgres(
    request: pytest.FixtureRequest, shop: Warehouse
) -> None:
    from tests.operators.test_clv import pg_or_skip

    pg = pg_or_skip(request)
    pg.create_table("events", synthetic_events(3000))
    on_pg, _ = run_node(pg)
    on_duck, _ = run_node(shop)
    for key in ("training_positives", "validation_positives", "scored_customers", "event_types"):
        assert on_pg.metrics[key] == on_duck.metrics[key]
    assert on_pg.metrics["auc"] == pytest.approx(on_duck.metrics["auc"], abs=1e-9)


def test_too_little_history_names_what_is_needed(shop: Warehouse) -> None:
    # 240 days of events: a 200-day window leaves nothing before the training snapshot.
    with pytest.raises(DataError, match=r"needs more than 2 x window_days \(400 days\)"):
        run_node(shop, window_days=200)


def test_scoring_helpers_match_their_definitions() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(2)
    y = rng.random(500) < 0.3
    s = np.round(rng.random(500) + y * 0.3, 1)  # many ties
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert percentile_rank([3.0, 1.0, 2.0, 2.0]).tolist() == [1.0, 0.0, 1 / 3, 1 / 3]
    assert top_lift([1, 0, 0, 0, 1, 0, 0, 0, 0, 0], [9, 1, 1, 1, 8, 1, 1, 1, 1, 1], 0.2) == 5.0
    table = deciles(np.arange(20.0), np.arange(20.0) >= 18)
    assert table["customers"] == [2] * 10 and table["mean_outcome"][0] == 1.0
    assert sum(table["total_outcome"]) == 2.0
    assert spearman([1, 2, 3, np.nan], [1, 2, 3, 0]) == pytest.approx(1.0)


def test_an_id_column_given_as_event_is_rejected(
    shop: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FeatureBuilder, "MAX_EVENT_NAMES", 100)
    with pytest.raises(DataError, match="column `revenue` has more than 100 distinct values"):
        run_node(shop, event="revenue")


def test_quality_card_grades_and_calibration_figures(shop: Warehouse) -> None:
    from segloop.models.calibration import brier, expected_calibration_error

    out, _ = run_node(shop)
    m = out.metrics
    assert m["calibration"] == "isotonic"
    assert m["grade"] in {"Poor", "Fair", "Good", "Excellent"}
    assert m["grade"] == {0: "Poor", 1: "Fair", 2: "Good", 3: "Excellent"}[
        sum(m["auc"] >= b for b in (0.6, 0.7, 0.8))
    ]
    for key in ("log_loss", "brier", "ece", "ece_uncalibrated", "log_loss_uncalibrated"):
        assert np.isfinite(m[key]), key
    assert 0 < m["brier"] < m["base_rate"] * (1 - m["base_rate"])  # beats always saying the base rate
    # The reliability table is the diagram behind `ece`: same customers, same gap.
    rel = out.extra["reliability"].to_pylist()
    assert sum(r["customers"] for r in rel) == m["validation_customers"]
    gap = sum(r["customers"] * abs(r["mean_probability"] - r["actual_rate"]) for r in rel)
    assert gap / m["validation_customers"] == pytest.approx(m["ece"])
    assert all(0 <= r["bin_from"] < r["bin_to"] <= 1 for r in rel)
    # The functions themselves, on numbers checked by hand.
    assert brier([1, 0], [0.8, 0.4]) == pytest.approx((0.04 + 0.16) / 2)
    assert expected_calibration_error([1, 0, 0, 0], [0.25, 0.25, 0.25, 0.25]) == 0.0
    assert expected_calibration_error([1, 1], [0.55, 0.95]) == pytest.approx((0.45 + 0.05) / 2)


def test_platt_calibration_keeps_every_score_distinct_and_none_is_the_raw_model(shop: Warehouse) -> None:
    platt, _ = run_node(shop, calibration="platt")
    raw, _ = run_node(shop, calibration="none")
    platt_table, raw_table = scored(platt, shop), scored(raw, shop)
    p = platt_table["probability"].to_numpy()
    assert np.all((p > 0) & (p < 1))
    np.testing.assert_array_equal(platt_table["percentile"].to_numpy(), percentile_rank(p))
    assert raw.metrics["calibration"] == "none"
    assert raw.metrics["ece"] == raw.metrics["ece_uncalibrated"]
    np.testing.assert_array_equal(raw_table["percentile"].to_numpy(),
                                  percentile_rank(raw_table["probability"].to_numpy()))
    with pytest.raises(ValidationError, match="calibration"):
        PropensityConfig.model_validate({"type": "propensity", "input": "ev", "calibration": "magic"})
