"""The `lift` node: conversion of treatment vs holdout within N days of assignment, with a 95% CI."""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from segloop.operators.lift import lift_metrics, wilson
from segloop.pipeline import Pipeline, RunResult
from segloop.segment.send.holdout import HOLDOUT, group_of, threshold_hex
from segloop.warehouses import DuckDBConfig, Warehouse
from tests.operators.segment_fixtures import run_shop, to_segment_pipeline, write_key, write_source  # noqa: F401
from tests.segment.send.fake_segment import FakeSegment
from tests.test_alerts import alerts_block, receiver  # noqa: F401 - fixture

PIPELINE = to_segment_pipeline("Win Back Offer", "[score]") + """\
    holdout: {percent: 10, salt: SALT}
  orders:
    type: sql
    sql: select user_id, "timestamp", event_text from src.tracks
  lift:
    type: lift
    input: orders
    holdout_of: to_segment
    event: Order Completed
    window_days: 30
"""
ASSIGNED = datetime(2026, 1, 1)
TRUE_LIFT = 0.05  # the planted effect: 20% of the holdout converts, 25% of the treatment
BASE_RATE = 0.20


def pipeline_text(salt: str) -> str:
    return PIPELINE.replace("SALT", salt)


def synthetic(customers: int, seed: int, salt: str) -> tuple[pa.Table, pa.Table]:
    """Customers (for the Segment node) and their events, with a planted +5 point effect.

    Each customer's group is the node's own hash; a treatment customer converts with
    probability 0.25, a holdout one with 0.20 (an Order Completed inside the 30-day window).
    Decoys that must not count: orders before assignment or after the window, and other
    events inside it.
    """
    rng = np.random.default_rng(seed)
    names_list = [f"c{seed}-{i}" for i in range(customers)]
    ids = np.array(names_list)
    threshold = threshold_hex(10)  # group_of's rule, inlined: 200,000 calls per seed
    treated = np.array([hashlib.md5(f"{salt}:{c}".encode()).hexdigest()[:8] >= threshold for c in names_list])
    converts = np.flatnonzero(rng.random(customers) < BASE_RATE + TRUE_LIFT * treated)
    start = np.datetime64(ASSIGNED, "s")
    day = 86400
    decoys = rng.choice(customers, customers // 5, replace=False)
    kinds = rng.integers(0, 3, decoys.size)
    decoy_offsets = np.select(
        [kinds == 0, kinds == 1],
        [-rng.integers(1, 60, decoys.size) * day, 30 * day + rng.integers(0, 30 * day, decoys.size)],
        rng.integers(0, 29, decoys.size) * day,
    )
    offsets = np.concatenate([rng.integers(0, 30 * day, converts.size), decoy_offsets])
    names = np.concatenate([np.full(converts.size, "Order Completed"),
                            np.where(kinds == 2, "Product Viewed", "Order Completed")])
    scores = pa.table({"user_id": ids, "score": rng.random(customers).round(3)})
    tracks = pa.table({
        "user_id": pa.array(ids[np.concatenate([converts, decoys])], pa.string()),
        "timestamp": pa.array(start + offsets.astype("timedelta64[s]"), pa.timestamp("us")),
        "event_text": pa.array(names, pa.string()),
    })
    return scores, tracks


def treated_ids(scores: pa.Table, salt: str) -> list[str]:
    threshold = threshold_hex(10)
    return [c for c in scores["user_id"].to_pylist() if hashlib.md5(f"{salt}:{c}".encode()).hexdigest()[:8] >= threshold]


def assign_in_the_past(root: Path) -> None:
    """The customers were assigned on 2026-01-01 (the run happened 'then')."""
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        wh.raw_sql(f"UPDATE {wh.qualified('shop__to_segment__holdout')} SET first_assigned = TIMESTAMP '2026-01-01'")


def lift_of_assigned_groups(root: Path, scores: pa.Table, tracks: pa.Table, salt: str) -> RunResult:
    """Nodes `orders` and `lift` run on groups assigned on ASSIGNED, without sending.

    Sending every treatment message adds nothing to a lift figure, so the groups are
    assigned by the Segment node's own code (``Holdout.assign``, what its run calls).
    """
    from segloop.segment.send.holdout import Holdout

    write_source(root, scores, tracks=tracks)
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        wh.drop_table("shop__to_segment__holdout")
        keys = wh.table("scores", schema="src").select(_key="user_id")
        Holdout(10, salt, "shop__to_segment__holdout", "to_segment").assign(wh, keys, "r", ASSIGNED)
    pipeline = Pipeline.load(root / "pipelines" / "shop.yml")
    assert pipeline.run(node="orders", options={"report": False}).ok
    return pipeline.run(node="lift", options={"report": False})


def test_lift_after_a_real_send(make_workspace) -> None:
    """The whole loop: the Segment node sends the treatment and records groups; the lift
    node finds the planted effect in the orders that followed."""
    salt = "loop"
    root = make_workspace({"shop": pipeline_text(salt)})
    scores, tracks = synthetic(20_000, seed=7, salt=salt)
    write_source(root, scores, tracks=tracks.slice(0, 0))
    fake = FakeSegment()
    first = run_shop(root, fake)
    # Just assigned: no customer has had 30 days yet, and the node says so.
    lift = first.node("lift")
    assert lift.status == "success", lift.error
    assert lift.metrics["customers_window_open"] == 20_000 and lift.metrics["lift"] is None
    assert any("30 days since assignment" in w for w in lift.warnings)
    held = {c for c in scores["user_id"].to_pylist() if group_of(c, salt, 10) == HOLDOUT}
    assert held == set(scores["user_id"].to_pylist()) - set(treated_ids(scores, salt))  # the inlined rule
    assert not held & {m["userId"] for m in fake.delivered()}
    assign_in_the_past(root)
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        wh.create_table("tracks", tracks, schema="src")
    second = run_shop(root, fake)
    m = second.node("lift").metrics
    assert second.node("lift").status == "success", second.node("lift").error
    assert m["holdout_customers"] == len(held) and m["treatment_customers"] == 20_000 - len(held)
    assert m["customers_window_open"] == 0
    assert m["lift_ci_low"] < TRUE_LIFT < m["lift_ci_high"] and m["significant"] is True
    assert m["ci_method"].startswith("Newcombe")
    report = second.report.read_text() if second.report else ""
    assert "lift" in report and "holdout" in report
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        groups = {r["group_name"]: r for r in wh.rows(wh.table("shop__lift"))}
    assert groups["holdout"]["customers"] == len(held)
    assert groups["treatment"]["converted"] == m["treatment_converted"]


@pytest.mark.slow
def test_planted_effect_is_found_in_20_seeds(make_workspace) -> None:
    """+5 points planted: the estimate is within 1.5 points in every seed, and the 95%
    interval covers the truth in at least 18 of 20.

    Sized so the first holds by design: 200,000 customers, 10% held out, gives a standard
    error of sqrt(.2*.8/20,000 + .25*.75/180,000) = 0.30 points, so 1.5 points is five
    standard errors (a miss in 20 seeds has a chance of about 1 in 100,000). The seeds are
    fixed, so the test is deterministic. Sending 180,000 messages per seed adds nothing
    here, so the groups are assigned by the Segment node's own code (``Holdout.assign``,
    what its run calls) and the `orders` and `lift` nodes run as in a pipeline run.
    """
    root = make_workspace({"shop": pipeline_text("unused")})
    estimates, covered = [], 0
    for seed in range(20):
        salt = f"seed-{seed}"
        scores, tracks = synthetic(200_000, seed=seed, salt=salt)
        result = lift_of_assigned_groups(root, scores, tracks, salt)
        m = result.node("lift").metrics
        assert result.ok, result.node("lift").error
        assert m["treatment_customers"] + m["holdout_customers"] == 200_000
        estimates.append(m["lift"])
        covered += m["lift_ci_low"] <= TRUE_LIFT <= m["lift_ci_high"]
    assert all(abs(e - TRUE_LIFT) <= 0.015 for e in estimates), estimates
    assert covered >= 18, (covered, estimates)


def test_newcombe_interval_against_published_example() -> None:
    """Newcombe (1998), Table II, example (a): 56/70 vs 48/80 -> difference 0.2000,
    95% interval 0.0524 to 0.3339 (method 10)."""
    m = lift_metrics(56, 70, 48, 80)
    assert m["lift"] == pytest.approx(0.2, abs=1e-6)
    assert m["lift_ci_low"] == pytest.approx(0.0524, abs=1e-4)
    assert m["lift_ci_high"] == pytest.approx(0.3339, abs=1e-4)
    low, high = wilson(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)  # Wilson's 0/10


def test_lift_without_a_holdout_says_what_to_do(make_workspace) -> None:
    text = pipeline_text("s").replace("    holdout: {percent: 10, salt: s}\n", "")
    root = make_workspace({"shop": text})
    scores, tracks = synthetic(100, seed=1, salt="s")
    write_source(root, scores, tracks=tracks)
    result = run_shop(root, FakeSegment())
    error = result.node("lift").error or ""
    assert "has no `holdout:`" in error and "to_segment" in error


@pytest.mark.postgres
def test_same_lift_on_postgres_and_duckdb(tmp_path: Path, pg_cluster, pg_database: str) -> None:
    """Groups, windows and counts are SQL in the warehouse: both give the same figures."""
    salt = "engines"
    scores, tracks = synthetic(5_000, seed=11, salt=salt)
    figures = {}
    for label, yml in (("postgres", pg_cluster.workspace_yml(pg_database, "default")),
                       ("duckdb", "warehouses:\n  default:\n    type: duckdb\n")):
        root = tmp_path / label
        (root / "pipelines").mkdir(parents=True)
        (root / "segloop.yml").write_text(yml)
        (root / "pipelines" / "shop.yml").write_text(pipeline_text(salt))
        pipeline = Pipeline.load(root / "pipelines" / "shop.yml")
        with pipeline.connect() as wh:
            wh.create_table("scores", scores, schema="src")
            wh.create_table("tracks", tracks, schema="src")
        assert pipeline.run(options={"segment_transport": FakeSegment(), "report": False}).ok
        with pipeline.connect() as wh:
            wh.raw_sql(f"UPDATE {wh.qualified('shop__to_segment__holdout')} SET first_assigned = TIMESTAMP '2026-01-01'")
        result = pipeline.run(node="lift", options={"report": False})
        assert result.ok, result.node("lift").error
        m = result.node("lift").metrics
        figures[label] = {k: m[k] for k in ("treatment_customers", "treatment_converted", "holdout_customers",
                                            "holdout_converted", "lift", "lift_ci_low", "lift_ci_high")}
    assert figures["postgres"] == figures["duckdb"]
    assert figures["duckdb"]["holdout_customers"] == sum(
        group_of(c, salt, 10) == HOLDOUT for c in scores["user_id"].to_pylist())


def test_an_ended_holdout_is_still_measured_with_a_warning(make_workspace) -> None:
    salt = "ended"
    root = make_workspace({"shop": pipeline_text(salt)})
    scores, tracks = synthetic(2_000, seed=3, salt=salt)
    write_source(root, scores, tracks=tracks)
    fake = FakeSegment()
    assert run_shop(root, fake).ok
    assign_in_the_past(root)
    (root / "pipelines" / "shop.yml").write_text(pipeline_text(salt).replace(f"    holdout: {{percent: 10, salt: {salt}}}\n", ""))
    result = run_shop(root, fake)
    lift = result.node("lift")
    assert lift.status == "success", lift.error
    assert lift.metrics["holdout_customers"] > 0 and lift.metrics["lift"] is not None
    assert any("no `holdout:` any more" in w for w in lift.warnings)
    # The holdout ended: its customers are sent now.
    held = {c for c in scores["user_id"].to_pylist() if group_of(c, salt, 10) == HOLDOUT}
    assert held <= {m["userId"] for m in fake.delivered()}


def test_validate_names_a_misspelt_holdout_of(make_workspace) -> None:
    from segloop.errors import ConfigError

    root = make_workspace({"shop": pipeline_text("s").replace("holdout_of: to_segment", "holdout_of: to_segmnt")})
    with pytest.raises(ConfigError) as caught:
        Pipeline.load(root / "pipelines" / "shop.yml")
    text = str(caught.value)
    assert "`holdout_of: to_segmnt` is not a node of this pipeline" in text and "shop.yml:21:" in text


def test_event_name_matches_segments_snake_cased_event_column(make_workspace) -> None:
    """`event: Order Completed` over a table with only Segment's `event` column
    (`order_completed`) counts the same customers as over `event_text`."""
    salt = "snake"
    snake_sql = 'select user_id, "timestamp", lower(replace(event_text, \' \', \'_\')) as event from src.tracks'
    figures = []
    for sql in ('select user_id, "timestamp", event_text from src.tracks', snake_sql):
        root = make_workspace({"shop": pipeline_text(salt).replace(
            'select user_id, "timestamp", event_text from src.tracks', sql)})
        scores, tracks = synthetic(2_000, seed=5, salt=salt)
        result = lift_of_assigned_groups(root, scores, tracks, salt)
        assert result.ok, result.node("lift").error
        m = result.node("lift").metrics
        figures.append((m["treatment_converted"], m["holdout_converted"]))
    assert figures[0] == figures[1] and figures[0][0] > 0


ROLLOUT = """\
  rollout:                 # everyone gets the offer, once the holdout showed it works
    type: sql
    input: lift
    sql: select s.user_id, s.score from src.scores s cross join (select count(*) as n from lift) l
  rollout_to_segment:
    type: segment
    input: rollout
    write_key: ${SEGLOOP_TEST_WRITE_KEY}
    call: track
    event: Offer Rolled Out
    customer_id: user_id
    properties: [score]
"""


def gated_lift(salt: str, require: str) -> str:
    return pipeline_text(salt) + f"    require: {require}\n" + ROLLOUT


@pytest.mark.parametrize(("require", "message"), [
    ("{lift: 0.1}", "`lift` is 0.0"),  # the planted +5 points: below a 10-point minimum
    ("{lift_ci_low: 0.06}", "`lift_ci_low` is 0.0"),  # the interval's lower bound
    ("{p_value: 1.0e-12}", "`p_value` is "),  # a maximum
])
def test_a_lift_gate_that_misses_stops_the_rollout_and_alerts(
    make_workspace, receiver, require: str, message: str  # noqa: F811
) -> None:
    salt = "gate"
    root = make_workspace({"shop": gated_lift(salt, require) + alerts_block()})
    scores, tracks = synthetic(20_000, seed=11, salt=salt)
    write_source(root, scores, tracks=tracks.slice(0, 0))
    fake = FakeSegment()
    run_shop(root, fake)
    receiver.requests.clear()  # the first run: windows open, the gate cannot pass (below)
    assign_in_the_past(root)
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        wh.create_table("tracks", tracks, schema="src")
    fake = FakeSegment()
    result = run_shop(root, fake)
    node = result.node("lift")
    assert not result.ok and node.status == "failed" and node.metrics["gate"] == "failed"
    metric, bound = require.strip("{}").split(": ")
    value = node.metrics[metric]
    assert f"`{metric}` is {value:.4g}, {'above the maximum' if metric == 'p_value' else 'below the minimum'} {float(bound):g}" in (node.error or "")
    assert message in (node.error or "")
    assert result.node("rollout").status == "skipped"
    assert result.node("rollout_to_segment").status == "skipped"
    assert not any(m.get("event") == "Offer Rolled Out" for m in fake.delivered())
    (text,) = receiver.texts()
    assert "node `lift`" in text and metric in text and f"{float(bound):g}" in text
    with Warehouse.connect(DuckDBConfig(), root) as wh:  # kept for inspection
        assert {r["group_name"] for r in wh.rows(wh.table("shop__lift"))} == {"treatment", "holdout"}


def test_a_lift_gate_that_holds_lets_the_rollout_through(make_workspace, receiver) -> None:  # noqa: F811
    salt = "gate"
    root = make_workspace({"shop": gated_lift(salt, "{lift_ci_low: 0.0, lift: 0.03}") + alerts_block()})
    scores, tracks = synthetic(20_000, seed=11, salt=salt)
    write_source(root, scores, tracks=tracks.slice(0, 0))
    fake = FakeSegment()
    first = run_shop(root, fake)
    # Just assigned: nothing measured yet, so a gate on the lift cannot pass, and says why.
    assert first.node("lift").status == "failed"
    assert "`lift` was not computed" in (first.node("lift").error or "")
    assert "20,000 customers are still within their 30 days" in (first.node("lift").error or "")
    assert first.node("rollout_to_segment").status == "skipped"
    assign_in_the_past(root)
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        wh.create_table("tracks", tracks, schema="src")
    fake = FakeSegment()
    result = run_shop(root, fake)
    node = result.node("lift")
    assert result.ok and node.metrics["gate"] == "passed" and node.metrics["lift_ci_low"] > 0
    rolled = [m for m in fake.delivered() if m.get("event") == "Offer Rolled Out"]
    assert len(rolled) == 20_000


def test_a_lift_gate_on_a_metric_lift_does_not_have_is_a_config_error() -> None:
    from segloop.config import parse_pipeline
    from segloop.errors import ConfigErrors

    parse_pipeline(gated_lift("s", "{lift_ci_low: 0}"), "p.yml")
    with pytest.raises(ConfigErrors, match="`auc` is not a metric of this node type"):
        parse_pipeline(gated_lift("s", "{auc: 0.7}"), "p.yml")
