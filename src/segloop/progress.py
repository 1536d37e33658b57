"""What the terminal shows: progress bars while long steps run, tables afterwards.

On a terminal every long step (each pipeline node, sending to Segment, demo data, loading
archives) draws a bar with its count, rate and time left (`-:--:--` while the total is
unknown). Anywhere else (a pipe, a log file, CI) nothing is redrawn: a pipeline run prints
one line per finished node, and the other steps print only their closing summary.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from rich import filesize
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
)
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from segloop.operators import NODE_TYPES
from segloop.pipeline import NodeResult, Pipeline, Reporter, RunResult

if TYPE_CHECKING:  # pragma: no cover
    from segloop.store import RunRecord

def _progress_unit(node_type: str) -> str:
    """What a node type's progress counts (rows; the Segment node, messages sent)."""
    op = NODE_TYPES.get(node_type)
    return op.PROGRESS_UNIT if op is not None else "rows"


def _sends_to_segment(node_type: str) -> bool:
    op = NODE_TYPES.get(node_type)
    return op is not None and op.SENDS_TO_SEGMENT


STATUS_STYLE = {"success": "green", "failed": "red", "skipped": "yellow", "running": "cyan",
                "interrupted": "magenta"}


class CountColumn(ProgressColumn):
    """`12,345/50,000 rows` (or `12,345 rows` while the total is unknown)."""

    def render(self, task: Task) -> Text:
        unit = task.fields.get("unit", "")
        if unit == "bytes":  # `12.3/50.0 MB`
            done = filesize.decimal(int(task.completed))
            if task.total is not None:
                done = f"{done}/{filesize.decimal(int(task.total))}"
            return Text(done, style="progress.download")
        done = f"{int(task.completed):,}"
        if task.total is not None:
            done += f"/{int(task.total):,}"
        return Text(f"{done} {unit}".rstrip(), style="progress.download")


class RateColumn(ProgressColumn):
    """Items per second, e.g. `8,120 rows/s`: rich's moving average; the overall one when done."""

    def render(self, task: Task) -> Text:
        speed = task.speed
        if task.finished and task.finished_time:  # the whole node's average, shown when done
            speed = task.completed / task.finished_time
        if speed is None:
            return Text("")
        unit = task.fields.get("unit", "")
        if unit == "bytes":
            return Text(f"{filesize.decimal(int(speed))}/s", style="progress.data.speed")
        return Text(f"{speed:,.0f} {unit}/s" if unit else f"{speed:,.0f}/s", style="progress.data.speed")


class EtaColumn(ProgressColumn):
    """`eta 0:01:05` while the total is known and not reached.

    A node that cannot count its work (one SQL statement, a model fit) has no total; if it
    ran before, its last run's duration gives `eta ~0:00:04` (the `~` says it is a guess).
    """

    max_refresh = 0.5  # rich's own TimeRemainingColumn steadies the figure the same way

    def render(self, task: Task) -> Text:
        if task.finished:
            return Text("")
        if task.total is None:
            expected = task.fields.get("expected")
            if not expected or task.elapsed is None:
                return Text("")
            left = expected - task.elapsed
            if left < 0:
                return Text(f"last run took {_clock(expected)}", style="progress.remaining")
            return Text(f"eta ~{_clock(left)}", style="progress.remaining")
        if task.time_remaining is None:
            return Text("")
        return Text(f"eta {_clock(task.time_remaining)}", style="progress.remaining")


class NodeBarColumn(BarColumn):
    """A bar of the count when there is a total; else of the time the last run took, if known."""

    def render(self, task: Task) -> ProgressBar:
        expected = task.fields.get("expected")
        if task.total is not None or not expected or task.finished:
            return super().render(task)
        elapsed = task.elapsed or 0.0
        return ProgressBar(total=expected, completed=min(elapsed, expected * 0.99), width=self.bar_width,
                           pulse=elapsed > expected, animation_time=task.get_time(), style=self.style,
                           complete_style=self.complete_style, finished_style=self.finished_style,
                           pulse_style=self.pulse_style)


class ElapsedColumn(ProgressColumn):
    """`0:00:42 elapsed`."""

    def render(self, task: Task) -> Text:
        elapsed = task.finished_time if task.finished else task.elapsed
        return Text(f"{_clock(elapsed or 0)} elapsed", style="progress.elapsed")


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _progress(console: Console, label: str, get_time: Callable[[], float] | None) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn(label),
        NodeBarColumn(),
        CountColumn(),
        RateColumn(),
        EtaColumn(),
        ElapsedColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal,  # pipes and logs get summaries, not redraws
        get_time=get_time,
    )


