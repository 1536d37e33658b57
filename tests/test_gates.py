"""Quality gates (`require:` on model nodes): a model that misses its bound sends nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from segloop.config import parse_pipeline
from segloop.errors import ConfigErrors
from segloop.operators.base import NodeOutput
from segloop.operators.gates import check_requirements
from segloop.operators.propensity import PropensityConfig
from tests.segment.send.fake_segment import FakeSegment
from tests.test_alerts import alerts_block, load, receiver  # noqa: F401 - fixture
from tests.web.helpers import SQL_RFM, demo_template  # noqa: F401 - fixture


def gated_pipeline(require: str) -> str:
    return (
        "name: shop\nwarehouse: default\nnodes:\n" + SQL_RFM + f"""\
  clusters:
    type: clusters
    input: rfm
    customer_id: user_id
    columns: [recency_days, frequency, monetary]
    k: 3
    require: {require}
  audience:
    type: sql
    input: clusters
    sql: select user_id, cluster_name from clusters
  to_segment:
    type: segment
    input: audience
    write_key: ${{SEGLOOP_TEST_GATE_KEY}}
    call: identify
    customer_id: user_id
    traits: [cluster_name]
"""
    )


@pytest.fixture(autouse=True)
def write_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGLOOP_TEST_GATE_KEY", "wk_test")


def test_a_missed_gate_fails_the_node_sends_nothing_and_alerts(
    demo_template: Path, tmp_path: Path, receiver  # noqa: F811
) -> None:
    pipeline = load(demo_template, tmp_path, gated_pipeline("{silhouette: 0.99}") + alerts_block())
    fake = FakeSegment()
    result = pipeline.run(options={"segment_transport": fake})
    assert not result.ok
    node = result.node("clusters")
    assert node.status == "failed"
    silhouette = node.metrics["silhouette"]
    assert 0 < silhouette < 0.99 and node.metrics["gate"] == "failed"
    assert f"`silhouette` is {silhouette:.4g}, below the minimum 0.99" in (node.error or "")
    assert result.node("audience").status == "skipped"
    assert result.node("to_segment").status == "skipped"
    assert fake.delivered() == []
    (text,) = receiver.texts()
    assert "node `clusters`" in text and "silhouette" in text and "0.99" in text


def test_a_met_gate_lets_the_predictions_through(
    demo_template: Path, tmp_path: Path, receiver  # noqa: F811
) -> None:
    pipeline = load(demo_template, tmp_path, gated_pipeline("{silhouette: 0.1}") + alerts_block())
    fake = FakeSegment()
    result = pipeline.run(options={"segment_transport": fake})
    assert result.ok, [n.error for n in result.nodes]
    assert result.node("clusters").metrics["gate"] == "passed"
    assert len(fake.delivered()) == result.node("audience").rows > 0
    assert receiver.requests == []


def test_unknown_metric_names_are_reported_by_validate_with_the_line() -> None:
    with pytest.raises(ConfigErrors) as bad:
        parse_pipeline(gated_pipeline("{silhuette: 0.5}"), "p.yml")
    text = str(bad.value)
    assert "p.yml:" in text and "`silhuette`" in text and "silhouette" in text


@pytest.mark.parametrize(
    ("require", "message"),
    [
        ({"auc": 0.8}, "`auc` is 0.75, below the minimum 0.8"),
        ({"ece": 0.03}, "`ece` is 0.05, above the maximum 0.03"),  # lower is better: a maximum
        ({"log_loss": 0.3}, "`log_loss` is 0.4, above the maximum 0.3"),
        ({"lift_top_decile": 2}, "`lift_top_decile` was not computed in this run"),
    ],
)
def test_each_miss_names_metric_value_and_bound(require: dict[str, float], message: str) -> None:
    config = PropensityConfig(type="propensity", input="ev", require=require)
    metrics = {"auc": 0.75, "ece": 0.05, "log_loss": 0.4, "lift_top_decile": float("nan")}
    out = check_requirements(NodeOutput(metrics=dict(metrics)), config)
    assert out.error is not None and message in out.error
    assert out.metrics["gate"] == "failed"
    passed = check_requirements(
        NodeOutput(metrics=dict(metrics)), PropensityConfig(type="propensity", input="ev",
                                                            require={"auc": 0.7, "ece": 0.06})
    )
    assert passed.error is None and passed.metrics["gate"] == "passed"


def test_a_bound_must_be_a_finite_number() -> None:
    with pytest.raises(ConfigErrors, match="the bound of `silhouette` must be a finite number"):
        parse_pipeline(gated_pipeline("{silhouette: .nan}"), "p.yml")


@pytest.mark.parametrize(
    ("node", "metric"),
    [
        ("type: propensity\n    input: orders", "auc"),
        ("type: clv\n    input: orders", "holdout_spearman"),
        ("type: clusters\n    input: rfm", "silhouette"),
        ("type: recommend\n    input: orders\n    item_id: sku", "ndcg_at_10"),
    ],
)
def test_every_model_node_takes_a_gate_on_its_own_metrics(node: str, metric: str) -> None:
    text = "name: shop\nwarehouse: default\nnodes:\n" + SQL_RFM + f"  model:\n    {node}\n"
    parse_pipeline(text + f"    require: {{{metric}: 0.1}}\n", "p.yml")
    with pytest.raises(ConfigErrors, match="`bogus` is not a metric of this node type"):
        parse_pipeline(text + "    require: {bogus: 0.1}\n", "p.yml")
