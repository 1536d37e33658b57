"""`segloop validate`: duplicate keys, unset ${VAR}s, impossible views, every problem of a node."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from segloop.cli import app
from segloop.config import Workspace
from segloop.errors import ConfigError, SecretError
from segloop.operators import NODE_TYPES
from segloop.pipeline import Pipeline
from segloop.secrets import resolve_secret
from tests.pipeline_fixtures import SQL_RFM

PIPELINE = "name: demo\nnodes:\n" + SQL_RFM

TO_SEGMENT = """\
  to_segment:
    type: segment
    input: rfm
    event: RFM Segment
    write_key: ${SEGLOOP_T_WRITE_KEY}
    endpoint: ${SEGLOOP_T_ENDPOINT}
"""

ENV_VARS = ("SEGLOOP_T_WRITE_KEY", "SEGLOOP_T_ENDPOINT", "SEGLOOP_T_WEBHOOK", "SEGLOOP_T_PG_PASSWORD")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no segloop.yml above the test's files unless it writes one


def validate(*files: Path) -> tuple[int, list[str], list[str], list[str]]:
    """Exit code, `error:` lines, `warning:` lines and `ok` lines of `segloop validate`."""
    result = CliRunner().invoke(app, ["validate", *map(str, files)])
    lines = result.output.splitlines()
    pick = lambda prefix: [ln for ln in lines if ln.startswith(prefix)]  # noqa: E731
    return result.exit_code, pick("error:"), pick("warning:"), pick("ok ")


# -- duplicate keys ------------------------------------------------------------------------


def test_a_node_defined_twice_is_an_error_at_its_second_definition(tmp_path: Path) -> None:
    file = tmp_path / "x.yml"
    file.write_text(PIPELINE + "  rfm:\n    type: sql\n    sql: select 1 as n\n")
    code, errors, _, ok = validate(file)
    assert code == 1 and not ok
    assert errors == [f"error: {file}:12: node `rfm` is defined twice (first at line 6); rename or remove one"]


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        (PIPELINE + "    amount: total\n", 12, "node `rfm`: key `amount` is given twice (first at line 11)"),
        ("name: other\n" + PIPELINE, 2, "key `name` is given twice (first at line 1)"),
        (PIPELINE + "schedule:\n  cron: '0 6 * * *'\n  cron: '0 7 * * *'\n", 14, "key `schedule.cron` is given twice"),
    ],
    ids=["in_a_node", "top_level", "nested_section"],
)
def test_any_duplicate_key_in_a_pipeline_is_an_error_with_its_line(
    tmp_path: Path, text: str, line: int, needle: str
) -> None:
    file = tmp_path / "x.yml"
    file.write_text(text)
    code, errors, _, _ = validate(file)
    assert code == 1
    assert len(errors) == 1 and errors[0].startswith(f"error: {file}:{line}: ") and needle in errors[0], errors


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        (
            "warehouses:\n  default:\n    type: duckdb\n  default:\n    type: duckdb\n",
            4,
            "warehouse `default` is defined twice (first at line 2)",
        ),
        (
            "warehouses:\n  default:\n    type: duckdb\n    path: a.duckdb\n    path: b.duckdb\n",
            5,
            "warehouse `default`: key `path` is given twice (first at line 4)",
        ),
    ],
    ids=["warehouse", "warehouse_key"],
)
def test_duplicate_keys_in_segloop_yml_are_errors(tmp_path: Path, text: str, line: int, needle: str) -> None:
    (tmp_path / "segloop.yml").write_text(text)
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "demo.yml").write_text(PIPELINE)
    code, errors, _, ok = validate()
    assert code == 1
    assert errors == [f"error: {tmp_path / 'segloop.yml'}:{line}: {needle}" + ("; rename or remove one" if "defined" in needle else "; remove one")]
    assert any("pipeline `demo`" in o for o in ok)  # the pipelines are still checked
    with pytest.raises(ConfigError, match=f"segloop.yml:{line}: "):  # and `run` refuses it too
        Workspace.load(tmp_path)


# -- unset ${VAR} references -----------------------------------------------------------------


def test_unset_env_vars_are_warnings_with_file_line_and_key_all_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "segloop.yml").write_text(
        "warehouses:\n  pg:\n    type: postgres\n    host: localhost\n    database: shop\n"
        "    user: me\n    password: ${SEGLOOP_T_PG_PASSWORD}\n"
    )
    file = tmp_path / "x.yml"
    file.write_text(PIPELINE + TO_SEGMENT + "alerts:\n  webhook: ${SEGLOOP_T_WEBHOOK}\n")
    code, errors, warnings, ok = validate(file)
    assert code == 0 and not errors
    assert len(ok) == 2
    assert warnings == [
        f"warning: {tmp_path / 'segloop.yml'}:7: warehouse `pg`: `password` names ${{SEGLOOP_T_PG_PASSWORD}}, "
        "which is not set; export SEGLOOP_T_PG_PASSWORD=... before running",
        f"warning: {file}:16: node `to_segment`: `write_key` names ${{SEGLOOP_T_WRITE_KEY}}, which is not set; "
        "export SEGLOOP_T_WRITE_KEY=... before running",
        f"warning: {file}:17: node `to_segment`: `endpoint` names ${{SEGLOOP_T_ENDPOINT}}, which is not set; "
        "export SEGLOOP_T_ENDPOINT=... before running",
        f"warning: {file}:19: `alerts.webhook` names ${{SEGLOOP_T_WEBHOOK}}, which is not set; "
        "export SEGLOOP_T_WEBHOOK=... before running",
    ]
    for name in ENV_VARS:
        monkeypatch.setenv(name, "x")
    monkeypatch.setenv("SEGLOOP_T_ENDPOINT", "")  # empty counts as unset, as at run time
    code, errors, warnings, _ = validate(file)
    assert code == 0 and not errors
    assert len(warnings) == 1 and f"{file}:17: node `to_segment`: `endpoint`" in warnings[0]


def test_warnings_are_shown_next_to_errors_and_errors_still_exit_1(tmp_path: Path) -> None:
    file = tmp_path / "x.yml"
    file.write_text(PIPELINE.replace("input: orders", "input: nosuch") + TO_SEGMENT)
    code, errors, warnings, _ = validate(file)
    assert code == 1
    assert len(errors) == 1 and f"{file}:8: node `rfm`: input `nosuch`" in errors[0]
    assert [w.split(": ")[1] for w in warnings] == [f"{file}:16", f"{file}:17"]


def test_run_time_error_names_every_missing_variable_of_the_node(tmp_path: Path) -> None:
    with pytest.raises(SecretError) as caught:
        resolve_secret("${SEGLOOP_T_WRITE_KEY}", "node `to_segment`", also=["${SEGLOOP_T_ENDPOINT}", "https://x"])
    assert str(caught.value) == (
        "environment variables SEGLOOP_T_WRITE_KEY and SEGLOOP_T_ENDPOINT are not set (used by node "
        "`to_segment`); export SEGLOOP_T_WRITE_KEY=... SEGLOOP_T_ENDPOINT=... before running"
    )


def test_a_segment_node_run_reports_both_missing_variables(make_workspace) -> None:
    root = make_workspace({"p": """\
