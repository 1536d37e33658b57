"""The recommend node's quality card: NDCG@10, recall@10 and catalogue coverage next to popularity,
in run history, `segloop show` and the gate."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from segloop.cli import app
from segloop.pipeline import Pipeline
from tests.operators.recommend_fixtures import rows_table, shop, shop_pipeline, write_events

AFTER = """
  after:
    type: sql
    input: recs
    sql: select * from recs"""


@pytest.fixture
def workspace(make_workspace, monkeypatch: pytest.MonkeyPatch):
    def make(require: str = ""):
        root = make_workspace({"shop": shop_pipeline(holdout_days=20, extra=require + AFTER, top_n=3)})
        write_events(root, rows_table(shop(fans_per_category=60)))
        monkeypatch.chdir(root)
        return root
    return make


def test_card_is_in_history_and_show(workspace) -> None:
    root = workspace()
    result = Pipeline.load(root / "pipelines" / "shop.yml").run()
    node = result.node("recs")
    assert node.status == "success", node.error
    m = node.metrics
    for name in ("ndcg", "recall", "coverage"):
        assert 0 <= m[f"{name}_at_10"] <= 1 and 0 <= m[f"popular_{name}_at_10"] <= 1
    assert m["coverage_at_10"] > 0  # (on 12 items both lists cover nearly all; the demo test compares them)
    # measured while the output streamed out, and still recorded in the run history
    assert 0 < m["catalogue_coverage"] <= 1 and "score" in m["seconds"]
    shown = CliRunner().invoke(app, ["show", "latest"], env={"COLUMNS": "120"})
    assert shown.exit_code == 0, shown.output
    lines = [line.split() for line in shown.output.splitlines()]
    for key in ("ndcg_at_10", "popular_ndcg_at_10", "recall_at_10", "coverage_at_10", "popular_coverage_at_10",
                "catalogue_coverage"):
        assert any(line[:1] == [key] for line in lines), key


def test_coverage_gate_stops_what_comes_after(workspace) -> None:
    root = workspace("    require: {coverage_at_10: 1.01}")  # more than the whole catalogue: a sure miss
    result = Pipeline.load(root / "pipelines" / "shop.yml").run()
    node = result.node("recs")
    assert node.status == "failed"
    assert "`coverage_at_10` is" in node.error and "below the minimum 1.01" in node.error
    assert result.node("after").status != "success"


def test_coverage_gate_passes_when_met(workspace) -> None:
    root = workspace("    require: {coverage_at_10: 0.1, recall_at_10: 0.01}")
    result = Pipeline.load(root / "pipelines" / "shop.yml").run()
    assert result.node("recs").status == "success" and result.node("recs").metrics["gate"] == "passed"
    assert result.node("after").status == "success"
