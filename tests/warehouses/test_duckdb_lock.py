"""A DuckDB file held by another process: connect waits up to `lock_timeout`, then says who holds it."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from segloop.errors import WarehouseLockedError
from segloop.warehouses import Warehouse
from segloop.warehouses.duckdb import DuckDBConfig

# Opens the file (retrying while this test process has it), says so, holds it, exits.
HOLD = """
import sys, time, duckdb
while True:
    try:
        con = duckdb.connect(sys.argv[1])
        break
    except duckdb.IOException:
        time.sleep(0.02)
con.execute("CREATE TABLE IF NOT EXISTS held (x INTEGER)")
print("held", flush=True)
time.sleep(float(sys.argv[2]))
con.close()
"""


@contextmanager
def held_by_another_process(path: Path, seconds: float) -> Iterator[subprocess.Popen[str]]:
    """A separate process that holds the DuckDB file ``path`` for ``seconds`` once this yields."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_connect_waits_for_a_lock_released_after_a_second(tmp_path: Path):
    file = tmp_path / "wh.duckdb"
    with held_by_another_process(file, 1.0):
        started = time.monotonic()
        with Warehouse.connect(DuckDBConfig(path=str(file), lock_timeout=10), tmp_path) as wh:
            waited = time.monotonic() - started
            assert "held" in wh.list_tables("main")  # the holder's write is there
    assert 0.5 <= waited < 8, f"connect returned after {waited:.2f} s; the holder kept the file ~1 s"


@pytest.mark.parametrize("timeout", [0.0, 0.6], ids=["fail-at-once", "short-wait"])
def test_connect_fails_clearly_when_the_lock_is_not_released_in_time(tmp_path: Path, timeout: float):
    file = tmp_path / "wh.duckdb"
    with held_by_another_process(file, 30.0) as holder:
        started = time.monotonic()
        with pytest.raises(WarehouseLockedError) as caught:
            Warehouse.connect(DuckDBConfig(path=str(file), lock_timeout=timeout), tmp_path)
        waited = time.monotonic() - started
    message = str(caught.value)
    assert str(file) in message
    assert f"PID {holder.pid}" in message  # who holds it
    assert "lock_timeout" in message and "stop it" in message  # what to do
    assert timeout <= waited < timeout + 2.0, f"gave up after {waited:.2f} s with lock_timeout {timeout}"
    if timeout:
        assert f"waited {timeout:g} s" in message


def test_lock_timeout_is_a_warehouse_setting(tmp_path: Path):
    assert DuckDBConfig().lock_timeout == 30.0
    assert DuckDBConfig.model_validate({"type": "duckdb", "lock_timeout": 5}).lock_timeout == 5.0
    with pytest.raises(ValueError, match="lock_timeout"):
        DuckDBConfig.model_validate({"type": "duckdb", "lock_timeout": -1})
