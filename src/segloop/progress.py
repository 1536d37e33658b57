"""What the terminal shows: a progress bar per node while it runs, tables afterwards."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from segloop.pipeline import NodeResult, Reporter, RunResult

if TYPE_CHECKING:  # pragma: no cover
    from segloop.store import RunRecord

STATUS_STYLE = {"success": "green", "failed": "red", "skipped": "yellow", "running": "cyan",
                "interrupted": "magenta"}


class RichReporter(Reporter):
    """One progress line per node; nodes that report counts get a bar with a rate."""

    def __init__(self, console: Console):
        self.console = console
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.fields[node]}[/bold] [dim]{task.fields[kind]}[/dim]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
            disable=not console.is_terminal,
        )
        self.tasks: dict[str, TaskID] = {}
        self.started: dict[str, float] = {}

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def node_started(self, name: str, node_type: str) -> None:
        self.tasks[name] = self.progress.add_task("", total=None, node=name, kind=node_type, rate="")

    def node_progress(self, name: str, advance: int, total: int | None) -> None:
        task = self.tasks.get(name)
        if task is None:
            return
        if total is not None:
            self.progress.update(task, total=total)
        self.progress.advance(task, advance)
        state = self.progress.tasks[self.tasks[name]]
        if state.elapsed:
            self.progress.update(task, rate=f"{state.completed / state.elapsed:,.0f}/s")

    def node_finished(self, result: NodeResult) -> None:
        task = self.tasks.get(result.name)
        if task is None:
            return
        state = self.progress.tasks[task]
        done = result.rows if result.rows is not None else int(state.completed)
        self.progress.update(task, total=max(done, 1), completed=max(done, 1) if result.status == "success" else state.completed)
        if not self.console.is_terminal:
            rows = "" if result.rows is None else f"{result.rows:,} rows, "
            self.console.print(f"{result.name}: {result.status} ({rows}{result.seconds:.2f}s)")


def print_summary(console: Console, result: RunResult) -> None:
    table = Table(title=f"run {result.run_id} of `{result.pipeline}`: {result.status}", title_justify="left")
    # Node names and figures are never cut; the note wraps. A narrow terminal drops `type`.
    show_type = console.width >= 110
    for column in ("node", "type", "status", "rows", "seconds"):
        if column != "type" or show_type:
            table.add_column(column, justify="right" if column in ("rows", "seconds") else "left", no_wrap=True)
    table.add_column("note", ratio=1, min_width=12)
    for node in result.nodes:
        note = node.error or "; ".join(node.warnings) or _headline(node.metrics)
        if node.metrics.get("materialized") == "view" and not node.error:
            note = "view" + (f"; {note}" if note else "")
        cells = [node.name, node.type, f"[{STATUS_STYLE.get(node.status, 'white')}]{node.status}[/]",
                 "" if node.rows is None else f"{node.rows:,}", f"{node.seconds:.2f}", note]
        table.add_row(*(cells if show_type else cells[:1] + cells[2:]))
    console.print(table)


def _headline(metrics: dict[str, Any]) -> str:
    """A short line from a node's metrics for the summary table."""
    if metrics.get("dry_run") and "to_send" in metrics:  # a Segment node in a dry run
        unchanged = int(metrics.get("unchanged", 0) or 0)
        return f"dry run: would send {int(metrics['to_send']):,}" + (f", {unchanged:,} unchanged" if unchanged else "")
    keys = ("sent", "unchanged", "rejected", "failed", "auc", "ndcg_at_10", "silhouette", "log_likelihood")
    optional = ("unchanged", "rejected", "failed")  # shown only when not zero
    parts = [f"{k}={metrics[k]:.3g}" if isinstance(metrics[k], float) else f"{k}={metrics[k]}"
             for k in keys if k in metrics and not isinstance(metrics[k], dict | list)
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
        failed = sum(int(n.metrics.get("failed", 0) or 0) for n in run.nodes if n.type == "segment")
        seconds = f"{run.seconds:.1f}" if run.seconds is not None else ""
        label = "dry run" if run.dry_run and run.status == "success" else run.status + (" (dry)" if run.dry_run else "")
        status = f"[{STATUS_STYLE.get(run.status, 'white')}]{label}[/]"
        table.add_row(run.id, run.pipeline, status, *((run.started_at[:19],) if wide else ()), seconds,
                      f"{ok}/{len(run.nodes)}", f"{sent:,}" + (f" ({failed:,} failed)" if failed else ""))
    console.print(table)


def print_run(console: Console, run: RunRecord) -> None:
    console.print(f"[bold]run {run.id}[/bold] pipeline `{run.pipeline}` ({run.file or 'no file'}) "
                  f"status [{STATUS_STYLE.get(run.status, 'white')}]{run.status}[/] "
                  f"started {run.started_at}" + (" [yellow](dry run)[/]" if run.dry_run else ""))
    if run.error:
        console.print(f"[red]{run.error}[/red]", highlight=False)
    table = Table(title_justify="left")
    for column in ("node", "type", "status", "rows", "seconds", "error / metrics"):
        table.add_column(column, overflow="fold")
    for node in run.nodes:
        detail = node.error or json.dumps(
            {k: v for k, v in node.metrics.items() if k != "query"}, default=str
        )
        table.add_row(node.node, node.type, f"[{STATUS_STYLE.get(node.status, 'white')}]{node.status}[/]",
                      "" if node.rows is None else f"{node.rows:,}",
                      "" if node.seconds is None else f"{node.seconds:.2f}", detail)
    console.print(table)
