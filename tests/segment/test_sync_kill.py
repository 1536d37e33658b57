"""kill -9 a pipeline mid-send, run it again: every row arrives once, nothing is lost.

The real parts: the pipeline runs as `segloop run` in a subprocess against a DuckDB file,
the collector on a loopback port archives what it accepts and drops repeated messageIds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from segloop.segment.archive.files import read_all_messages
from segloop.segment.collector.app import RunningCollector, serve_in_thread
from segloop.warehouses import DuckDBConfig, Warehouse
from tests.operators.segment_fixtures import scores_to_segment

ROWS = 20_000
KEY = "wk-kill-test"


def pipeline(url: str) -> str:
    return scores_to_segment(key_env="SEGLOOP_KILL_KEY", endpoint=url, call="identify", customer_id="user_id",
                             traits="[score, segment]", max_in_flight=2)


def hold_archive_after(collector: RunningCollector, messages: int) -> tuple[threading.Event, threading.Event]:
    """Once ``messages`` more are archived, hold the collector's next write until released.

    Sets the first event when a write is held. A kill that waits for it lands mid-run however
    fast or slow the machine is (polling the counters let a fast run finish first).
    """
    writer = collector.collector.committer.writer
    append, written = writer.append, [0]
    reached, release = threading.Event(), threading.Event()

    def held_append(groups: dict[tuple[str, int], list[bytes]]) -> None:
        if written[0] >= messages:
            reached.set()
            release.wait(120)
        append(groups)
        written[0] += sum(len(lines) for lines in groups.values())

    writer.append = held_append  # type: ignore[method-assign]
    return reached, release


def segloop_run(root: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "SEGLOOP_KILL_KEY": KEY}
    return subprocess.Popen([sys.executable, "-m", "segloop.cli", "run", "shop"], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def kill_once_archived(root: Path, collector: RunningCollector, messages: int) -> int:
    """Start `segloop run`, SIGKILL it once ``messages`` more are archived; the collector's
    accepted count at the kill."""
    reached, release = hold_archive_after(collector, messages)
    killed = segloop_run(root)
    try:
        assert reached.wait(120), f"the run never got {messages} of its rows archived"
        killed.send_signal(signal.SIGKILL)
        killed.wait(10)
        return int(collector.stats["accepted"])
    finally:
        release.set()


def run_to_end(root: Path, timeout: float = 120) -> None:
    done = segloop_run(root)
    output, _ = done.communicate(timeout=timeout)
    assert done.returncode == 0, output


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_delivers_every_row_once(make_workspace, tmp_path: Path) -> None:
    with serve_in_thread({KEY: "crm"}, tmp_path / "collector", latency_ms=15) as collector:
        root = make_workspace({"shop": pipeline(collector.url)})
        with Warehouse.connect(DuckDBConfig(), root) as wh:
            wh.create_table("scores", pa.table({
                "user_id": [f"u{i}" for i in range(ROWS)],
                "score": [i % 97 / 97 for i in range(ROWS)],
                "segment": [f"s{i % 5}" for i in range(ROWS)],
            }), schema="src")

        accepted_at_kill = kill_once_archived(root, collector, ROWS // 4)  # a quarter of the rows
        assert 0 < accepted_at_kill < ROWS, "the kill must land mid-run"
        run_to_end(root)

        stats = collector.stats
        archived = [m for m in read_all_messages(tmp_path / "collector") if m.get("type") == "identify"]
        ids = Counter(m["messageId"] for m in archived)
        assert len(ids) == ROWS and max(ids.values()) == 1  # every row, once
        assert {m["userId"] for m in archived} == {f"u{i}" for i in range(ROWS)}
        resent = stats["received"] - ROWS
        # Only the window between the last checkpoint and the kill is sent again, and the
        # collector drops those as duplicates (same messageIds).
        assert resent == stats["deduped"]
        assert resent < accepted_at_kill
        print(f"accepted at kill {accepted_at_kill}, resent {resent}, deduped {stats['deduped']}")

        run_to_end(root, timeout=60)
        assert collector.stats["received"] == stats["received"]  # nothing left to send


FLIP_ROWS = 10_000


def write_scores(root: Path, score: float) -> None:
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        wh.create_table("scores", pa.table({
            "user_id": [f"u{i}" for i in range(FLIP_ROWS)],
            "score": [score] * FLIP_ROWS,
            "segment": ["s"] * FLIP_ROWS,
        }), schema="src")


@pytest.mark.slow
def test_kill_9_while_values_change_back_then_rerun_delivers_every_change_once(
        make_workspace, tmp_path: Path) -> None:
    """1 -> 2 -> 1 (killed mid-send, run again): the third value arrives once for every user.

    The third run's messages have the first run's payloads, so only the previous acknowledged
    id tells them apart from the first run's; the re-run after the kill must derive the same
    ids again, so the collector drops what the killed run had already delivered.
    """
    with serve_in_thread({KEY: "crm"}, tmp_path / "collector", latency_ms=15) as collector:
        root = make_workspace({"shop": pipeline(collector.url)})
        for score in (1.0, 2.0):
            write_scores(root, score)
            run_to_end(root)
        assert collector.stats["accepted"] == 2 * FLIP_ROWS

        write_scores(root, 1.0)
        # Half the rows: at 15 ms a request and two in flight that takes >= 0.375 s on any
        # machine, so a checkpoint (every 0.25 s) has been written before the kill.
        at_kill = kill_once_archived(root, collector, FLIP_ROWS // 2) - 2 * FLIP_ROWS
        assert 0 < at_kill < FLIP_ROWS, "the kill must land mid-run"
        run_to_end(root)
        stats = collector.stats

    archived = sorted((m for m in read_all_messages(tmp_path / "collector") if m.get("type") == "identify"),
                      key=lambda m: m["receivedAt"])
    assert len(archived) == 3 * FLIP_ROWS == stats["accepted"]
    per_user: dict[str, list[float]] = {}
    for m in archived:
        per_user.setdefault(m["userId"], []).append(m["traits"]["score"])
    assert per_user == {f"u{i}": [1.0, 2.0, 1.0] for i in range(FLIP_ROWS)}  # every change, once
    assert len({m["messageId"] for m in archived}) == 3 * FLIP_ROWS
    resent = stats["received"] - 3 * FLIP_ROWS
    assert resent == stats["deduped"] and resent < at_kill
