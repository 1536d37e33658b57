"""A run killed with kill -9 is shown as `interrupted`, not `running` forever.

The real parts: `segloop run` in a subprocess (sending to the collector on a loopback port,
slowly, so it is killed mid-run), the run history file, the CLI in subprocesses and the
web app's pages.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from segloop.config import Workspace
from segloop.pipeline import Pipeline
from segloop.segment.collector.app import serve_in_thread
from segloop.store import RunStore, current_owner
from segloop.warehouses import DuckDBConfig, Warehouse
from tests.operators.segment_fixtures import scores_to_segment

KEY = "wk-interrupt-test"
ROWS = 5_000


def cli(root: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SEGLOOP_INTERRUPT_KEY": KEY, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "segloop.cli", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=timeout)


def history(root: Path) -> RunStore:
    return RunStore(root / ".segloop" / "state.db")


@pytest.fixture
def shop(make_workspace, tmp_path: Path):
    with serve_in_thread({KEY: "crm"}, tmp_path / "collector", latency_ms=40) as collector:
        root = make_workspace({"shop": scores_to_segment(
            key_env="SEGLOOP_INTERRUPT_KEY", endpoint=collector.url, call="identify", customer_id="user_id",
            traits="[score]", max_in_flight=1)})
        with Warehouse.connect(DuckDBConfig(), root) as wh:
            wh.create_table("scores", pa.table({"user_id": [f"u{i}" for i in range(ROWS)],
                                                "score": [i / ROWS for i in range(ROWS)]}), schema="src")
        yield root, collector


def kill_mid_run(root: Path, collector) -> str:
    """Start `segloop run`, SIGKILL it while it sends; returns the killed run's id."""
    env = {**os.environ, "SEGLOOP_INTERRUPT_KEY": KEY}
    proc = subprocess.Popen([sys.executable, "-m", "segloop.cli", "run", "shop"], cwd=root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while collector.stats["accepted"] < 200 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert 0 < collector.stats["accepted"] < ROWS, "the kill must land mid-run"
    db = sqlite_rows(root)
    assert [status for _, status in db] == ["running"]  # what the history held at the kill
    return db[0][0]


def sqlite_rows(root: Path) -> list[tuple[str, str]]:
    import sqlite3

    con = sqlite3.connect(root / ".segloop" / "state.db")
    try:
        return [(row[0], row[1]) for row in con.execute("SELECT id, status FROM runs ORDER BY started_at")]
    finally:
        con.close()


@pytest.mark.slow
def test_a_killed_run_is_interrupted_in_cli_and_ui(shop) -> None:
    from starlette.testclient import TestClient

    from segloop.web.app import create_app

    root, collector = shop
    run_id = kill_mid_run(root, collector)

    listed = cli(root, "runs")
    assert listed.returncode == 0, listed.stderr
    [line] = [line for line in listed.stdout.splitlines() if run_id in line]
    assert "interrupted" in line and "running" not in line
    shown = cli(root, "show", run_id)
    assert "interrupted" in shown.stdout and "ended before the run finished" in shown.stdout

    app = TestClient(create_app(Workspace.load(root)), base_url="http://127.0.0.1:8765")
    for page in (f"/runs/{run_id}", "/pipelines/shop"):
        html = app.get(page).text
        assert 'http-equiv="refresh"' not in html and "interrupted" in html, page
    report = app.get(f"/runs/{run_id}/report")  # what it did before the kill
    assert report.status_code == 200 and "interrupted" in report.text

    rerun = cli(root, "run", "shop")  # resumes: the rest of the rows, the run succeeds
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    store = history(root)
    try:
        statuses = [(r.id, r.status) for r in store.list_runs("shop")]
    finally:
        store.close()
    assert statuses[1:] == [(run_id, "interrupted")] and statuses[0][1] == "success"


def test_the_next_run_marks_a_run_it_cannot_check_interrupted(shop, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run from another machine (or from before owners were recorded) cannot be checked by
    a reader; the next run of its pipeline holds the lock, so it knows that run is over."""
    root, _collector = shop
    store = history(root)
    try:
        elsewhere = store.start_run("shop", None, None)
        live = store.start_run("other", None, None)  # owned by this process: alive
        store._db.execute("UPDATE runs SET owner = 'another-host:4242:1' WHERE id = ?", (elsewhere,))
        store._db.commit()
        assert {r.id: r.status for r in store.list_runs()} == {elsewhere: "running", live: "running"}
    finally:
        store.close()
    monkeypatch.setenv("SEGLOOP_INTERRUPT_KEY", KEY)
    result = Pipeline.load(root / "pipelines" / "shop.yml").run()
    assert result.ok
    store = history(root)
    try:
        status = {r.id: r.status for r in store.list_runs()}
        assert status[elsewhere] == "interrupted" and status[live] == "running"  # another pipeline's
        assert status[result.run_id] == "success"
    finally:
        store.close()


def test_a_reader_leaves_a_run_whose_process_lives_alone(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "state.db")
    try:
        mine = store.start_run("p", None, None)
        assert store.get_run(mine).status == "running"
        assert store._db.execute("SELECT owner FROM runs").fetchone()[0] == current_owner()
        # a process that ended: a child that exited (reaped), whose pid is free again
        child = subprocess.Popen([sys.executable, "-c", "pass"])
        child.wait()
        gone = store.start_run("p", None, None)
        owner = current_owner().rsplit(":", 2)[0] + f":{child.pid}:"
        store._db.execute("UPDATE runs SET owner = ? WHERE id = ?", (owner, gone))
        store._db.commit()
        status = {r.id: r.status for r in store.list_runs()}
        assert status == {mine: "running", gone: "interrupted"}
    finally:
        store.close()
