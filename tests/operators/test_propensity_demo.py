"""Predictions on the demo shop: checked against what customers actually did next.

The nodes only see data up to a cut; the test then looks at the following window in the
full data (which the nodes never saw) and measures how well they ranked customers.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest

from segloop.demo import write_demo_data
from segloop.models.scoring import roc_auc, spearman
from segloop.operators.base import RunContext
from segloop.operators.clv import ClvConfig, ClvOperator
from segloop.operators.propensity import PropensityConfig, PropensityOperator
from segloop.pipeline import Pipeline
from segloop.store import RunStore
from segloop.warehouses import DuckDBConfig, Warehouse
from tests.segment.send.fake_segment import FakeSegment

CUSTOMERS = 4000


@pytest.fixture(scope="module")
def demo() -> tuple[Warehouse, datetime]:
    wh = Warehouse.duckdb()
    write_demo_data(wh, customers=CUSTOMERS)
    latest = wh.table("tracks", schema="demo_shop").timestamp.max().to_pyarrow().as_py()
    return wh, latest


def before(wh: Warehouse, table: str, cut: datetime) -> object:
    t = wh.table(table, schema="demo_shop")
    return t.filter(t.user_id.notnull() & (t.timestamp < cut))


def actual_by_user(wh: Warehouse, start: datetime, stop: datetime) -> dict[str, float]:
    o = wh.table("order_completed", schema="demo_shop")
    after = o.filter(o.user_id.notnull() & (o.timestamp >= start) & (o.timestamp < stop))
    rows = after.group_by("user_id").aggregate(spend=after.revenue.sum()).to_pyarrow().to_pylist()
    return {r["user_id"]: r["spend"] for r in rows}


def test_purchase_propensity_beats_recency_on_the_next_30_days(demo) -> None:
    wh, latest = demo
    cut = latest - timedelta(days=30)
    events, orders = before(wh, "tracks", cut), before(wh, "order_completed", cut)
    config = PropensityConfig(type="propensity", input="events", orders="orders")
    ctx = RunContext(warehouse=wh, pipeline="t", node="buyers", run_id="r")
    out = PropensityOperator(config).run({"events": events, "orders": orders}, ctx)

    bought = actual_by_user(wh, cut, cut + timedelta(days=30))
    scored = wh.to_arrow(out.table).to_pylist()
    y = np.array([r["user_id"] in bought for r in scored])
    auc = roc_auc(y, [r["probability"] for r in scored])
    last_seen = events.group_by("user_id").aggregate(last=events.timestamp.max()).to_pyarrow()
    last = dict(zip(last_seen["user_id"].to_pylist(), last_seen["last"].to_pylist(), strict=True))
    recency_auc = roc_auc(y, [last[r["user_id"]].timestamp() for r in scored])
    assert auc > 0.75
    assert auc > recency_auc
    assert out.metrics["auc"] > 0.75 and out.metrics["auc"] > out.metrics["baseline_auc"]
    # The top decile of the cohort really buys more often than average.
    top = np.array([r["percentile"] >= 0.9 for r in scored])
    assert y[top].mean() > 2 * y.mean()
    # The node's own lift table (validation snapshot) is ordered the same way.
    bands = out.extra["validation"].to_pylist()
    assert [b["band"] for b in bands] == list(range(1, 11))
    assert sum(b["customers"] for b in bands) == out.metrics["validation_customers"]
    assert bands[0]["mean_outcome"] > 2 * out.metrics["base_rate"] > bands[-1]["mean_outcome"]


def test_clv_ranks_the_next_120_days_of_spend(demo) -> None:
    wh, latest = demo
    cut = datetime.combine(latest.date(), datetime.min.time()) - timedelta(days=120)
    orders = before(wh, "order_completed", cut)
    config = ClvConfig(type="clv", input="orders", horizon="120 days")
    ctx = RunContext(warehouse=wh, pipeline="t", node="ltv", run_id="r")
    out = ClvOperator(config).run({"orders": orders}, ctx)
    actual = actual_by_user(wh, cut, cut + timedelta(days=120))
    scored = out.table.to_pylist()
    predicted = [r["predicted_clv"] for r in scored]
    real = [actual.get(r["user_id"], 0.0) for r in scored]
    assert spearman(predicted, real) > 0.5
    # Totals are in the right range (the model is not just ranking).
    assert 0.7 < sum(predicted) / sum(real) < 1.3
    # The node's own holdout check agrees, band by band.
    assert out.metrics["holdout_spearman"] > 0.5
    assert out.metrics["holdout_spearman"] > out.metrics["holdout_baseline_spearman"]
    bands = out.extra["holdout"].to_pylist()
    assert len(bands) == 10
    assert bands[0]["actual_spend"] > 5 * bands[-1]["actual_spend"]
    assert sum(b["predicted_spend"] for b in bands) == pytest.approx(
        out.metrics["holdout_predicted_spend"]
    )


PIPELINE = """\
name: predict
nodes:
  events:
    type: sql
    sql: select user_id, "timestamp", event from demo_shop.tracks where user_id is not null
  orders:
    type: sql
    sql: select user_id, "timestamp", revenue from demo_shop.order_completed where user_id is not null
  ltv:
    type: clv
    input: orders
  churn:
    type: propensity
    input: events
    orders: orders
    mode: churn
  buyers:
    type: propensity
    input: events
    orders: orders
  predictions:
    type: sql
    sql: |
      select b.user_id, b.percentile as buy_pct, c.percentile as churn_pct,
             l.predicted_clv, l.clv_percentile
      from buyers b join churn c using (user_id) left join ltv l using (user_id)
  to_segment:
    type: segment
    input: predictions
    write_key: ${SEGLOOP_TEST_WRITE_KEY}
    call: identify
    traits:
      buy_pct: likelihood_to_purchase
      churn_pct: likelihood_to_churn
      predicted_clv: predicted_ltv
      clv_percentile: predicted_ltv_percentile
