"""A collector loading into a DuckDB file holds it only while it loads.

Runs and queries in other processes get the file between loads; a load round that finds
the file held by another process is skipped and the next one loads what it missed.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from segloop.errors import WarehouseLockedError
from segloop.segment.archive.loader import ArchiveLoader, LoadResult
from segloop.segment.collector.app import serve_in_thread
from segloop.warehouses import Warehouse
from segloop.warehouses.duckdb import DuckDBConfig
from tests.warehouses.test_duckdb_lock import held_by_another_process


def _batch(url: str, key: str, ids: list[str]) -> None:
    body = {"batch": [{"type": "track", "userId": "u", "event": "Signed Up", "messageId": i} for i in ids]}
    deadline = time.monotonic() + 20
    while True:
        try:
            res = httpx.post(f"{url}/v1/batch", content=orjson.dumps(body), auth=(key, ""),
                             headers={"Content-Type": "application/json"})
            break
        except httpx.ConnectError:  # the command's server is still starting
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert res.status_code == 200


def _track_ids(wh: Warehouse) -> list[str]:
    if "web" not in wh.list_schemas() or "tracks" not in wh.list_tables("web"):
        return []
    return [str(v) for v in wh.sql("SELECT id FROM web.tracks").to_pyarrow().column(0).to_pylist()]


def _wait_for(condition: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"waited {seconds} s for {what}"
        time.sleep(0.05)


def test_queries_in_another_process_work_while_the_collector_command_loads(tmp_path: Path):
    """`segloop collector --load-every` no longer locks the workspace's DuckDB file between loads."""
    target = tmp_path / "wh.duckdb"
    proc = subprocess.Popen(
        [sys.executable, "-m", "segloop.cli", "collector", "--port", "0", "--key", "k1=web",
         "--data", str(tmp_path / "data"), "--load-every", "250ms", "--duckdb", str(target)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        ids = [f"m{i}" for i in range(100)]
        _batch(url, "k1", ids)
        seen: list[str] = []
        opened = 0
        deadline = time.monotonic() + 10
        while sorted(seen) != sorted(ids):  # several opens, some of them between loads
            assert time.monotonic() < deadline, f"only {len(seen)} of 100 messages loaded after 10 s"
            # lock_timeout 5 s: a load takes well under that; a file kept open forever does not.
            with Warehouse.connect(DuckDBConfig(path=str(target), lock_timeout=5), tmp_path,
                                   create_schema=False) as wh:
                seen = _track_ids(wh)
            opened += 1
            time.sleep(0.1)
        assert opened >= 1
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr
    assert "load skipped" not in stderr  # the opens waited for a load, or the load for them


def test_a_round_that_finds_the_file_held_is_skipped_and_the_next_loads_everything(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    target = tmp_path / "wh.duckdb"
    base = ArchiveLoader(DuckDBConfig(path=str(target), lock_timeout=0.2), tmp_path)
    loads: list[LoadResult] = []

    def loader(data_dir: Path) -> LoadResult:
        result = base(data_dir)
        loads.append(result)
        return result

    first = [f"a{i}" for i in range(40)]
    second = [f"b{i}" for i in range(60)]
    caplog.set_level(logging.WARNING, logger="segloop.collector")
    with serve_in_thread({"k1": "web"}, tmp_path / "data", load_every_s=0.3, loader=loader) as running:
        collector = running.collector
        _batch(running.url, "k1", first)
        _wait_for(lambda: sum(r.messages for r in loads) == 40, 10, "the first batch to load")
        with held_by_another_process(target, 1.5):  # e.g. a long `segloop run`
            _batch(running.url, "k1", second)  # archived while the file is held
            _wait_for(lambda: collector.stats.loads_skipped >= 1, 5, "a skipped round")
            loaded_while_held = sum(r.messages for r in loads)
        _wait_for(lambda: sum(r.messages for r in loads) >= 100, 10, "the next round after the holder let go")
        assert collector.stats_dict()["loads_skipped"] >= 1
    assert loaded_while_held == 40  # nothing loaded while the other process held the file
    assert sum(r.messages for r in loads) == 100  # every archived message read exactly once
    with Warehouse.connect(DuckDBConfig(path=str(target), lock_timeout=5), tmp_path, create_schema=False) as wh:
        ids = _track_ids(wh)
    assert sorted(ids) == sorted(first + second)  # nothing lost, nothing twice
    skipped = [r.getMessage() for r in caplog.records if "load skipped" in r.getMessage()]
    assert skipped and "next round" in skipped[0] and str(target) in skipped[0]


def test_the_last_load_on_shutdown_is_skipped_not_raised_when_the_file_is_held(tmp_path: Path):
    target = tmp_path / "wh.duckdb"
    loader = ArchiveLoader(DuckDBConfig(path=str(target), lock_timeout=0.1), tmp_path)
    with held_by_another_process(target, 30.0):
        with serve_in_thread({"k1": "web"}, tmp_path / "data", load_every_s=60, loader=loader) as running:
            _batch(running.url, "k1", ["c1", "c2"])
        assert running.collector.stats.loads_skipped == 1  # leaving the block did not raise
    # What the collector caught: a load that finds the file held raises WarehouseLockedError.
    with held_by_another_process(target, 30.0), pytest.raises(WarehouseLockedError):
        loader(tmp_path / "data")
    loader(tmp_path / "data")  # the archive still holds them: a later load gets both
    with Warehouse.connect(DuckDBConfig(path=str(target)), tmp_path, create_schema=False) as wh:
        assert sorted(_track_ids(wh)) == ["c1", "c2"]


def test_a_round_before_anything_arrived_loads_nothing_and_leaves_the_file_alone(tmp_path: Path):
    target = tmp_path / "wh.duckdb"
    loader = ArchiveLoader(DuckDBConfig(path=str(target), lock_timeout=0), tmp_path)
    with held_by_another_process(target, 30.0):  # would raise if the round opened the file
        result = loader(tmp_path / "data")
    assert result.messages == 0 and result.files_loaded == 0