name: p
nodes:
  scores:
    type: sql
    sql: select 'u1' as user_id, 1 as score
""" + TO_SEGMENT.replace("input: rfm", "input: scores")})
    result = Pipeline.load(root / "pipelines" / "p.yml").run()
    error = result.node("to_segment").error or ""
    assert result.node("to_segment").status == "failed"
    assert "SEGLOOP_T_WRITE_KEY and SEGLOOP_T_ENDPOINT are not set" in error, error


# -- materialize: view ---------------------------------------------------------------------


@pytest.mark.parametrize("node_type", sorted(t for t, op in NODE_TYPES.items() if op.OUTPUT_IN_PYTHON))
def test_view_of_a_node_computed_in_python_is_a_validation_error(tmp_path: Path, node_type: str) -> None:
    assert node_type in NODE_TYPES
    file = tmp_path / "x.yml"
    file.write_text(PIPELINE + f"  model:\n    type: {node_type}\n    input: rfm\n    materialize: view\n")
    code, errors, _, _ = validate(file)
    assert code == 1
    wanted = (f"error: {file}:15: node `model`: `materialize: view` needs a query the warehouse runs, "
              f"but a `{node_type}` node computes its output in Python")
    assert any(e.startswith(wanted) for e in errors), errors


@pytest.mark.parametrize("node", ["orders", "rfm"])
def test_view_of_a_node_the_warehouse_computes_is_accepted(tmp_path: Path, node: str) -> None:
    file = tmp_path / "x.yml"
    marker = "input: orders\n" if node == "rfm" else "type: sql\n"
    file.write_text(PIPELINE.replace(marker, marker + "    materialize: view\n", 1))
    code, errors, _, ok = validate(file)
    assert code == 0 and not errors and len(ok) == 1


def test_a_deprecated_key_is_a_warning_on_its_line_and_the_file_stays_valid(tmp_path: Path) -> None:
    file = tmp_path / "x.yml"
    file.write_text(PIPELINE + "  groups:\n    type: clusters\n    input: rfm\n    minibatch_above: 50000\n")
    code, errors, warnings, ok = validate(file)
    assert code == 0 and not errors and len(ok) == 1
    assert warnings == [f"warning: {file}:15: node `groups`: `minibatch_above` is no longer used (k-means "
                        "fits on at most `fit_rows` customers, a sample, and assigns every customer); remove it"]


# -- every problem of a node ---------------------------------------------------------------


def test_a_node_with_an_unknown_key_still_gets_its_missing_input_reported(tmp_path: Path) -> None:
    file = tmp_path / "x.yml"
    file.write_text(PIPELINE.replace("input: orders", "input: nosuch").replace("amount: revenue", "amout: revenue"))
    code, errors, _, _ = validate(file)
    assert code == 1
    assert any(e.startswith(f"error: {file}:11: node `rfm`: unknown key `amout`") for e in errors), errors
    assert any(e.startswith(f"error: {file}:8: node `rfm`: input `nosuch` is not a node") for e in errors), errors



def test_an_unset_write_key_of_the_collector_is_a_warning_on_its_line(tmp_path: Path) -> None:
    (tmp_path / "segloop.yml").write_text(
        "collector:\n  keys:\n    ${SEGLOOP_T_WRITE_KEY}: web\n"
    )
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "demo.yml").write_text(PIPELINE)
    code, errors, warnings, _ = validate()
    assert code == 0 and not errors
    assert warnings == [
        f"warning: {tmp_path / 'segloop.yml'}:3: `collector.keys` names ${{SEGLOOP_T_WRITE_KEY}}, which is not set; "
        "export SEGLOOP_T_WRITE_KEY=... before running"
    ]


def test_a_check_of_ours_reads_as_ours_not_as_pydantic(tmp_path) -> None:
    from segloop.config import load_pipeline
    from segloop.errors import ConfigError

    file = tmp_path / "p.yml"
    file.write_text("name: v\nnodes:\n  s:\n    type: sql\n    sql: select 1 as user_id\n  out:\n    type: segment\n"
                    "    input: s\n    write_key: abc123secret\n    call: identify\n    customer_id: user_id\n")
    with pytest.raises(ConfigError) as error:
        load_pipeline(file)
    text = str(error.value)
    assert "p.yml:9: node `out`: `write_key`: secrets are not written in files" in text
    assert "Value error" not in text and "abc123secret" not in text


# -- one pipeline name, two files -------------------------------------------------------------


def test_a_pipeline_name_used_by_two_files_is_an_error_on_both(tmp_path: Path) -> None:
    (tmp_path / "segloop.yml").write_text("warehouses:\n  default:\n    type: duckdb\n")
    folder = tmp_path / "pipelines"
    folder.mkdir()
    (folder / "demo.yml").write_text(PIPELINE)
    (folder / "demo_v2.yml").write_text("# a copy\n" + PIPELINE)
    (folder / "other.yml").write_text(PIPELINE.replace("name: demo", "name: other"))
    code, errors, _, ok = validate()
    assert code == 1
    root = str(tmp_path) + "/"
    assert [e.replace(root, "") for e in errors] == [
        "error: pipelines/demo.yml:1: pipeline name `demo` is also used by pipelines/demo_v2.yml; give each file "
        "its own `name:` (pipelines with one name share their tables, sync state and run lock, so `segloop run` "
        "refuses the name)",
        "error: pipelines/demo_v2.yml:2: pipeline name `demo` is also used by pipelines/demo.yml; give each file "
        "its own `name:` (pipelines with one name share their tables, sync state and run lock, so `segloop run` "
        "refuses the name)",
    ]
    assert [line.split(":")[0].replace(root, "") for line in ok] == ["ok segloop.yml", "ok pipelines/other.yml"]
    # Checking one file still finds the other file of the workspace that uses its name.
    code, errors, _, _ = validate(folder / "demo_v2.yml")
    assert code == 1 and len(errors) == 1 and "is also used by " + str(folder / "demo.yml") in errors[0]
    with pytest.raises(ConfigError, match="pipeline name `demo` is used by .*demo.yml and .*demo_v2.yml"):
        Pipeline.load("demo", Workspace.load(tmp_path))
    assert Pipeline.load("other", Workspace.load(tmp_path)).name == "other"
    assert Pipeline.load(folder / "demo_v2.yml", Workspace.load(tmp_path)).name == "demo"  # a path is not ambiguous
