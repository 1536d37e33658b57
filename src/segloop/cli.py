"""The `segloop` command: a thin Typer layer over the Pipeline facade; no business logic here."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.console import Console

from segloop.errors import SegloopError
from segloop.masking import mask_log_records, mask_text
from segloop.query_output import TABLE_ROWS

if TYPE_CHECKING:  # pragma: no cover
    from segloop.config import WorkspaceFiles
    from segloop.pipeline import Pipeline
    from segloop.warehouses import Warehouse
    from segloop.workspace import Workspace

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
            for line in mask_text(str(exc)).splitlines() or [type(exc).__name__]:
                err_console.print(f"[red]error:[/red] {line}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
) -> None:
    _state["debug"] = debug
    mask_log_records()  # log lines of every segloop module: no credentials of URLs


def _workspace() -> Workspace:
    """The workspace around the current folder; outside any, an error that says how to make one.

    Commands that read or write a workspace's state never create `.segloop/` in a folder
    that is not one.
    """
    from segloop.workspace import Workspace

    workspace = Workspace.find()
    _require_workspace(workspace)
    return workspace


def _require_workspace(workspace: WorkspaceFiles) -> None:
    from segloop.config import WORKSPACE_FILE

    if not (workspace.root / WORKSPACE_FILE).exists():
        raise SegloopError(
            f"no {WORKSPACE_FILE} in {workspace.root} or a folder above it, so this is not a segloop "
            f"workspace; create one with `segloop init DIR` and `cd DIR`, or cd into an existing one"
        )


def _pipeline(name_or_path: str) -> Pipeline:
    """A pipeline by file or name, in the workspace around it (or around the current folder)."""
    from segloop.pipeline import Pipeline

    if not Path(name_or_path).exists():
        _workspace()  # a name: only a workspace has pipelines/ to look in
    loaded = Pipeline.load(name_or_path)
    _require_workspace(loaded.workspace)
    return loaded


def _quiet_stdout() -> None:
    """After the reader of a pipe left: stdout to /dev/null, so Python's exit flush is silent."""
    import contextlib
    import os
    import sys

    with contextlib.suppress(OSError, ValueError):  # not a real file (tests): nothing to silence
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())



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
    console.print(f"Created workspace in [bold]{directory}[/bold]: segloop.yml, pipelines/example.yml",
                  highlight=False, soft_wrap=True)
    steps = ["segloop demo-data", "segloop run example"]
    if directory.resolve() != Path.cwd().resolve():  # commands run in the workspace: go there first
        import shlex

        steps.insert(0, f"cd {shlex.quote(str(directory))}")
    console.print("Next: " + " && ".join(f"[bold]{step}[/bold]" for step in steps), highlight=False, soft_wrap=True)


