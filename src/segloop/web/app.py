"""`segloop ui` / `segloop serve`: a small Starlette app over the Pipeline facade and RunStore.

Server-rendered pages, no front-end build, no JavaScript but the editor's (one static file):
pipelines with their DAG, run history, run reports, the first rows of a node's output table,
a preview of what a Segment node would send, and a "Run now" button that starts a run in a
background thread.
The pages only call ``Pipeline`` and ``RunStore``; what a run does is decided there.

Safety (docs/security.md): every request goes through the one guard in `web/guard.py`
(Host check, token off loopback, CSRF for every state-changing request), and every response
gets `web/headers.py`'s strict Content-Security-Policy and its companions; pages rendered
with ``render_page`` (web/pages.py, shared with the editor) carry the CSRF token in every
POST form. Pipelines are served by name only, as `segloop validate` lists them; any other
name is a 404.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from segloop.config import WorkspaceFiles, duplicate_name_message
from segloop.errors import SegloopError
from segloop.pipeline import Pipeline
from segloop.report import Redactor, charts
from segloop.scheduler import BackgroundRuns, Scheduler, start_scheduler
from segloop.web import editor, trends
from segloop.web.guard import Guard, is_loopback
from segloop.web.headers import SecurityHeaders, with_current_stylesheet
from segloop.web.pages import UiState, cell_text, error_page, render_page, ui_state
from segloop.workspace import Workspace

log = logging.getLogger("segloop")

TOKEN_ENV = "SEGLOOP_UI_TOKEN"
TABLE_PREVIEW_ROWS = 100
PREVIEW_ROWS = 5


async def index(request: Request) -> Response:
    state = ui_state(request)

    def gather() -> list[dict[str, Any]]:
        store = state.store()
        rows = []
        try:
            entries = state.workspace.scan_pipelines()
            for entry in entries:
                file, config = entry.file, entry.config
                row: dict[str, Any] = {"file": file.name, "name": file.stem, "error": None, "last": None,
                                       "nodes": 0, "schedule": None, "health": trends.Health(trends.INVALID)}
                shared = [e.file for e in entries if config is not None and e.name == config.name]
                if config is None:
                    row["error"] = str(entry.error)
                elif len(shared) > 1:  # `segloop run` refuses the name; so does the UI
                    row["error"] = duplicate_name_message(config.name, shared)
                else:
                    row.update(name=config.name, nodes=len(config.nodes), schedule=config.schedule,
                               description=config.description)
                    recent = store.list_runs(config.name, trends.TREND_RUNS)
                    row["last"] = recent[0] if recent else None
                    row["health"] = trends.pipeline_health(recent, config.schedule)
                rows.append(row)
        finally:
            store.close()
        return rows

    pipelines = await run_in_threadpool(gather)
    pipelines.sort(key=lambda row: (trends.SEVERITY[row["health"].state], row["name"]))  # problems first
    headline, headline_css = trends.summary([row["health"].state for row in pipelines])
    return render_page("index.html", title="Pipelines", pipelines=pipelines, workspace=state.workspace,
                 active=state.runs.active(), headline=headline, headline_css=headline_css,
                 quality_drop=trends.QUALITY_DROP)


async def pipeline_page(request: Request) -> Response:
    state = ui_state(request)
    name = request.path_params["name"]

    def gather() -> dict[str, Any]:
        pipeline = state.pipeline(name)
        store = state.store()
        try:
            runs = store.list_runs(pipeline.name, 30)
        finally:
            store.close()
        config = pipeline.config
        latest = {n.node: n.status for n in runs[0].nodes} if runs else {}
        nodes = [(n, config.nodes[n].type, latest.get(n, "not run")) for n in config.topological_order()]
        edges = [(up, n) for n in config.nodes for up in config.upstream_of(n) if up in config.nodes]
        next_run = None
        if config.schedule is not None:
            next_run = config.schedule.next_after(datetime.now(UTC)).isoformat(timespec="minutes")
        return {"pipeline": pipeline, "runs": runs, "dag": charts.dag(nodes, edges), "nodes": nodes,
                "next_run": next_run, "trends": trends.pipeline_charts(runs), "trend_runs": trends.TREND_RUNS,
                "running": any(r.status == "running" for r in runs) or pipeline.name in state.runs.active()}

    try:
        context = await run_in_threadpool(gather)
    except SegloopError as exc:
        return error_page(str(exc))
    message = state.runs.errors.pop(name, None)  # a run that could not even start
    return render_page("pipeline.html", title=f"Pipeline {name}", message=message,
                 started=request.query_params.get("started"), **context)


async def run_now(request: Request) -> Response:
    state = ui_state(request)
    name = request.path_params["name"]
    try:
        pipeline = await run_in_threadpool(state.pipeline, name)
    except SegloopError as exc:
        return error_page(str(exc))
    state.runs.start(pipeline.name, trigger="ui")
    return RedirectResponse(f"/pipelines/{pipeline.name}?started=1", status_code=303)


async def run_page(request: Request) -> Response:
    state = ui_state(request)

    def gather() -> Any:
        store = state.store()
        try:
            return store.get_run(request.path_params["run_id"])
        finally:
            store.close()

    try:
        run = await run_in_threadpool(gather)
    except SegloopError as exc:
        return error_page(str(exc))
    return render_page("run.html", title=f"Run {run.id}", run=run)


async def report(request: Request) -> Response:
    state = ui_state(request)
    run_id = request.path_params["run_id"]
    rebuild = request.query_params.get("rebuild") == "1"
    try:
        path = await run_in_threadpool(state.workspace.report, run_id, rebuild)
    except SegloopError as exc:
        return error_page(str(exc))
    return HTMLResponse(with_current_stylesheet(path.read_text(encoding="utf-8")))  # an older report's too


async def node_table(request: Request) -> Response:
    state = ui_state(request)
    name, node = request.path_params["name"], request.path_params["node"]
    suffix = request.query_params.get("suffix") or None
    if suffix is not None and not suffix.isidentifier():
        return error_page(f"`{suffix}` is not a table suffix (letters, digits and underscores)")

    def gather() -> dict[str, Any]:
        pipeline = state.pipeline(name)
        pipeline.plan(node)  # a ConfigError naming the nodes when `node` is unknown
        table_name = pipeline.table_name(node, suffix)
        redact = Redactor.for_pipeline(pipeline)
        with pipeline.connect() as warehouse:
            if not warehouse.has_table(table_name):
                raise SegloopError(f"table {warehouse.schema}.{table_name} does not exist yet; run the pipeline first")
            total = warehouse.count(warehouse.table(table_name))
            data = warehouse.to_arrow(warehouse.table(table_name), limit=TABLE_PREVIEW_ROWS)
            qualified = f"{warehouse.schema}.{table_name}"
        rows = [[cell_text(redact, v) for v in record.values()] for record in data.to_pylist()]
        numeric = [charts.is_numeric_type(field.type) for field in data.schema]
        return {"pipeline": pipeline, "node": node, "table": qualified, "columns": data.column_names,
                "rows": rows, "total": total, "numeric": numeric}

    try:
        context = await run_in_threadpool(gather)
    except SegloopError as exc:
        return error_page(str(exc))
    return render_page("table.html", title=f"{name}.{node}", **context)


def preview_node(pipeline: Pipeline, node: str, rows: int = PREVIEW_ROWS) -> dict[str, Any]:
    """What a Segment node would send next, sending nothing: `segloop preview` for the page."""
    result = dict(pipeline.preview(node, rows))
    redact = Redactor.for_pipeline(pipeline)
    payloads = result.pop("payloads", [])
    return {"error": None, "metrics": redact.value(result),
            "payloads": redact.value(payloads) if isinstance(payloads, list) else []}


async def preview(request: Request) -> Response:
    state = ui_state(request)
    name, node = request.path_params["name"], request.path_params["node"]
    try:
        pipeline = await run_in_threadpool(state.pipeline, name)
        pipeline.plan(node)
    except SegloopError as exc:
        return error_page(str(exc))
    result = None
    if request.method == "POST":
        try:
            result = await run_in_threadpool(preview_node, pipeline, node)
        except SegloopError as exc:
            result = {"error": str(exc), "metrics": {}, "payloads": []}
    return render_page("preview.html", title=f"Preview {name}.{node}", pipeline=pipeline, node=node,
                 node_type=pipeline.config.nodes[node].type, result=result)


# -- app and server -----------------------------------------------------------------------


def create_app(
    workspace: WorkspaceFiles,
    host: str = "127.0.0.1",
    token: str | None = None,
    runs: BackgroundRuns | None = None,
    scheduler: Scheduler | None = None,
) -> ASGIApp:
    """The ASGI app; ``token`` is required (and used) only when ``host`` is not loopback."""
    routes = [
        Route("/", index),
        Route("/pipelines/{name}", pipeline_page),
        Route("/pipelines/{name}/run", run_now, methods=["POST"]),
        Route("/pipelines/{name}/nodes/{node}/table", node_table),
        Route("/pipelines/{name}/nodes/{node}/preview", preview, methods=["GET", "POST"]),
        Route("/runs/{run_id}", run_page),
        Route("/runs/{run_id}/report", report),
    ]
    static = Mount("/static", StaticFiles(packages=[("segloop.web", "static")]), name="static")
    app = Starlette(routes=[*routes, *editor.routes(), static])
    facade = Workspace.of(workspace)
    app.state.ui = UiState(facade, runs or BackgroundRuns(facade), scheduler)
    # Migrate the run history once, before threads race to create it.
    app.state.ui.store().close()
    loopback = is_loopback(host)
    if not loopback and not token:
        raise SegloopError(f"the UI is bound to {host}, not loopback; it needs a token (set {TOKEN_ENV})")
    return SecurityHeaders(Guard(app, token if not loopback else None, loopback))


def ui_token(host: str, env: dict[str, str]) -> str | None:
    """The token for a non-loopback bind: from SEGLOOP_UI_TOKEN, or a fresh random one."""
    if is_loopback(host):
        return None
    return env.get(TOKEN_ENV) or secrets.token_urlsafe(24)


def serve(
    workspace: WorkspaceFiles,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    with_scheduler: bool = False,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Run the UI (and, for `segloop serve`, the scheduler) until interrupted."""
    import uvicorn

    workspace = Workspace.of(workspace)
    runs = BackgroundRuns(workspace)
    scheduler = None
    stop = threading.Event()
    if with_scheduler:
        scheduler = start_scheduler(workspace, runs, stop)
    app = create_app(workspace, host, token, runs, scheduler)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    if on_ready:
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
        on_ready(url)
    try:
        server.run()
    finally:
        stop.set()
        runs.join(timeout=5)
