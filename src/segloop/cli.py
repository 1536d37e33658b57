"""The `segloop` command: a thin Typer layer over the Pipeline facade; no business logic here."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console

from segloop.errors import SegloopError

app = typer.Typer(
    name="segloop",
    help="Pull Segment data, run models on it, send the results back to Segment.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)
_state: dict[str, Any] = {"debug": False}

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(func: F) -> F:
    """Print one red line and exit 1 for a SegloopError; `--debug` shows the traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except SegloopError as exc:
            if _state["debug"]:
                raise
            for line in str(exc).splitlines() or [type(exc).__name__]:
                err_console.print(f"[red]error:[/red] {line}", highlight=False, markup=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
) -> None:
    _state["debug"] = debug



# -- workspace ------------------------------------------------------------------------------

WORKSPACE_TEMPLATE = """\
# segloop workspace: named warehouses; pipelines live in pipelines/*.yml
warehouses:
  default:
    type: duckdb
    path: .segloop/warehouse.duckdb
"""

PIPELINE_TEMPLATE = """\
# An example pipeline: RFM segments from Segment's Order Completed table, sent back to Segment.
# Create the demo source first: segloop demo-data
name: example
warehouse: default
nodes:
  orders:
    type: sql
    sql: select user_id, "timestamp", revenue from demo_shop.order_completed
  rfm:
    type: rfm
    input: orders
    customer_id: user_id
    timestamp: timestamp
    amount: revenue
"""


@app.command()
@handle_errors
def init(directory: Path = typer.Argument(Path("."), help="Folder for the new workspace.")) -> None:
    """Create a workspace: segloop.yml and pipelines/example.yml."""
    directory.mkdir(parents=True, exist_ok=True)
    workspace_file = directory / "segloop.yml"
    if workspace_file.exists():
        raise SegloopError(f"{workspace_file} already exists; this folder is a workspace already")
    workspace_file.write_text(WORKSPACE_TEMPLATE)
    (directory / "pipelines").mkdir(exist_ok=True)
    example = directory / "pipelines" / "example.yml"
    if not example.exists():
        example.write_text(PIPELINE_TEMPLATE)
    gitignore = directory / ".gitignore"
    if not gitignore.exists():
        gitignore.write_text(".segloop/\n")
    console.print(f"Created workspace in [bold]{directory}[/bold]: segloop.yml, pipelines/example.yml")
    console.print("Next: [bold]segloop demo-data[/bold] then [bold]segloop run example[/bold]")


@app.command()
@handle_errors
def validate(
    files: list[Path] = typer.Argument(None, help="Pipeline files (default: all in the workspace)."),
) -> None:
    """Check pipeline files; print every problem with its file and line."""
    from segloop.config import Workspace, load_pipeline
    from segloop.errors import ConfigError, ConfigErrors

    targets = list(files or Workspace.find().pipeline_files())
    if not targets:
        raise SegloopError("no pipeline files given and none found in pipelines/")
    failed = 0
    for file in targets:
        try:
            pipeline = load_pipeline(file)
        except ConfigErrors as exc:
            failed += 1
            for err in exc.errors:
                err_console.print(f"[red]error:[/red] {err}", highlight=False)
        except ConfigError as exc:
            failed += 1
            err_console.print(f"[red]error:[/red] {exc}", highlight=False)
        else:
            console.print(f"[green]ok[/green] {file}: pipeline `{pipeline.name}`, "
                          f"{len(pipeline.nodes)} nodes ({' -> '.join(pipeline.topological_order())})")
    if failed:
        raise typer.Exit(1)


# -- running --------------------------------------------------------------------------------


@app.command()
@handle_errors
def run(
    pipeline: str = typer.Argument(..., help="Pipeline file, or its name in pipelines/."),
    node: str = typer.Option(None, "--node", "-n", help="Run only this node (upstream outputs must exist)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Send nothing to Segment; show what would be sent."),
) -> None:
    """Run a pipeline: each node inside the warehouse, in dependency order."""
    from segloop.pipeline import Pipeline
    from segloop.progress import RichReporter, print_summary

    loaded = Pipeline.load(pipeline)
    with RichReporter(console) as reporter:
        result = loaded.run(node=node, dry_run=dry_run, reporter=reporter,
                            options={"debug": _state["debug"]})
    print_summary(console, result)
    if not result.ok:
        for failed in result.nodes:
            if failed.status == "failed":
                err_console.print(f"[red]error:[/red] {failed.error}", highlight=False)
        raise typer.Exit(1)


