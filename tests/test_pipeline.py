"""The engine: DAG order, materialized outputs, failure isolation, run history, the CLI."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from typer.testing import CliRunner

from segloop.cli import app
from segloop.pipeline import Pipeline
from segloop.store import MIGRATIONS, RunStore
from segloop.warehouses import DuckDBConfig, Warehouse

DAG = """\
name: dag
nodes:
  c:
    type: sql
    sql: select x * 10 as y from b
  a:
    type: sql
    sql: select 1 as x union all select 2
  b:
    type: sql
    input: a
    sql: select x + 1 as x from a
  bad:
    type: sql
    input: a
    sql: select * from missing_schema.nowhere
  after_bad:
    type: sql
    input: bad
    sql: select * from bad
"""


def test_outputs_materialized_and_failure_stops_only_descendants(make_workspace) -> None:
    root = make_workspace({"dag": DAG})
    result = Pipeline.load(root / "pipelines" / "dag.yml").run()
    status = {n.name: n.status for n in result.nodes}
    assert status == {"a": "success", "b": "success", "c": "success", "bad": "failed", "after_bad": "skipped"}
    assert [n.name for n in result.nodes].index("c") > [n.name for n in result.nodes].index("b")
    assert "node `bad`" in result.node("bad").error and "missing_schema" in result.node("bad").error
    assert "upstream node `bad`" in result.node("after_bad").error
    assert not result.ok
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        assert sorted(r["y"] for r in wh.table("dag__c").to_pyarrow().to_pylist()) == [20, 30]
    run = RunStore(root / ".segloop" / "state.db").get_run(result.run_id)
    assert run.status == "failed" and "node `bad`" in run.error
    assert {n.node: n.rows for n in run.nodes}["c"] == 2


def test_run_single_node_reads_previous_outputs(make_workspace) -> None:
    root = make_workspace({"dag": DAG})
    pipeline = Pipeline.load(root / "pipelines" / "dag.yml")
    first = Pipeline.load(root / "pipelines" / "dag.yml").run(node="b")
    assert first.node("b").status == "failed" and "run the whole pipeline once" in first.node("b").error
    pipeline.run()
    again = pipeline.run(node="c")
    assert [n.name for n in again.nodes] == ["c"] and again.ok


def test_run_history_migrations_are_numbered_and_idempotent(tmp_path) -> None:
    store = RunStore(tmp_path / "state.db")
    assert store.migrate() == MIGRATIONS[-1][0]
    store.close()
    db = sqlite3.connect(tmp_path / "state.db")
    versions = [row[0] for row in db.execute("select version from schema_version order by version")]
    assert versions == [number for number, _ in MIGRATIONS]


def test_cli_run_runs_and_show(make_workspace, monkeypatch) -> None:
    root = make_workspace({"dag": DAG.split("  bad:")[0]})
    monkeypatch.chdir(root)
    runner = CliRunner()
    result = runner.invoke(app, ["run", "dag"])
    assert result.exit_code == 0, result.output
    assert "success" in result.output and "dag" in result.output
    report = result.output.split("report: ", 1)[1].split()[0]  # the summary names the HTML report
    assert Path(report).is_file() and Path(report).suffix == ".html"
    listing = runner.invoke(app, ["runs"])
    assert listing.exit_code == 0 and "dag" in listing.output
    shown = runner.invoke(app, ["show", "latest"])
    assert shown.exit_code == 0 and "pipeline `dag`" in shown.output


def test_cli_run_failure_exits_1_with_red_line(make_workspace, monkeypatch) -> None:
    root = make_workspace({"dag": DAG})
    monkeypatch.chdir(root)
    result = CliRunner().invoke(app, ["run", "dag"])
    assert result.exit_code == 1
    assert "error: node `bad`" in result.output


def test_cli_unknown_pipeline_is_one_clear_line(make_workspace, monkeypatch) -> None:
    root = make_workspace({"dag": DAG})
    monkeypatch.chdir(root)
    result = CliRunner().invoke(app, ["run", "nope"])
    assert result.exit_code == 1
    assert result.output.count("error:") == 1 and "no pipeline file `nope`" in result.output


def test_the_warehouse_hints_reach_the_user(make_workspace, monkeypatch) -> None:
    """DuckDB says how to fix a typo after its first line; those hints are not cut off."""
    from typer.testing import CliRunner

    from segloop.cli import app
    from segloop.pipeline import Pipeline

    bad_column = "name: t\nnodes:\n  q:\n    type: sql\n    sql: select usr_id from (select 1 as user_id) as s\n"
    root = make_workspace({"t": bad_column})
    result = Pipeline.load(root / "pipelines" / "t.yml").run()
    error = result.node("q").error or ""
    assert "Referenced column \"usr_id\" not found" in error and "Candidate bindings: \"user_id\"" in error

    monkeypatch.chdir(root)
    out = CliRunner().invoke(app, ["query", "select * from information_schema.tabels"])
    assert out.exit_code == 1
    assert "Did you mean" in out.output and "LINE 1: select * from information_schema.tabels" in out.output
    lines = out.output.splitlines()
    query_line = next(i for i, line in enumerate(lines) if "LINE 1:" in line)
    assert lines[query_line + 1].index("^") == lines[query_line].index("information_schema")  # under the typo
    described = CliRunner().invoke(app, ["query", "describe select 1 as a"])
    assert described.exit_code == 0 and "column_name" in described.output


def test_a_pipeline_file_outside_any_workspace_runs_in_the_one_you_are_in(make_workspace, tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from segloop.cli import app
    from segloop.pipeline import Pipeline

    root = make_workspace({})
    elsewhere = tmp_path / "scratch"
    elsewhere.mkdir()
    (elsewhere / "p.yml").write_text("name: p\nnodes:\n  one:\n    type: sql\n    sql: select 1 as a\n")
    monkeypatch.chdir(root)
    pipeline = Pipeline.load(elsewhere / "p.yml")
    assert pipeline.workspace.root == root.resolve()
    assert pipeline.run().ok
    assert not (elsewhere / ".segloop").exists()  # nothing made next to the file

    monkeypatch.chdir(elsewhere)  # not a workspace: `runs` says so, and creates nothing
    out = CliRunner().invoke(app, ["runs"])
    assert out.exit_code == 1 and f"no segloop.yml in {elsewhere.resolve()}" in out.output
    assert "segloop init DIR" in out.output
    assert not (elsewhere / ".segloop").exists()
