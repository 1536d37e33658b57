"""Shared by the report, UI, schedule and alert tests: demo workspaces and stand-in node types.

The clv, propensity, clusters, recommend and segment node types are written in other
issues; the report must show them as soon as they land. These stand-ins produce the
tables and metrics those issues specify (``<pipeline>__<node>__profiles``, AUC, NDCG@10
next to a baseline, sent / rejected / sample payloads ...), so the report and UI are
tested against the contract now. They are registered only inside a test (monkeypatch).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest

from segloop.demo import write_demo_data
from segloop.operators import NODE_TYPES
from segloop.operators.base import NodeConfig, NodeOutput, Operator, RunContext
from segloop.secrets import SecretRef, resolve_secret
from segloop.warehouses import DuckDBConfig, Warehouse

WRITE_KEY_ENV = "SEGLOOP_TEST_WRITE_KEY"
WRITE_KEY = "wk_live_9f3ZqT7xPq2LmN8vR4sY"  # a made-up key the report must never show

WORKSPACE_YML = "warehouses:\n  default:\n    type: duckdb\n    path: .segloop/warehouse.duckdb\n"

SQL_RFM = """\
  orders:
    type: sql
    sql: select user_id, "timestamp", revenue from demo_shop.order_completed
  rfm:
    type: rfm
    input: orders
    customer_id: user_id
    timestamp: timestamp
    amount: revenue
"""

DEMO_PIPELINE = f"""\
name: demo
warehouse: default
nodes:
{SQL_RFM}\
  clv:
    type: clv
    input: rfm
  propensity:
    type: propensity
    input: rfm
  clusters:
    type: clusters
    input: rfm
  recommend:
    type: recommend
    input: orders
  to_segment:
    type: segment
    input: rfm
    write_key: ${{{WRITE_KEY_ENV}}}
    event: RFM Segment