"""


@pytest.mark.slow
def test_nodes_run_in_a_pipeline_and_feed_the_segment_action(
    make_workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEGLOOP_TEST_WRITE_KEY", "wk-test")
    root = make_workspace({"predict": PIPELINE})
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        write_demo_data(wh, customers=1500)
    fake = FakeSegment()
    pipeline = Pipeline.load(root / "pipelines" / "predict.yml")
    result = pipeline.run(options={"segment_transport": fake})
    assert result.ok, [n.error for n in result.nodes]
    calls = fake.delivered()
    assert len(calls) == 1500 and all(c["type"] == "identify" for c in calls)
    traits = [c["traits"] for c in calls]
    assert all(0.0 <= t["likelihood_to_purchase"] <= 1.0 for t in traits)
    assert all(0.0 <= t["likelihood_to_churn"] <= 1.0 for t in traits)
    with_ltv = [t for t in traits if t.get("predicted_ltv") is not None]
    assert len(with_ltv) > 1000 and all(t["predicted_ltv"] >= 0 for t in with_ltv)
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        ltv = wh.table("predict__ltv").to_pyarrow()
        churn = wh.table("predict__churn").to_pyarrow()
        buyers = wh.table("order_completed", schema="demo_shop").user_id.nunique().execute()
        lift = wh.table("predict__buyers__validation").to_pyarrow()
    assert ltv.num_rows == buyers  # customers with at least one order
    assert lift.num_rows == 10
    assert churn.num_rows == 1500  # every known customer with an event
    assert isinstance(ltv.schema.field("predicted_clv").type, pa.DataType)
    run = RunStore(root / ".segloop" / "state.db").get_run(result.run_id)
    metrics = {n.node: n.metrics for n in run.nodes}
    assert metrics["ltv"]["bgnbd_converged"] is True
    assert metrics["churn"]["mode"] == "churn" and 0.5 < metrics["churn"]["auc"] <= 1.0
