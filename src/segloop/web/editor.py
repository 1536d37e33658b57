"""The pipeline editor: a pipeline file edited in the browser with `segloop validate`'s checks.

``GET /pipelines/{name}/edit`` shows the file's text in a textarea. As you type, a small
script (``static/editor.js``, served as a file: the UI's CSP allows no inline script) posts the text to ``/edit/check`` (debounced) and shows the same
``file:line: message`` errors and warnings as `segloop validate`, and the DAG redrawn;
``/edit/preview`` dry-runs one node of the edited text on the last run's upstream outputs
and shows its first rows (a Segment node: what it would send). Saving (``POST /edit``)
writes the text as typed, so comments and layout are kept.

Every route is a POST behind the app's ``Guard``, like "Run now": token off loopback, and
no request from another site. Only a file listed in the workspace's pipelines folder is
read or written, found by its name, never by a path from the request. Text that is not a
YAML mapping is never saved; text with validation errors is saved only when the user
ticks "save with errors", and the page says the pipeline cannot run until they are fixed.
A file changed on disk since the editor opened it is not overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from segloop.config import PipelineFile, parse_pipeline
from segloop.errors import ConfigError, SegloopError
from segloop.operators import NODE_TYPES
from segloop.pipeline import Pipeline
from segloop.report import Redactor, charts
from segloop.validate import check_pipeline_text
from segloop.web.pages import cell_text, error_page, render_page, ui_state
from segloop.workspace import Workspace
from segloop.yaml_doc import load_yaml, read_text_limited

MAX_BODY = 2_000_000  # bytes of a check, preview or save request (a pipeline file is a few KB)
SAMPLE_ROWS = 20
PAYLOAD_ROWS = 3


class TooLarge(SegloopError):
    """A request body over MAX_BODY."""


def routes() -> list[Route]:
    return [
        Route("/pipelines/{name}/edit", edit_page, methods=["GET"]),
        Route("/pipelines/{name}/edit", save, methods=["POST"]),
        Route("/pipelines/{name}/edit/check", check, methods=["POST"]),
        Route("/pipelines/{name}/edit/preview", preview, methods=["POST"]),
    ]


# -- the file -----------------------------------------------------------------------------


def pipeline_file(workspace: Workspace, name: str, entries: list[PipelineFile] | None = None) -> Path:
    """The listed pipeline file named ``name`` (its file name without .yml, or its `name:`).

    Found through ``scan_pipelines`` (each file read within the YAML limits), by the file
    name first, then by the `name:` written in the file, so a file that does not validate
    can still be opened and fixed.
    """
    entries = workspace.scan_pipelines() if entries is None else entries
    for entry in entries:
        if entry.file.stem == name:
            return entry.file
    for entry in entries:
        if entry.raw_name == name:
            return entry.file
    raise SegloopError(f"no pipeline `{name}` in {workspace.pipelines_dir}; the editor opens the files listed there")


def shown_path(workspace: Workspace, file: Path) -> str:
    """The path errors are reported with: relative to the workspace, as `segloop validate pipelines/x.yml`."""
    try:
        return str(file.relative_to(workspace.root))
    except ValueError:
        return str(file)


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_text(file: Path, text: str) -> None:
    """Replace the file's contents in one step (a crash leaves the old or the new file, never half)."""
    target = file.resolve()  # a symlinked pipeline file: write its target, keep the link
    mode = target.stat().st_mode & 0o777 if target.exists() else 0o644
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, mode)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


# -- checks ---------------------------------------------------------------------------------


def check_text(workspace: Workspace, file: Path, text: str, entries: list[PipelineFile] | None = None) -> dict[str, Any]:
    """What the editor shows for ``text``: `segloop validate`'s errors and warnings, and the DAG.

    ``entries``: the workspace's pipeline files when the caller has scanned them already
    (one scan per request: every file is read and parsed)."""
    shown = shown_path(workspace, file)
    result = check_pipeline_text(text, shown)  # the limits of every YAML file: size, depth, aliases
    try:
        parses = isinstance(load_yaml(text, shown).data, dict)
    except ConfigError:
        parses = False
    errors = list(result.errors)
    config = None
    if not errors:
        config = parse_pipeline(text, shown)
        clash = _name_clash(workspace, file, config.name, text, shown, entries)
        if clash is not None:
            errors.append(clash)
    out: dict[str, Any] = {
        "parses": parses,
        "errors": [_problem(e) for e in errors],
        "warnings": [_problem(w) for w in result.warnings],
        "summary": result.summary if not errors else None,
        "dag": None,
        "nodes": [],
    }
    if config is not None:
        out["dag"] = str(_dag(workspace, config))
        out["nodes"] = [{"name": n, "type": config.nodes[n].type} for n in config.topological_order()]
    return out


