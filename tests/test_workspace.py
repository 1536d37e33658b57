"""The workspace facade (runs, pipelines, warehouses, reports) and the typed run options."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from segloop.cli import app
from segloop.errors import SegloopError
from segloop.pipeline import Pipeline

SHOP = """\
name: shop
nodes:
  orders:
    type: sql
    sql: select 1 as id union all select 2
"""


def test_the_facade_lists_runs_opens_the_warehouse_and_builds_the_report(make_workspace) -> None:
    from segloop.workspace import Workspace

    root = make_workspace({"shop": SHOP})
    workspace = Workspace.find(root)
    assert workspace.runs() == []
    with pytest.raises(SegloopError, match="no runs yet"):
        workspace.run("latest")
    assert not (root / ".segloop" / "state.db").exists()  # asking created nothing

    result = workspace.pipeline("shop").run(options={"report": False})
    assert [run.id for run in workspace.runs("shop")] == [result.run_id]
    assert workspace.run("latest").status == "success"
    with workspace.warehouse() as wh:
        assert sorted(r["id"] for r in wh.table("shop__orders").to_pyarrow().to_pylist()) == [1, 2]
    report = workspace.report(result.run_id[:10])
    assert report == root / ".segloop" / "runs" / result.run_id / "report.html" and report.exists()
    assert workspace.schedules() == {}


def test_a_misspelt_run_option_is_an_error_naming_it(make_workspace) -> None:
    root = make_workspace({"shop": SHOP})
    pipeline = Pipeline.load(root / "pipelines" / "shop.yml")
    with pytest.raises(TypeError, match="reprot"):
        pipeline.run(options={"reprot": False})


def test_report_without_runs_says_how_to_start_one_and_creates_nothing(
    make_workspace, monkeypatch: pytest.MonkeyPatch,
) -> None:
    root: Path = make_workspace({"shop": SHOP})
    monkeypatch.chdir(root)
    result = CliRunner().invoke(app, ["report"])
    assert result.exit_code == 1 and "no runs yet" in result.output and "segloop run PIPELINE" in result.output
    assert not (root / ".segloop" / "state.db").exists()
