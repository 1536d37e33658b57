"""Progress you can trust: bars with count, rate and time left on a terminal; quiet elsewhere."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from segloop.cli import app
from segloop.pipeline import NodeResult
from segloop.progress import RichReporter, StepProgress

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Clock:
    """A fake clock for rich's rate and ETA: tests never depend on machine speed."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def terminal(width: int = 160) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=width, color_system=None), out


def plain(out: io.StringIO) -> str:
    return ANSI.sub("", out.getvalue())


def last_frame(out: io.StringIO) -> str:
    """What the terminal shows now: the last redraw of the live display."""
    return re.split(r"\r|\x1b\[2K", plain(out))[-1]


def test_a_node_sending_shows_count_rate_and_time_left_on_a_terminal() -> None:
    console, out = terminal()
    clock = Clock()
    with RichReporter(console, get_time=clock) as reporter:
        reporter.progress.live.auto_refresh = False
        reporter.node_started("to_segment", "segment")
        reporter.node_progress("to_segment", 0, 1000)
        clock.now += 10
        reporter.node_progress("to_segment", 250, None)
        reporter.progress.refresh()
        frame = plain(out)
        assert "to_segment" in frame and "segment" in frame
        assert "250/1,000 messages" in frame
        assert "25 messages/s" in frame  # 250 in 10 s
        assert "eta 0:00:30" in frame  # 750 to go at 25/s
        assert "0:00:10 elapsed" in frame
        assert "━" in frame  # the bar


def test_a_node_without_a_total_shows_its_count_and_rate() -> None:
    console, out = terminal()
    clock = Clock()
    with RichReporter(console, get_time=clock) as reporter:
        reporter.progress.live.auto_refresh = False
        reporter.node_started("clusters", "clusters")
        reporter.node_progress("clusters", 0, None)
        clock.now += 4
        reporter.node_progress("clusters", 2000, None)
        reporter.progress.refresh()
        frame = plain(out)
        assert "2,000 rows" in frame and "500 rows/s" in frame and "0:00:04 elapsed" in frame
        assert "eta" not in frame  # no total, no guess


def test_off_a_terminal_a_run_prints_one_plain_line_per_node() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=80)
    with RichReporter(console) as reporter:
        reporter.node_started("to_segment", "segment")
        reporter.node_progress("to_segment", 0, 1000)
        reporter.node_progress("to_segment", 1000, None)
        reporter.node_finished(NodeResult(name="to_segment", type="segment", status="success", rows=1000, seconds=1.5))
    assert out.getvalue() == "to_segment: success (1,000 rows, 1.50s)\n"


def test_a_step_shows_its_stages_with_rate_and_time_left() -> None:
    console, out = terminal()
    clock = Clock()
    with StepProgress(console, "generating events", get_time=clock) as bar:
        bar.progress.live.auto_refresh = False
        bar.progress.refresh()
        assert "generating events" in last_frame(out)
        bar.stage("writing schema demo_shop", total=10_000)
        bar.update(0)
        clock.now += 2
        bar.update(4_000)
        bar.progress.refresh()
        frame = last_frame(out)
        assert "writing schema demo_shop" in frame and "4,000/10,000 rows" in frame
        assert "2,000 rows/s" in frame and "eta 0:00:03" in frame


def test_bytes_are_shown_in_readable_units() -> None:
    console, out = terminal()
    clock = Clock()
    with StepProgress(console, "loading segment-logs", unit="bytes", get_time=clock) as bar:
        bar.progress.live.auto_refresh = False
        bar.update(0, 50_000_000)
        clock.now += 5
        bar.update(12_500_000)
        bar.progress.refresh()
        frame = last_frame(out)
        assert "12.5 MB/50.0 MB" in frame and "2.5 MB/s" in frame and "eta 0:00:15" in frame


def test_off_a_terminal_a_step_prints_nothing() -> None:
    out = io.StringIO()
    with StepProgress(Console(file=out, force_terminal=False), "generating events") as bar:
        bar.stage("writing", total=10)
        bar.update(10)
    assert out.getvalue() == ""