@app.command()
@handle_errors
def runs(
    pipeline: str = typer.Option(None, "--pipeline", "-p", help="Only runs of this pipeline."),
    limit: int = typer.Option(20, "--limit", help="How many runs to list."),
) -> None:
    """List recent runs from the run history."""
    from segloop.config import Workspace
    from segloop.progress import print_runs
    from segloop.store import RunStore

    store = RunStore(Workspace.find().state_dir / "state.db")
    print_runs(console, store.list_runs(pipeline, limit))


@app.command()
@handle_errors
def show(run_id: str = typer.Argument("latest", help="Run id (or a unique prefix, or `latest`).")) -> None:
    """Show one run: each node's status, rows, seconds, error and metrics."""
    from segloop.config import Workspace
    from segloop.progress import print_run
    from segloop.store import RunStore

    store = RunStore(Workspace.find().state_dir / "state.db")
    print_run(console, store.get_run(run_id))


@app.command("demo-data")
@handle_errors
def demo_data(
    customers: int = typer.Option(5_000, "--customers", help="Known customers to simulate."),
    days: int = typer.Option(365, "--days", help="Days of history."),
    seed: int = typer.Option(7, "--seed", help="Random seed (same seed, same data)."),
    schema: str = typer.Option("demo_shop", "--schema", help="Source schema to write."),
    warehouse: str = typer.Option(None, "--warehouse", "-w", help="Warehouse name from segloop.yml."),
) -> None:
    """Write a Segment-shaped e-commerce source (tracks, identifies, users, event tables)."""
    from segloop.config import Workspace
    from segloop.demo import write_demo_data
    from segloop.warehouse import Warehouse

    workspace = Workspace.find()
    config = workspace.warehouse_config(warehouse)
    with console.status("Generating Segment demo data..."), Warehouse.connect(config, workspace.root) as wh:
        stats = write_demo_data(wh, schema=schema, customers=customers, days=days, seed=seed)
    console.print(
        f"Wrote schema [bold]{stats.schema}[/bold]: {stats.events:,} events from "
        f"{stats.customers:,} customers and {stats.anonymous_visitors:,} anonymous visitors, "
        f"{stats.orders:,} orders, in {stats.seconds:.1f}s"
    )


# -- reports, UI, scheduler (issue 9) ----------------------------------------------------


@app.command()
@handle_errors
def report(
    run_id: str = typer.Argument("latest", help="Run id (or a unique prefix, or `latest`)."),
    open_: bool = typer.Option(False, "--open", help="Open the report in a web browser."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Build it again from the run history and warehouse."),
) -> None:
    """Write (if missing) and show the path of a run's HTML report."""
    import webbrowser

    from segloop.config import Workspace
    from segloop.report import ensure_report

    path = ensure_report(Workspace.find(), run_id, rebuild=rebuild)
    console.print(str(path), highlight=False, soft_wrap=True)
    if open_ and not webbrowser.open(path.resolve().as_uri()):
        err_console.print("could not start a web browser; open the file above yourself")


def _serve(host: str, port: int, with_scheduler: bool) -> None:
    import os

    from segloop.config import Workspace
    from segloop.web.app import serve as serve_app
    from segloop.web.app import ui_token

    workspace = Workspace.find()
    token = ui_token(host, dict(os.environ))
    what = "UI and scheduler" if with_scheduler else "UI"

    def ready(url: str) -> None:
        console.print(f"segloop {what} for {workspace.root} at [bold]{url}[/bold] (Ctrl+C to stop)",
                      highlight=False, soft_wrap=True)
        if token and not os.environ.get("SEGLOOP_UI_TOKEN"):
            console.print("A token protects this address; it is in the URL above (or set SEGLOOP_UI_TOKEN).")

    serve_app(workspace, host, port, token, with_scheduler=with_scheduler, on_ready=ready)


@app.command()
@handle_errors
def ui(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; not loopback needs a token."),
    port: int = typer.Option(8765, "--port", help="Port to listen on."),
) -> None:
    """Browse pipelines, runs and reports in a web browser; start runs from there."""
    _serve(host, port, with_scheduler=False)


@app.command()
@handle_errors
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; not loopback needs a token."),
    port: int = typer.Option(8765, "--port", help="Port to listen on."),
) -> None:
    """Run the UI and the scheduler (pipelines with `schedule:`) in one process."""
    _serve(host, port, with_scheduler=True)


def main() -> None:
    app(prog_name="segloop")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