def _problem(error: ConfigError) -> dict[str, Any]:
    return {"line": error.line, "message": error.message, "text": str(error)}


def _name_clash(workspace: Workspace, file: Path, name: str, text: str, shown: str,
                entries: list[PipelineFile] | None) -> ConfigError | None:
    for other in workspace.scan_pipelines() if entries is None else entries:
        if other.file == file:
            continue
        if other.file.stem == name or other.raw_name == name:
            line = load_yaml(text, shown).line_of(("name",))
            return ConfigError(f"pipeline: `name` {name} is already the pipeline in {shown_path(workspace, other.file)}; "
                               "pick another name", shown, line)
    return None


def _dag(workspace: Workspace, config: Any) -> Any:
    last = workspace.runs(config.name, 1)
    latest = {n.node: n.status for n in last[0].nodes} if last else {}
    nodes = [(n, config.nodes[n].type, latest.get(n, "not run")) for n in config.topological_order()]
    edges = [(up, n) for n in config.nodes for up in config.upstream_of(n) if up in config.nodes]
    return charts.dag(nodes, edges)


# -- preview -------------------------------------------------------------------------------


def preview_text(workspace: Workspace, file: Path, text: str, node: str,
                 entries: list[PipelineFile] | None = None) -> dict[str, Any]:
    """A dry run of ``node`` as the edited text defines it: first rows, or what a Segment node would send."""
    shown = shown_path(workspace, file)
    found = check_text(workspace, file, text, entries)
    if found["errors"]:
        raise SegloopError(f"fix the {len(found['errors'])} error(s) above first; a node is previewed "
                           "from text that validates")
    pipeline = Pipeline(parse_pipeline(text, shown), workspace, file)
    pipeline.plan(node)  # names the nodes when `node` is not one
    redact = Redactor.for_pipeline(pipeline)
    node_type = pipeline.config.nodes[node].type
    out: dict[str, Any] = {"node": node, "type": node_type, "columns": [], "rows": [], "total": None,
                           "metrics": [], "warnings": [], "payloads": []}
    if NODE_TYPES[node_type].SENDS_TO_SEGMENT:
        result = dict(pipeline.preview(node, PAYLOAD_ROWS))
        payloads = result.pop("payloads", [])
        out["metrics"] = _metrics(redact.value(result))
        out["payloads"] = [json.dumps(p, indent=2, default=str) for p in redact.value(payloads)]
        return out
    sample = pipeline.sample(node, SAMPLE_ROWS)
    table = sample["table"]
    if table is not None:
        out["columns"] = list(table.column_names)
        out["rows"] = [[cell_text(redact, v) for v in record.values()] for record in table.to_pylist()]
    out["total"] = sample["total"]
    out["metrics"] = _metrics(redact.value(sample["metrics"]))
    out["warnings"] = [redact.text(w) for w in sample["warnings"]]
    return out