def test_load_archive_reports_every_byte(tmp_path: Path) -> None:
    from segloop.segment.archive.loader import load_archive
    from segloop.warehouses import Warehouse
    from tests.segment.archive.test_loader import msg, write

    write(tmp_path, [msg(i) for i in range(50)], source="web")
    write(tmp_path, [msg(i + 100) for i in range(50)], source="app")
    total = sum(f.stat().st_size for f in (tmp_path / "segment-logs").rglob("*.gz"))
    heard: list[tuple[int, int]] = []
    with Warehouse.duckdb(tmp_path / "wh.duckdb") as wh:
        load_archive(wh, tmp_path / "segment-logs", progress=lambda advance, of: heard.append((advance, of)))
        assert {of for _, of in heard} == {total}
        assert sum(advance for advance, _ in heard) == total
        heard.clear()
        load_archive(wh, tmp_path / "segment-logs", progress=lambda advance, of: heard.append((advance, of)))
        assert sum(advance for advance, _ in heard) == total  # loaded already: dealt with at once


def test_demo_data_off_a_terminal_prints_only_its_summary(make_workspace, monkeypatch) -> None:
    monkeypatch.chdir(make_workspace({}))
    result = CliRunner().invoke(app, ["demo-data", "--customers", "30", "--days", "30"])
    assert result.exit_code == 0, result.output
    assert len(result.output.splitlines()) == 1 and result.output.startswith("Wrote schema demo_shop: ")
    assert "\x1b" not in result.output and "━" not in result.output


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_demo_data_on_a_terminal_shows_a_bar_with_rate_and_eta(make_workspace) -> None:
    """The real command in a pseudo-terminal, as a user sees it."""
    import pty

    root = make_workspace({})
    leader, follower = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "150"}
    proc = subprocess.Popen([sys.executable, "-m", "segloop.cli", "demo-data", "--customers", "60", "--days", "60"],
                            cwd=root, stdin=follower, stdout=follower, stderr=follower, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the command exited and closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(120) == 0
    shown = ANSI.sub("", b"".join(chunks).decode(errors="replace"))
    assert "generating events of 60 customers" in shown
    assert re.search(r"writing schema demo_shop .*━.* ([\d,]+)/\1 customers .*[\d,]+ customers/s .*elapsed", shown), shown
    assert "Wrote schema demo_shop" in shown


def test_a_node_that_cannot_count_gets_an_eta_from_its_last_run() -> None:
    console, out = terminal()
    clock = Clock()
    with RichReporter(console, get_time=clock, expected={"likely_buyers": 8.0}) as reporter:
        reporter.progress.live.auto_refresh = False
        reporter.node_started("likely_buyers", "propensity")
        reporter.node_started("fresh", "sql")  # never ran: no guess
        clock.now += 2
        reporter.progress.refresh()
        frame = plain(out).rsplit("\r", 1)[-1]
        buyers = next(line for line in frame.splitlines() if "likely_buyers" in line)
        fresh = next(line for line in frame.splitlines() if "fresh" in line)
        assert "eta ~0:00:06" in buyers and "eta" not in fresh
        clock.now += 10  # slower than last time: say so, do not count below zero
        reporter.progress.refresh()
        frame = plain(out).rsplit("\r", 1)[-1]
        assert "last run took 0:00:08" in frame and "eta ~" not in frame


def test_the_cli_reads_each_nodes_last_duration(make_workspace) -> None:
    from segloop.pipeline import Pipeline
    from segloop.progress import last_durations

    root = make_workspace({"p": "name: p\nnodes:\n  a:\n    type: sql\n    sql: select 1 as x\n"
                                "  b:\n    type: sql\n    sql: select * from nosuch.t\n"})
    pipeline = Pipeline.load(root / "pipelines" / "p.yml")
    assert last_durations(pipeline) == {}
    result = pipeline.run()
    expected = last_durations(pipeline)
    assert set(expected) == {"a"}  # b failed: its time says nothing about a good run
    assert expected["a"] == pytest.approx(result.node("a").seconds, abs=0.01)  # stored rounded