"""

RFM_PIPELINE = f"name: shop\nwarehouse: default\nnodes:\n{SQL_RFM}"


def build_demo_workspace(root: Path, customers: int = 300, days: int = 200) -> Path:
    """A workspace folder with the demo Segment source written to its DuckDB file."""
    (root / "pipelines").mkdir(parents=True, exist_ok=True)
    (root / "segloop.yml").write_text(WORKSPACE_YML)
    with Warehouse.connect(DuckDBConfig(), root) as warehouse:
        write_demo_data(warehouse, customers=customers, days=days, seed=3)
    return root


def copy_workspace(template: Path, target: Path, pipelines: dict[str, str]) -> Path:
    shutil.copytree(template, target)
    for name, text in pipelines.items():
        (target / "pipelines" / f"{name}.yml").write_text(text)
    return target


# -- stand-in node types --------------------------------------------------------------------


class _Config(NodeConfig):
    pass


class FakeClvConfig(_Config):
    type: Literal["clv"] = "clv"


class FakeClv(Operator):
    type_name: ClassVar[str] = "clv"
    config_model: ClassVar[type[NodeConfig]] = FakeClvConfig

    def run(self, inputs: dict[str, Any], ctx: RunContext) -> NodeOutput:
        t = self.only_input(inputs)
        out = t.select("user_id", predicted_clv=t.monetary * 1.3, prob_alive=1.0 / (1.0 + t.recency_days / 60.0))
        return NodeOutput(table=out, metrics={"log_likelihood": -1234.5, "converged": True,
                                              "bgnbd": {"r": 0.243, "alpha": 4.414}})


class FakePropensityConfig(_Config):
    type: Literal["propensity"] = "propensity"


class FakePropensity(Operator):
    type_name: ClassVar[str] = "propensity"
    config_model: ClassVar[type[NodeConfig]] = FakePropensityConfig

    def run(self, inputs: dict[str, Any], ctx: RunContext) -> NodeOutput:
        t = self.only_input(inputs)
        out = t.select("user_id", probability=(t.f_score * 0.18 + t.r_score * 0.01), percentile=t.f_score / 5.0)
        return NodeOutput(table=out, metrics={"auc": 0.81, "log_loss": 0.42, "lift_top_decile": 3.1,
                                              "quality": "good"})


class FakeClustersConfig(_Config):
    type: Literal["clusters"] = "clusters"


class FakeClusters(Operator):
    type_name: ClassVar[str] = "clusters"
    config_model: ClassVar[type[NodeConfig]] = FakeClustersConfig

    def run(self, inputs: dict[str, Any], ctx: RunContext) -> NodeOutput:
        import ibis

        t = self.only_input(inputs)
        labelled = t.select("user_id", "monetary", cluster=(t.r_score % 3).cast("int64"))
        labelled = labelled.mutate(cluster_name=ibis.cases(
            (labelled.cluster == 0, "recent big spenders"), (labelled.cluster == 1, "steady"), else_="fading"))
        profiles = labelled.group_by(["cluster", "cluster_name"]).aggregate(
            size=labelled.count(), monetary=labelled.monetary.mean())
        return NodeOutput(table=labelled, extra={"profiles": profiles}, metrics={"k": 3, "silhouette": 0.41})


class FakeRecommendConfig(_Config):
    type: Literal["recommend"] = "recommend"


class FakeRecommend(Operator):
    type_name: ClassVar[str] = "recommend"
    config_model: ClassVar[type[NodeConfig]] = FakeRecommendConfig

    def run(self, inputs: dict[str, Any], ctx: RunContext) -> NodeOutput:
        t = self.only_input(inputs)
        out = t.select("user_id").distinct()
        return NodeOutput(table=out, metrics={
            "precision_at_10": 0.12, "recall_at_10": 0.31, "ndcg_at_10": 0.27,
            "baseline": {"precision_at_10": 0.05, "recall_at_10": 0.11, "ndcg_at_10": 0.09},
        })


class FakeSegmentConfig(_Config):
    type: Literal["segment"] = "segment"
    write_key: SecretRef
    event: str = "RFM Segment"


class FakeSegment(Operator):
    """Behaves like the Segment action's metrics contract, and leaks the key on purpose."""

    type_name: ClassVar[str] = "segment"
    config_model: ClassVar[type[NodeConfig]] = FakeSegmentConfig
    REJECT_R_SCORE: ClassVar[int] = 1

    def run(self, inputs: dict[str, Any], ctx: RunContext) -> NodeOutput:
        config = self.config
        assert isinstance(config, FakeSegmentConfig)
        key = resolve_secret(config.write_key, f"node `{ctx.node}`").get_secret_value()
        t = self.only_input(inputs)
        rows = ctx.warehouse.count(t)
        rejected = ctx.warehouse.count(t.filter(t.r_score == self.REJECT_R_SCORE))
        sample = ctx.warehouse.to_arrow(t.filter(t.r_score != self.REJECT_R_SCORE).order_by("user_id"), limit=2).to_pylist()
        payloads = [
            {"type": "track", "userId": r["user_id"], "event": config.event,
             "properties": {"segment": r["segment"], "r_score": r["r_score"]},
             "writeKey": key, "context": {"debug": f"sent with key {key}"}}
            for r in sample
        ]
        sent = 0 if ctx.dry_run else rows - rejected
        return NodeOutput(rows=rows, metrics={
            "rows": rows, "sent": sent, "rejected": rejected, "failed": 0, "skipped": 0,
            "would_send": rows - rejected,
            "rejected_by_reason": {f"r_score is {self.REJECT_R_SCORE} (test rule)": rejected},
            "sample_payloads": payloads,
        })


    def preview(self, inputs: dict[str, Any], ctx: RunContext, rows: int = 5) -> dict[str, Any]:
        """Like the Segment node's: counts of the next run and a few payloads, sending nothing."""
        output = self.run(inputs, ctx)
        metrics = dict(output.metrics)
        return {"rows": metrics["rows"], "to_send": metrics["would_send"],
                "payloads": metrics["sample_payloads"][:rows]}


FAKE_TYPES: tuple[type[Operator], ...] = (FakeClv, FakePropensity, FakeClusters, FakeRecommend, FakeSegment)


def register_fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WRITE_KEY_ENV, WRITE_KEY)
    for op in FAKE_TYPES:
        monkeypatch.setitem(NODE_TYPES, op.type_name, op)


_TEMPLATE: list[Path] = []


@pytest.fixture(scope="session")
def demo_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Demo data written once per session; tests copy the folder (a DuckDB file copy is cheap).

    Test modules import this fixture, which makes one fixture per module; the module-level
    cache keeps it to one generation per session all the same.
    """
    if not _TEMPLATE:
        _TEMPLATE.append(build_demo_workspace(tmp_path_factory.mktemp("demo") / "template"))
    return _TEMPLATE[0]


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    register_fakes(monkeypatch)