def _metrics(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """Scalar metrics as (name, readable value); lists and mappings as compact JSON."""
    rows = []
    for key, value in metrics.items():
        if key in ("sample_payloads", "warnings"):
            continue
        if isinstance(value, int | float) and not isinstance(value, bool):
            shown = charts.fmt(value)
        elif isinstance(value, dict | list):
            shown = json.dumps(value, default=str)
            shown = shown if len(shown) <= 200 else shown[:199] + "…"
        else:
            shown = str(value)
        rows.append((str(key), shown))
    return rows


# -- routes ---------------------------------------------------------------------------------


async def _form(request: Request) -> dict[str, str]:
    """The urlencoded body, refused past MAX_BODY bytes (read in chunks, never all at once)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise TooLarge(f"the request is over {MAX_BODY:,} bytes; a pipeline file is far smaller")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise TooLarge(f"the request is over {MAX_BODY:,} bytes; a pipeline file is far smaller")
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError:
        raise TooLarge("the request is not UTF-8 form data") from None
    return {key: values[-1] for key, values in fields.items()}


def _text(fields: dict[str, str], original: str) -> str:
    """The textarea's text; browsers send CRLF line ends, the file keeps its own."""
    text = fields.get("text", "")
    if "\r\n" not in original:
        text = text.replace("\r\n", "\n")
    return text


async def edit_page(request: Request) -> Response:
    state = ui_state(request)
    name = request.path_params["name"]
    try:
        entries = await run_in_threadpool(state.workspace.scan_pipelines)
        file = pipeline_file(state.workspace, name, entries)
        text = await run_in_threadpool(read_text_limited, file)
        found = await run_in_threadpool(check_text, state.workspace, file, text, entries)
    except (SegloopError, OSError, UnicodeDecodeError) as exc:
        return error_page(str(exc))
    saved = request.query_params.get("saved")
    errors = request.query_params.get("errors", "0")
    return _editor(name, state.workspace, file, text, found, saved=saved is not None,
                   saved_errors=int(errors) if errors.isdigit() else 0)


def _editor(name: str, workspace: Workspace, file: Path, text: str, found: dict[str, Any], status_code: int = 200,
            message: str | None = None, base: str | None = None, saved: bool = False, saved_errors: int = 0,
            allow_errors: bool = False) -> Response:
    return render_page("edit.html", status_code=status_code, title=f"Edit {name}", pipeline_name=name,
                 shown=shown_path(workspace, file), text=text, found=found, base=base or digest(text),
                 message=message, saved=saved, saved_errors=saved_errors, allow_errors=allow_errors,
                 check_url=f"/pipelines/{name}/edit/check", preview_url=f"/pipelines/{name}/edit/preview")


async def check(request: Request) -> Response:
    state = ui_state(request)
    try:
        fields = await _form(request)
        entries = await run_in_threadpool(state.workspace.scan_pipelines)
        file = pipeline_file(state.workspace, request.path_params["name"], entries)
        original = await run_in_threadpool(read_text_limited, file)
        found = await run_in_threadpool(check_text, state.workspace, file, _text(fields, original), entries)
    except TooLarge as exc:
        return JSONResponse({"error": str(exc)}, status_code=413)
    except (SegloopError, OSError, UnicodeDecodeError) as exc:
        return JSONResponse({"error": str(exc)}, status_code=404)
    return JSONResponse(found)


async def preview(request: Request) -> Response:
    state = ui_state(request)
    try:
        fields = await _form(request)
        entries = await run_in_threadpool(state.workspace.scan_pipelines)
        file = pipeline_file(state.workspace, request.path_params["name"], entries)
        original = await run_in_threadpool(read_text_limited, file)
    except TooLarge as exc:
        return JSONResponse({"error": str(exc)}, status_code=413)
    except (SegloopError, OSError, UnicodeDecodeError) as exc:
        return JSONResponse({"error": str(exc)}, status_code=404)
    try:
        result = await run_in_threadpool(preview_text, state.workspace, file, _text(fields, original),
                                         fields.get("node", ""), entries)
    except SegloopError as exc:
        return JSONResponse({"error": str(exc)}, status_code=422)
    return JSONResponse(result)


async def save(request: Request) -> Response:
    state = ui_state(request)
    name = request.path_params["name"]
    try:
        fields = await _form(request)
        entries = await run_in_threadpool(state.workspace.scan_pipelines)
        file = pipeline_file(state.workspace, name, entries)
        original = await run_in_threadpool(read_text_limited, file)
    except TooLarge as exc:
        return error_page(str(exc), 413)
    except (SegloopError, OSError, UnicodeDecodeError) as exc:
        return error_page(str(exc))
    text = _text(fields, original)
    allow_errors = fields.get("allow_errors") == "1"
    base = fields.get("base", "")
    found = await run_in_threadpool(check_text, state.workspace, file, text, entries)
    shown = shown_path(state.workspace, file)
    if base != digest(original):
        return _editor(name, state.workspace, file, text, found, 409, base=base, allow_errors=allow_errors, message=(
            f"Not saved: {shown} changed on disk since this page opened it. Your text is still below: "
            "copy your changes, reload the page and apply them again."))
    if not found["parses"]:
        return _editor(name, state.workspace, file, text, found, 422, base=base, allow_errors=allow_errors, message=(
            f"Not saved: the text is not a pipeline file (a YAML mapping); fix the error at line "
            f"{found['errors'][0]['line'] or 1} first. {shown} is unchanged."))
    if found["errors"] and not allow_errors:
        count = len(found["errors"])
        return _editor(name, state.workspace, file, text, found, 422, base=base, allow_errors=allow_errors, message=(
            f"Not saved: {count} error{'s' if count > 1 else ''}. Fix {'them' if count > 1 else 'it'}, or tick "
            f"“save with errors” to keep this draft in {shown} (the pipeline cannot run until it validates)."))
    try:
        await run_in_threadpool(write_text, file, text)
    except OSError as exc:
        return _editor(name, state.workspace, file, text, found, 500, base=base, allow_errors=allow_errors,
                       message=f"Not saved: could not write {shown}: {exc.strerror or exc}")
    query = urlencode({"saved": 1, "errors": len(found["errors"])})
    return RedirectResponse(f"/pipelines/{file.stem}/edit?{query}", status_code=303)
