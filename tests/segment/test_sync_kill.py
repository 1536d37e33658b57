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

from segloop.segment.archive import read_all_messages
from segloop.segment.collector import serve_in_thread
from segloop.warehouse import DuckDBConfig, Warehouse

ROWS = 20_000
KEY = "wk-kill-test"
PIPELINE = """\
name: shop
nodes:
  scores:
    type: sql
    sql: select * from src.scores
  to_segment:
    type: segment
    input: scores
    write_key: ${{SEGLOOP_KILL_KEY}}
    endpoint: {url}
    call: identify
    customer_id: user_id
    traits: [score, segment]
    max_in_flight: 2
"""


def segloop_run(root: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "SEGLOOP_KILL_KEY": KEY}
    return subprocess.Popen([sys.executable, "-m", "segloop.cli", "run", "shop"], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_delivers_every_row_once(make_workspace, tmp_path: Path) -> None:
    with serve_in_thread({KEY: "crm"}, tmp_path / "collector", latency_ms=15) as collector:
        root = make_workspace({"shop": PIPELINE.format(url=collector.url)})
        with Warehouse.connect(DuckDBConfig(), root) as wh:
            wh.create_table("scores", pa.table({
                "user_id": [f"u{i}" for i in range(ROWS)],
                "score": [i % 97 / 97 for i in range(ROWS)],
                "segment": [f"s{i % 5}" for i in range(ROWS)],
            }), schema="src")

        # Once a quarter of the rows are archived, the collector holds the next write until
        # the kill: the run cannot finish first however fast or slow the machine is.
        writer = collector.collector.committer.writer
        append, written = writer.append, [0]
        reached, release = threading.Event(), threading.Event()

        def held_append(groups: dict[tuple[str, int], list[bytes]]) -> None:
            if written[0] >= ROWS // 4:
                reached.set()
                release.wait(120)
            append(groups)
            written[0] += sum(len(lines) for lines in groups.values())

        writer.append = held_append  # type: ignore[method-assign]
        first = segloop_run(root)
        try:
            assert reached.wait(120), "the first run never got a quarter of its rows archived"
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            accepted_at_kill = collector.stats["accepted"]
        finally:
            release.set()
        assert 0 < accepted_at_kill < ROWS, "the kill must land mid-run"

        second = segloop_run(root)
        output, _ = second.communicate(timeout=120)
        assert second.returncode == 0, output

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

        third = segloop_run(root)
        output, _ = third.communicate(timeout=60)
        assert third.returncode == 0 and collector.stats["received"] == stats["received"], output