class RichReporter(Reporter):
    """One progress bar per node, with its count, rate and time left."""

    def __init__(self, console: Console, get_time: Callable[[], float] | None = None,
                 expected: dict[str, float] | None = None):
        """``expected``: seconds each node took last time, for an eta of nodes that cannot count."""
        self.console = console
        self.expected = expected or {}
        self.progress = _progress(console, "[bold]{task.fields[node]}[/bold] [dim]{task.fields[kind]}[/dim]", get_time)
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def node_started(self, name: str, node_type: str) -> None:
        self.tasks[name] = self.progress.add_task("", total=None, node=name, kind=node_type,
                                                  unit=_progress_unit(node_type),
                                                  expected=self.expected.get(name))

    def node_progress(self, name: str, advance: int, total: int | None) -> None:
        task = self.tasks.get(name)
        if task is None:
            return
        if total is not None:
            self.progress.update(task, total=total)
        self.progress.advance(task, advance)

    def node_finished(self, result: NodeResult) -> None:
        task = self.tasks.get(result.name)
        if task is None:
            return
        state = self.progress.tasks[task]
        if result.status == "success":  # a full bar; a failed node's stays where it stopped
            done = max(result.rows if result.rows is not None else int(state.completed), 1)
            self.progress.update(task, total=max(done, int(state.total or 0)), completed=max(done, int(state.total or 0)))
        else:
            self.progress.stop_task(task)
        if not self.console.is_terminal:
            rows = "" if result.rows is None else f"{result.rows:,} rows, "
            self.console.print(f"{result.name}: {result.status} ({rows}{result.seconds:.2f}s)", highlight=False)


def last_durations(pipeline: Pipeline) -> dict[str, float]:
    """How long each node took in its last successful run (an eta for nodes that cannot count)."""
    if not pipeline.workspace.has_history():
        return {}
    store = pipeline.workspace.history()
    try:
        last = {name: store.last_node_run(pipeline.name, name) for name in pipeline.config.nodes}
    finally:
        store.close()
    return {name: record.seconds for name, record in last.items() if record and record.seconds}


class StepProgress:
    """A progress bar for one long step outside a pipeline run (demo data, archive loading).

    ``update(advance, total)`` moves it; ``stage(text)`` renames what it is doing. Off a
    terminal it prints nothing: the command's closing summary says what happened.
    """

    def __init__(self, console: Console, description: str, unit: str = "rows",
                 get_time: Callable[[], float] | None = None):
        self.progress = _progress(console, "{task.description}", get_time)
        self.unit = unit
        self.task = self.progress.add_task(description, total=None, unit=unit)

    def __enter__(self) -> StepProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, advance: int, total: int | None = None) -> None:
        if total is not None:
            self.progress.update(self.task, total=total)
        self.progress.advance(self.task, advance)

    def stage(self, description: str, total: int | None = None, unit: str | None = None) -> None:
        """A new phase of the step: its own count starts at zero."""
        self.progress.reset(self.task, total=total, description=description, unit=unit or self.unit)


def print_summary(console: Console, result: RunResult) -> None:
    rows = []
    for node in result.nodes:
        note = node.error or "; ".join(node.warnings) or _headline(node.metrics)
        if node.metrics.get("materialized") == "view" and not node.error:
            note = "view" + (f"; {note}" if note else "")
        rows.append((node.name, node.type, node.status, node.rows, node.seconds, note))
    console.print(_node_table(console, rows, f"run {result.run_id} of `{result.pipeline}`: {result.status}"))


def _node_table(console: Console, nodes: Sequence[tuple[str, str, str, int | None, float | None, str]],
                title: str | None = None) -> Table:
    """One line per node: name, type, status, rows, seconds and a note (error or headline)."""
    table = Table(title=title, title_justify="left")
    # Node names and figures are never cut; the note wraps. A narrow terminal drops `type`.
    show_type = console.width >= 110
    for column in ("node", "type", "status", "rows", "seconds"):
        if column != "type" or show_type:
            table.add_column(column, justify="right" if column in ("rows", "seconds") else "left", no_wrap=True)
    table.add_column("note", ratio=1, min_width=12)
    for name, kind, status, rows, seconds, note in nodes:
        cells = [name, kind, f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]",
                 "" if rows is None else f"{rows:,}", "" if seconds is None else f"{seconds:.2f}", note]
        table.add_row(*(cells if show_type else cells[:1] + cells[2:]))
    return table


def _headline(metrics: dict[str, Any]) -> str:
    """A short line from a node's metrics for the summary table."""
    if metrics.get("dry_run") and "to_send" in metrics:  # a Segment node in a dry run
        unchanged = int(metrics.get("unchanged", 0) or 0)
        return f"dry run: would send {int(metrics['to_send']):,}" + (f", {unchanged:,} unchanged" if unchanged else "")
    keys = ("sent", "unchanged", "held_out", "unknown_skipped", "rejected", "failed", "match_rate",
            "auc", "ndcg_at_10", "silhouette", "stability_ari", "holdout_spearman", "holdout_gini",
            "log_likelihood", "lift")
    optional = ("unchanged", "held_out", "unknown_skipped", "rejected", "failed")  # shown only when not zero
    parts = [f"{k}={metrics[k]:.3g}" if isinstance(metrics[k], float) else f"{k}={metrics[k]}"
             for k in keys if k in metrics and metrics[k] is not None and not isinstance(metrics[k], dict | list)
             and not (k in optional and metrics[k] == 0)]
    return ", ".join(parts)


