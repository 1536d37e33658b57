"""Pipeline and workspace files: every problem reported with its file and line."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from segloop.cli import app
from segloop.config import Workspace, load_pipeline, parse_pipeline
from segloop.errors import ConfigError, ConfigErrors, SecretError
from segloop.secrets import resolve_secret
from tests.pipeline_fixtures import SQL_RFM

GOOD = "name: demo\nwarehouse: default\nnodes:\n" + SQL_RFM

BROKEN = {
    "bad_yaml": ("name: demo\nnodes:\n  orders:\n    type: sql\n    sql: [unclosed\n", 5, "invalid YAML"),
    "unknown_key": (GOOD.replace("    amount: revenue\n", "    amount: revenue\n    amout: x\n"), 13, "unknown key `amout`"),
    "unknown_type": (GOOD.replace("type: rfm", "type: rfmm"), 8, "unknown node type `rfmm`"),
    "missing_input": (GOOD.replace("input: orders", "input: ordrs"), 9, "input `ordrs` is not a node"),
    "cycle": (
        "name: demo\nnodes:\n  a:\n    type: rfm\n    input: b\n  b:\n    type: rfm\n    input: a\n",
        3,
        "cycle between nodes: a -> b -> a",
    ),
}


def test_good_pipeline_parses_in_dependency_order() -> None:
    pipeline = parse_pipeline(GOOD, "p.yml")
    assert pipeline.name == "demo"
    assert pipeline.topological_order() == ["orders", "rfm"]
    assert pipeline.nodes["rfm"].upstream() == ["orders"]


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_file_names_line_and_problem(case: str) -> None:
    text, line, needle = BROKEN[case]
    with pytest.raises(ConfigError) as caught:
        parse_pipeline(text, f"{case}.yml")
    errors = caught.value.errors if isinstance(caught.value, ConfigErrors) else [caught.value]
    assert len(errors) == 1, [str(e) for e in errors]
    assert errors[0].file == f"{case}.yml"
    assert errors[0].line == line, str(errors[0])
    assert needle in str(errors[0])


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_validate_cli_prints_one_message_with_line_and_exits_1(case: str, tmp_path: Path) -> None:
    text, line, needle = BROKEN[case]
    file = tmp_path / f"{case}.yml"
    file.write_text(text)
    result = CliRunner().invoke(app, ["validate", str(file)])
    assert result.exit_code == 1
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.output
    assert f"{file}:{line}:" in lines[0] and needle in lines[0]


def test_validate_ok_exit_0(tmp_path: Path) -> None:
    file = tmp_path / "good.yml"
    file.write_text(GOOD)
    result = CliRunner().invoke(app, ["validate", str(file)])
    assert result.exit_code == 0, result.output
    assert "orders -> rfm" in result.output


def test_several_problems_reported_together() -> None:
    text = GOOD.replace("type: rfm", "type: nope").replace("sql: select", "sqll: select")
    with pytest.raises(ConfigErrors) as caught:
        parse_pipeline(text, "p.yml")
    messages = [str(e) for e in caught.value.errors]
    assert any("unknown node type `nope`" in m for m in messages)
    assert any("unknown key `sqll`" in m for m in messages)


def test_sql_node_references_make_implicit_dependencies() -> None:
    text = """\
name: p
nodes:
  report:
    type: sql
    sql: select r.segment, count(*) as n from rfm r group by 1
  orders:
    type: sql
    sql: select * from demo_shop.order_completed
  rfm:
    type: rfm
    input: orders
"""
    pipeline = parse_pipeline(text)
    assert pipeline.topological_order() == ["orders", "rfm", "report"]


def test_secrets_are_references_not_values(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import TypeAdapter, ValidationError

    from segloop.secrets import SecretRef

    with pytest.raises(ValidationError, match="name an environment variable"):
        TypeAdapter(SecretRef).validate_python("sk_live_123")
    monkeypatch.delenv("SEGLOOP_TEST_KEY", raising=False)
    with pytest.raises(SecretError, match="SEGLOOP_TEST_KEY is not set"):
        resolve_secret("${SEGLOOP_TEST_KEY}")
    monkeypatch.setenv("SEGLOOP_TEST_KEY", "s3cr3t")
    secret = resolve_secret("${SEGLOOP_TEST_KEY}")
    assert secret.get_secret_value() == "s3cr3t" and "s3cr3t" not in repr(secret)


def test_workspace_unknown_warehouse_type_has_line(tmp_path: Path) -> None:
    (tmp_path / "segloop.yml").write_text("warehouses:\n  default:\n    type: oracle\n")
    with pytest.raises(ConfigError) as caught:
        Workspace.load(tmp_path)
    assert "segloop.yml:3" in str(caught.value) or "segloop.yml:2" in str(caught.value)


def test_workspace_missing_warehouse_name(tmp_path: Path) -> None:
    ws = Workspace.load(tmp_path)
    with pytest.raises(ConfigError, match="warehouse `pg` is not defined"):
        ws.warehouse_config("pg")


def test_init_writes_a_valid_workspace(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["init", str(tmp_path / "w")])
    assert result.exit_code == 0, result.output
    pipeline = load_pipeline(tmp_path / "w" / "pipelines" / "example.yml")
    assert set(pipeline.nodes) == {"orders", "rfm"}
    assert Workspace.load(tmp_path / "w").warehouse_config(None).type == "duckdb"
