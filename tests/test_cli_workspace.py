"""A new user's first commands: init, working outside a workspace, reset, show, error wording, make demo."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from segloop.cli import app
from segloop.pipeline import Pipeline
from segloop.warehouses import DuckDBConfig, Warehouse
from tests.operators.segment_fixtures import scores_to_segment

ROOT = Path(__file__).resolve().parents[1]

SHOP = scores_to_segment(key_env="SEGLOOP_T_CLI_WRITE_KEY", call="track", event="Sales Prediction",
                         customer_id="user_id", properties="[iphone, apple_watch]")


@pytest.fixture
def shop(make_workspace, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A workspace with pipeline `shop` (sql -> segment) and its source table; cwd is the workspace."""
    root = make_workspace({"shop": SHOP})
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        wh.create_table("scores", pa.table({"user_id": ["u1", "u2", "u3"], "iphone": [0.734, 0.5, 0.25],
                                            "apple_watch": [0.812] * 3}), schema="src")
    monkeypatch.chdir(root)
    monkeypatch.delenv("SEGLOOP_T_CLI_WRITE_KEY", raising=False)
    return root


# -- init and the folder you are in -------------------------------------------------------------


def test_init_says_to_cd_into_the_new_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["init", "my ws"])
    assert result.exit_code == 0, result.output
    assert "Next: cd 'my ws' && segloop demo-data && segloop run example" in result.output
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    here = CliRunner().invoke(app, ["init"])  # already inside it: no cd
    assert "Next: segloop demo-data && segloop run example" in here.output


@pytest.mark.parametrize("args", [["demo-data", "--customers", "10"], ["runs"], ["show"], ["query", "select 1"],
                                  ["check-warehouse"], ["run", "example"], ["reset", "example", "to_segment", "-y"],
                                  ["load-archive", "."]])
def test_outside_a_workspace_commands_say_so_and_create_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert result.output.count("error:") == 1
    assert f"no segloop.yml in {tmp_path.resolve()} or a folder above it" in result.output
    assert "segloop init DIR" in result.output
    assert list(tmp_path.iterdir()) == []  # no .segloop/warehouse.duckdb, no state.db


def test_demo_data_in_a_subfolder_of_a_workspace_writes_to_its_warehouse(make_workspace, monkeypatch) -> None:
    root = make_workspace({})
    (root / "notebooks").mkdir()
    monkeypatch.chdir(root / "notebooks")
    result = CliRunner().invoke(app, ["demo-data", "--customers", "20", "--days", "30"])
    assert result.exit_code == 0, result.output
    assert (root / ".segloop" / "warehouse.duckdb").exists() and not (root / "notebooks" / ".segloop").exists()


# -- reset --------------------------------------------------------------------------------------


def test_reset_of_an_unknown_node_fails_before_asking(shop: Path) -> None:
    result = CliRunner().invoke(app, ["reset", "shop", "nosuch"], input="y\n")
    assert result.exit_code == 1
    assert "Forget" not in result.output  # no question asked
    assert "`nosuch` is not a Segment node of pipeline `shop` (Segment nodes: to_segment)" in result.output
    not_segment = CliRunner().invoke(app, ["reset", "shop", "scores"], input="y\n")
    assert not_segment.exit_code == 1 and "Forget" not in not_segment.output


def test_reset_of_a_segment_node_still_asks(shop: Path) -> None:
    declined = CliRunner().invoke(app, ["reset", "shop", "to_segment"], input="n\n")
    assert declined.exit_code == 1 and "Forget what `to_segment` sent?" in declined.output
    accepted = CliRunner().invoke(app, ["reset", "shop", "to_segment"], input="y\n")
    assert accepted.exit_code == 0 and "Sync state of `to_segment` forgotten" in accepted.output


# -- errors say each thing once -------------------------------------------------------------------


def test_a_missing_write_key_names_the_node_once(shop: Path) -> None:
    result = CliRunner().invoke(app, ["run", "shop"])
    assert result.exit_code == 1
    (line,) = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert line == ("error: node `to_segment`: environment variable SEGLOOP_T_CLI_WRITE_KEY is not set; "
                    "export SEGLOOP_T_CLI_WRITE_KEY=... before running")


def test_a_missing_endpoint_names_the_node_once_and_the_key(shop: Path, monkeypatch) -> None:
    monkeypatch.setenv("SEGLOOP_T_CLI_WRITE_KEY", "wk")
    monkeypatch.delenv("SEGLOOP_T_CLI_ENDPOINT", raising=False)
    (shop / "pipelines" / "shop.yml").write_text(SHOP + "    endpoint: ${SEGLOOP_T_CLI_ENDPOINT}\n")
    error = Pipeline.load("shop").run().node("to_segment").error
    assert error == ("node `to_segment`: environment variable SEGLOOP_T_CLI_ENDPOINT is not set (used by "
                     "`endpoint:`); export SEGLOOP_T_CLI_ENDPOINT=... before running")


# -- show -----------------------------------------------------------------------------------------


def test_show_lists_metrics_one_per_line_and_payloads_as_pretty_json(shop: Path) -> None:
    ran = CliRunner().invoke(app, ["run", "shop", "--dry-run"])
    assert ran.exit_code == 0, ran.output
    result = CliRunner().invoke(app, ["show", "latest"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "dry run" in lines[0] and "pipeline `shop`" in lines[0]
    metrics = lines[lines.index("to_segment (segment)") + 1:]
    assert metrics[0].split() == ["mode", "diff"]
    assert ["to_send", "3"] in [line.split() for line in metrics[:20]]
    assert ["dry_run", "yes"] in [line.split() for line in metrics[:20]]
    # Payloads: indented JSON below, one field per line, not squeezed into a table cell.
    assert any("sample payloads" in line for line in lines)
    assert '  "event": "Sales Prediction",' in lines
    assert '    "iphone": 0.734,' in lines
    assert not any("sample_payloads" in line for line in lines)
    assert max(len(line) for line in lines if line[:1] in "┏┃┡│└") <= 80  # the node table fits


def test_show_without_runs_says_how_to_start_one(shop: Path) -> None:
    result = CliRunner().invoke(app, ["show"])
    assert result.exit_code == 1 and "no runs yet" in result.output and "segloop run PIPELINE" in result.output
    assert not (shop / ".segloop" / "state.db").exists()


# -- make demo ------------------------------------------------------------------------------------


def test_make_demo_prints_the_collector_line_before_the_next_command(tmp_path: Path) -> None:
    """The collector's `listening` line comes before `$ segloop validate`, once (stdout and stderr in one pipe)."""
    script = (
        "import sys; from pathlib import Path\n"
        f"sys.path.insert(0, {str(ROOT / 'examples')!r})\n"
        "import run_demo\n"
        f"proc = run_demo.start_collector(Path({str(tmp_path)!r}))\n"
        "print('\\n$ segloop validate', flush=True)\n"
        "proc.terminate(); proc.wait(20)\n"
    )
    (tmp_path / "segloop.yml").write_text("warehouses: {}\n")
    env = {**os.environ, "SEGMENT_WRITE_KEY": "demo-key"}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=120)
    lines = done.stdout.splitlines()
    listening = [i for i, line in enumerate(lines) if "listening on http://127.0.0.1:" in line]
    assert len(listening) == 1, done.stdout
    assert "for demo_crm; archive in .segloop/collector" in lines[listening[0]]  # one line, not wrapped
    assert listening[0] < lines.index("$ segloop validate"), done.stdout