def print_runs(console: Console, runs: list[RunRecord]) -> None:
    if not runs:
        console.print("No runs yet. Start one with: segloop run PIPELINE")
        return
    table = Table(title="recent runs", title_justify="left")
    # Run ids are what people copy into `segloop show` and grep for: on one line, whole
    # (they hold the start time, so a narrow terminal leaves that column out).
    wide = console.width >= 110
    longest = {"run id": max(len(r.id) for r in runs), "pipeline": min(max(len(r.pipeline) for r in runs), 24)}
    for column in ("run id", "pipeline", "status", *(("started (UTC)",) if wide else ()), "sec", "nodes", "sent"):
        table.add_column(column, no_wrap=column in longest, min_width=longest.get(column),
                         overflow="fold" if column == "run id" else "ellipsis")
    for run in runs:
        ok = sum(1 for n in run.nodes if n.status == "success")
        sent = sum(int(n.metrics.get("sent", 0) or 0) for n in run.nodes)
        failed = sum(int(n.metrics.get("failed", 0) or 0) for n in run.nodes if _sends_to_segment(n.type))
        seconds = f"{run.seconds:.1f}" if run.seconds is not None else ""
        label = "dry run" if run.dry_run and run.status == "success" else run.status + (" (dry)" if run.dry_run else "")
        status = f"[{STATUS_STYLE.get(run.status, 'white')}]{label}[/]"
        table.add_row(run.id, run.pipeline, status, *((run.started_at[:19],) if wide else ()), seconds,
                      f"{ok}/{len(run.nodes)}", f"{sent:,}" + (f" ({failed:,} failed)" if failed else ""))
    console.print(table)


def print_run(console: Console, run: RunRecord) -> None:
    """`segloop show`: a table of the nodes, each node's metrics as a list, sample payloads as JSON."""
    label = "dry run" if run.dry_run and run.status == "success" else run.status + (" (dry run)" if run.dry_run else "")
    seconds = f", {run.seconds:.1f}s" if run.seconds is not None else ""
    console.print(f"[bold]run {run.id}[/bold] of pipeline `{run.pipeline}`: "
                  f"[{STATUS_STYLE.get(run.status, 'white')}]{label}[/]", highlight=False, soft_wrap=True)
    console.print(f"file {run.file or '(none)'}, started {run.started_at[:19].replace('T', ' ')} UTC{seconds}",
                  highlight=False, soft_wrap=True)
    if run.error:
        console.print(f"[red]{run.error}[/red]", highlight=False, soft_wrap=True)
    console.print(_node_table(console, [
        (node.node, node.type, node.status, node.rows, node.seconds,
         node.error or "; ".join(node.metrics.get("warnings") or []) or _headline(node.metrics))
        for node in run.nodes]))
    for node in run.nodes:
        items = metric_items(node.metrics)
        if items:
            console.print(f"\n[bold]{node.node}[/bold] [dim]({node.type})[/dim]", highlight=False)
            grid = Table.grid(padding=(0, 2))
            grid.add_column(style="dim", no_wrap=True)
            grid.add_column(overflow="fold")
            for key, value in items:
                grid.add_row(f"  {key}", value)
            console.print(grid)
    for node in run.nodes:
        payloads = node.metrics.get("sample_payloads") or []
        if payloads:
            console.print(f"\n[bold]{node.node}[/bold]: {len(payloads)} sample payloads "
                          "(what it sends, or would send in a dry run)", highlight=False)
            for payload in payloads:
                console.print_json(json.dumps(payload, default=str))


# Metrics shown apart from the list: the compiled SQL (in the report) and payloads (as JSON).
HIDDEN_METRICS = frozenset({"query", "sample_payloads", "warnings"})


def metric_items(metrics: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """A node's metrics as (name, text) lines: nested values as `parent.child`, one per line."""
    items: list[tuple[str, str]] = []
    for key, value in metrics.items():
        if not prefix and key in HIDDEN_METRICS:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            items.extend(metric_items(value, f"{name}."))
        else:
            items.append((name, _metric_text(value)))
    return items


def _metric_text(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.6g}" if abs(value) < 1e6 else f"{value:,.0f}"
    if isinstance(value, list) and all(not isinstance(v, dict | list) for v in value):
        return ", ".join(_metric_text(v) for v in value) or "(none)"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return "" if value is None else str(value)