@app.command()
@handle_errors
def validate(
    files: list[Path] = typer.Argument(None, help="Pipeline files (default: all in the workspace)."),
) -> None:
    """Check segloop.yml and pipeline files; print every problem with its file and line.

    Unset ${VAR} references are warnings (they may be set where the pipeline runs).
    """
    from segloop.validate import check_files

    checks = check_files(list(files or []))
    for check in checks:
        for err in check.errors:
            err_console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
        for warning in check.warnings:
            err_console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False, soft_wrap=True)
        if not check.errors:
            console.print(f"[green]ok[/green] {check.file}: {check.summary}", highlight=False, soft_wrap=True)
    if any(check.errors for check in checks):
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
    from segloop.operators.base import RunOptions
    from segloop.progress import RichReporter, last_durations, print_summary

    loaded = _pipeline(pipeline)
    with RichReporter(console, expected=last_durations(loaded)) as reporter:
        result = loaded.run(node=node, dry_run=dry_run, reporter=reporter,
                            options=RunOptions(debug=_state["debug"]))
    print_summary(console, result)
    if result.report is not None:
        console.print(f"report: {result.report}  (details: segloop show {result.run_id}; "
                      "browse runs: segloop ui)", highlight=False, soft_wrap=True)
    if not result.ok:
        for failed in result.nodes:
            if failed.status == "failed":
                err_console.print(f"[red]error:[/red] {failed.error}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


@app.command()
@handle_errors
def runs(
    pipeline: str = typer.Option(None, "--pipeline", "-p", help="Only runs of this pipeline."),
    limit: int = typer.Option(20, "--limit", help="How many runs to list."),
) -> None:
    """List recent runs from the run history."""
    from segloop.progress import print_runs

    workspace = _workspace()
    if not workspace.has_history():  # nothing ran here: create nothing either
        console.print(f"No runs yet in {workspace.root}. Start one with: segloop run PIPELINE")
        return
    print_runs(console, workspace.runs(pipeline, limit))


@app.command()
@handle_errors
def show(run_id: str = typer.Argument("latest", help="Run id (or a unique prefix, or `latest`).")) -> None:
    """Show one run: each node's status, rows, seconds, error and metrics."""
    from segloop.progress import print_run

    print_run(console, _workspace().run(run_id))


@app.command("demo-data")
@handle_errors
def demo_data(
    customers: int = typer.Option(5_000, "--customers", min=1, help="Known customers to simulate."),
    days: int = typer.Option(365, "--days", help="Days of history."),
    seed: int = typer.Option(7, "--seed", help="Random seed (same seed, same data)."),
    schema: str = typer.Option("demo_shop", "--schema", help="Source schema to write."),
    warehouse: str = typer.Option(None, "--warehouse", "-w", help="Warehouse name from segloop.yml."),
    split_ids: bool = typer.Option(True, "--split-ids/--one-id-per-customer",
                                   help="Browsing before sign-up and on logged-out phones, merged "
                                   "accounts (as real Segment data; see docs/identity.md)."),
) -> None:
    """Write a Segment-shaped e-commerce source (tracks, identifies, users, event tables)."""
    from segloop.demo import write_demo_data
    from segloop.progress import StepProgress

    workspace = _workspace()
    with StepProgress(console, f"generating events of {customers:,} customers") as bar, \
            workspace.warehouse(warehouse) as wh:

        def progress(stage: str, advance: int, total: int | None) -> None:
            if stage == "write" and advance == 0:
                bar.stage(f"writing schema {schema}", total=total, unit="customers")
            else:
                bar.update(advance, total)

        stats = write_demo_data(wh, schema=schema, customers=customers, days=days, seed=seed, progress=progress,
                                split_ids=split_ids)
    console.print(
        f"Wrote schema [bold]{stats.schema}[/bold]: {stats.events:,} events from "
        f"{stats.customers:,} customers and {stats.anonymous_visitors:,} anonymous visitors, "
        f"{stats.orders:,} orders, in {stats.seconds:.1f}s", highlight=False, soft_wrap=True,
    )


@app.command()
@handle_errors
def query(
    sql: str = typer.Argument(..., help="A SELECT in the warehouse's dialect (on DuckDB also DESCRIBE, SHOW, SUMMARIZE)."),
    warehouse: str = typer.Option(None, "--warehouse", "-w", help="Warehouse name from segloop.yml."),
    limit: int = typer.Option(None, "--limit", min=0,
                              help=f"Rows at most (default: {TABLE_ROWS} for a table, every row for the other formats)."),
    fmt: str = typer.Option(None, "--format", "-f", help="table, csv, json or markdown (default: from --output's suffix, else table)."),
    output: Path = typer.Option(None, "--output", "-o", help="Write the result to this file instead of the terminal."),
) -> None:
    """Run a query in the workspace's warehouse; print the rows or export them (csv, json, markdown)."""
    from segloop.query_output import choose_format, export_query, write_query

    kind = choose_format(fmt, output)
    if limit is None and kind == "table":
        limit = TABLE_ROWS
    workspace = _workspace()
    with workspace.warehouse(warehouse) as wh:
        try:
            rows, more = (write_query(wh, sql, kind, limit, console) if output is None
                          else export_query(wh, sql, kind, limit, output))
        except BrokenPipeError:  # `segloop query ... | head`: the reader has all it wants
            _quiet_stdout()
            return
    if rows == 0 and kind == "table":
        err_console.print("[dim](no rows)[/dim]", highlight=False)
    if more:
        err_console.print(f"[dim]showed the first {rows:,} rows; --limit N shows more, --format csv or "
                          "--output FILE writes every row[/dim]", highlight=False, soft_wrap=True)
    if output is not None:
        err_console.print(f"wrote {rows:,} rows to {output} ({kind})", highlight=False, soft_wrap=True)


# -- warehouses -----------------------------------------------------------------------------


@app.command("check-warehouse")
@handle_errors
def check_warehouse(
    name: str = typer.Argument(None, help="Warehouse name from segloop.yml (default: `default`)."),
) -> None:
    """Connect to a warehouse and list its Segment sources (schemas with tracks/identifies)."""
    from rich.table import Table

    from segloop.segment.sources import segment_sources

    workspace = _workspace()
    config = workspace.warehouse_config(name)
    label = name or "default"
    with console.status(f"Connecting to {config.describe()}..."), \
            workspace.warehouse(name, create_schema=False) as wh:
        sources = segment_sources(wh, count_rows=True)
    console.print(f"[green]ok[/green] connected to warehouse `{label}`: {config.describe()}; "
                  f"outputs go to schema `{config.output_schema}`")
    if not sources:
        console.print("No Segment source found (no schema holds `tracks` or `identifies`).")
        return
    table = Table(title="Segment sources")
    for column in ("schema", "tables", "event tables", "tracks", "identifies", "users"):
        table.add_column(column, justify="right" if column not in ("schema",) else "left")
    for source in sources:
        table.add_row(source.schema, str(len(source.tables)), str(len(source.event_tables)),
                      *(f"{source.rows[t]:,}" if t in source.rows else "-"
                        for t in ("tracks", "identifies", "users")))
    console.print(table)



@app.command()
@handle_errors
def preview(
    pipeline: str = typer.Argument(..., help="Pipeline file, or its name in pipelines/."),
    node: str = typer.Argument(..., help="A Segment node of that pipeline."),
    rows: int = typer.Option(5, "--rows", help="How many payloads to show."),
) -> None:
    """Show what the next run of a Segment node would send, sending nothing."""
    import orjson

    result = _pipeline(pipeline).preview(node, rows)
    payloads = result.pop("payloads")
    counts = ", ".join(f"{k}={v:,}" for k, v in result.items() if isinstance(v, int) and not isinstance(v, bool))
    console.print(f"[bold]{node}[/bold] next run: {counts}", highlight=False)
    if isinstance(result.get("match_rate"), float):  # segment/send/known_ids.py
        console.print(f"match rate: {result['match_rate']:.1%} of the ids are known to Segment "
                      f"({', '.join(result.get('match_sources') or [])}); {result.get('unknown_ids', 0):,} "
                      "unknown ids would create new profiles (MTUs)", highlight=False)
    for payload in payloads:
        console.print_json(orjson.dumps(payload, default=str).decode())


# -- segment collector and raw archives ---------------------------------------------------


def _open_warehouse(warehouse: str | None, duckdb: Path | None) -> Warehouse:
    """The warehouse named in segloop.yml, or a DuckDB file given with --duckdb."""
    from segloop.warehouses import Warehouse

    if duckdb is not None:
        return Warehouse.duckdb(duckdb)
    return _workspace().warehouse(warehouse)


def _collector_keys(cli_keys: list[str], yml_keys: dict[str, str]) -> dict[str, str]:
    """write key -> source schema, from --key KEY=SCHEMA and segloop.yml's `collector.keys`.

    A key written as ${NAME} (in the file it must be) is read from the environment, so
    write keys need not appear in files or in the process list.
    """
    from segloop.errors import ConfigError
    from segloop.secrets import ENV_REF, resolve_secret

    keys: dict[str, str] = {}
    for ref, source in yml_keys.items():
        keys[resolve_secret(ref, "collector.keys in segloop.yml").get_secret_value()] = source
    for item in cli_keys:
        key, sep, source = item.rpartition("=")
        if not sep or not key or not source:
            raise ConfigError(f"--key must look like WRITE_KEY=SOURCE_SCHEMA, not `{item.split('=')[0]}=...`")
        if ENV_REF.match(key):
            key = resolve_secret(key, "--key").get_secret_value()
        keys[key] = source
    return keys


@app.command()
@handle_errors
def reset(
    pipeline: str = typer.Argument(..., help="Pipeline file, or its name in pipelines/."),
    node: str = typer.Argument(..., help="A Segment node of that pipeline."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    holdout: bool = typer.Option(False, "--holdout", help="End the node's holdout experiment instead: "
                                 "keep its groups under a dated name; the next run draws new groups."),
) -> None:
    """Forget a Segment node's sync state: its next run sends every row again."""
    loaded = _pipeline(pipeline)
    loaded.check_segment_node(node)  # a wrong name is an error before the question, not after
    if holdout:
        question = (f"End the holdout experiment of `{node}`? Its next run draws new groups with the "
                    "current settings, and customers held out until now may be sent.")
        if not yes and not typer.confirm(question):
            raise typer.Exit(1)
        archive = loaded.end_holdout(node)
        console.print(f"Holdout of `{node}` ended; its groups are kept in {archive}." if archive
                      else f"`{node}` has no holdout groups yet; nothing to end.", highlight=False)
        return
    if not yes and not typer.confirm(f"Forget what `{node}` sent? Its next run re-sends every row."):
        raise typer.Exit(1)
    loaded.reset(node)
    console.print(f"Sync state of `{node}` forgotten; the next run sends every row.")


@app.command()
@handle_errors
def collector(
    port: int = typer.Option(None, "--port", help="Port to listen on (0 picks a free one); default 8088."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    key: list[str] = typer.Option([], "--key", help="WRITE_KEY=SOURCE_SCHEMA (repeatable); KEY may be ${ENV_VAR}."),
    data: Path = typer.Option(None, "--data", help="Folder for the archive and dedupe state; default .segloop/collector."),
    dedupe_window: str = typer.Option("24h", "--dedupe-window", help="Drop a messageId seen within this long (0 turns dedupe off)."),
    load_every: str = typer.Option(None, "--load-every", help="Load the archive into the warehouse this often, e.g. 60s."),
    warehouse: str = typer.Option(None, "--warehouse", "-w", help="Warehouse name from segloop.yml (for --load-every)."),
    duckdb: Path = typer.Option(None, "--duckdb", help="Load into this DuckDB file instead of a named warehouse."),
    latency_ms: int = typer.Option(0, "--latency-ms", help="Dev fault: wait this long before answering."),
    fail_rate: float = typer.Option(0.0, "--fail-rate", help="Dev fault: answer this fraction of requests with 500."),
    rate_limit: int = typer.Option(None, "--rate-limit", help="Dev fault: 429 + Retry-After above N requests/s."),
    read_timeout: str = typer.Option("30s", "--read-timeout", help="Close a client that takes longer to send its request head, or its body (408)."),
    max_connections: int = typer.Option(1000, "--max-connections", help="Open connections at most (also kept below ulimit -n)."),
) -> None:
    """Run a Segment-compatible HTTP Tracking API that archives what it accepts (200 = on disk)."""
    from segloop.config import Workspace
    from segloop.segment.collector.app import (
        CollectorSettings,
        parse_duration,
        run_forever,
        summary,
    )

    workspace = Workspace.find()
    yml = workspace.config.collector
    keys = _collector_keys(key, dict(yml.keys) if yml else {})
    data_dir = data or workspace.root / (yml.data if yml else ".segloop/collector")
    loader = None
    every = parse_duration(load_every) if load_every else None
    if every:  # opened for each load only, so runs and queries can use the file between loads
        from segloop.segment.archive.loader import ArchiveLoader
        from segloop.warehouses.duckdb import DuckDBConfig

        if duckdb is not None:
            loader = ArchiveLoader(DuckDBConfig(path=str(duckdb.resolve())), Path.cwd(), "duckdb")
        else:
            loader = ArchiveLoader(workspace.warehouse_config(warehouse), workspace.root, warehouse or "default")
        loader.check()
    settings = CollectorSettings(
        keys=keys,
        data_dir=Path(data_dir),
        dedupe_window_s=parse_duration(dedupe_window),
        latency_ms=latency_ms,
        fail_rate=fail_rate,
        rate_limit=rate_limit,
        load_every_s=every,
        loader=loader,
        header_timeout_s=parse_duration(read_timeout),
        body_timeout_s=parse_duration(read_timeout),
        max_connections=max_connections,
    )
    sources = ", ".join(sorted(set(keys.values())))

    def announce(url: str) -> None:
        # First stdout line is the URL, so scripts starting it with --port 0 can read it; the
        # sentence for people comes first, so a script that waits for the URL has it on screen.
        err_console.print(f"collector listening on {url} for {sources}; archive in {data_dir}",
                          highlight=False, soft_wrap=True)
        print(url, flush=True)

    stats = run_forever(settings, host, port if port is not None else (yml.port if yml else 8088), announce)
    err_console.print(summary(stats))


@app.command("load-archive")
@handle_errors
def load_archive_command(
    path: Path = typer.Argument(..., help="A .gz archive file or a folder (e.g. segment-logs/)."),
    warehouse: str = typer.Option(None, "--warehouse", "-w", help="Warehouse name from segloop.yml."),
    schema: str = typer.Option(None, "--schema", help="Target schema (default: the source folder name)."),
    duckdb: Path = typer.Option(None, "--duckdb", help="Load into this DuckDB file instead of a named warehouse."),
) -> None:
    """Load Segment raw archives into the warehouse in Segment's schema (new bytes only)."""
    from segloop.progress import StepProgress
    from segloop.segment.archive.loader import load_archive

    with StepProgress(console, f"loading {path}", unit="bytes") as bar, _open_warehouse(warehouse, duckdb) as wh:
        result = load_archive(wh, path, schema=schema, progress=bar.update)
    console.print(
        f"Loaded {result.messages:,} messages from {result.files_loaded} files "
        f"({result.files_skipped} already loaded) into {', '.join(result.schemas) or 'nothing'}; "
        f"{result.duplicates:,} duplicates skipped", highlight=False, soft_wrap=True,
    )
    for table, rows in sorted(result.rows_inserted.items()):
        console.print(f"  {table}: +{rows:,} rows")
    for line in result.describe():  # converted, widened, overflowed, rejected, set aside
        console.print(f"  {line}", highlight=False, soft_wrap=True)
    if result.torn_files:
        console.print(f"[yellow]{len(result.torn_files)} files end in an incomplete gzip member; their tail loads once complete[/yellow]")


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

    path = _workspace().report(run_id, rebuild=rebuild)
    console.print(str(path), highlight=False, soft_wrap=True)
    if open_ and not webbrowser.open(path.resolve().as_uri()):
        err_console.print("could not start a web browser; open the file above yourself")


def _serve(host: str, port: int, with_scheduler: bool) -> None:
    import os

    from segloop.web.app import serve as serve_app
    from segloop.web.app import ui_token
    from segloop.workspace import Workspace

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
    main()
