"""The security review's five probes, end to end: each was reproduced on main and is refused here.

1. a POST with ``Origin: null`` (sandboxed iframes, ``data:`` pages) started a run;
2. a few hundred bytes of YAML aliases (an alias bomb) next to good pipelines hung `validate`, `serve` and `run`;
3. the UI resolved names outside `pipelines/` (``/pipelines/segloop.yml``, ``.env``, ``.``);
4. ``endpoint: http://user:pass@host/`` printed the password in retry warnings;
5. two pipeline files with one `name:` passed `validate` and `run` picked one.

Commands run as the user runs them (a `segloop` process) where a hang is the bug; the
subprocess timeouts only catch a hang, they measure nothing.
"""

from __future__ import annotations

import http.server
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from segloop.cli import app as cli
from segloop.config import Workspace
from segloop.scheduler import BackgroundRuns
from segloop.store import RunStore
from segloop.web.app import create_app
from tests.web.helpers import RFM_PIPELINE, copy_workspace, demo_template  # noqa: F401 - fixture

SEGLOOP = [sys.executable, "-m", "segloop.cli"]
HANG = 180  # seconds: far beyond what these commands take; only a hang gets there

# 342 bytes: nine levels of nine aliases expand to 9**9 = 387 million strings.
ALIAS_BOMB = (
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{','.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8))
)


def segloop(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SEGLOOP, *args], cwd=cwd, capture_output=True, text=True, timeout=HANG,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def workspace(demo_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:  # noqa: F811
    root = copy_workspace(demo_template, tmp_path / "ws", {"shop": RFM_PIPELINE})
    monkeypatch.chdir(root)  # as `segloop ui` runs: from the workspace folder
    return Workspace.load(root)


def history(workspace: Workspace, pipeline: str) -> list[Any]:
    store = RunStore(workspace.state_dir / "state.db")
    try:
        return store.list_runs(pipeline, 10)
    finally:
        store.close()


# -- 1. CSRF through a null Origin -----------------------------------------------------------


def test_a_post_with_a_null_origin_starts_no_run(workspace: Workspace) -> None:
    runs = BackgroundRuns(workspace)
    client = TestClient(create_app(workspace, runs=runs), base_url="http://127.0.0.1:8765")
    answer = client.post("/pipelines/shop/run", headers={"origin": "null"}, follow_redirects=False)
    runs.join(60)
    assert answer.status_code == 403 and "another origin" in answer.text
    assert history(workspace, "shop") == [] and runs.active() == []


# -- 2. YAML alias bomb -----------------------------------------------------------------------


@pytest.mark.slow
def test_an_alias_bomb_does_not_stop_validate_or_run_of_the_good_pipelines(workspace: Workspace) -> None:
    (workspace.pipelines_dir / "bomb.yml").write_text(ALIAS_BOMB)
    checked = segloop("validate", cwd=workspace.root)
    assert checked.returncode == 1
    assert "ok pipelines/shop.yml: pipeline `shop`" in checked.stdout.replace(str(workspace.root) + "/", "")
    assert "bomb.yml:6: the alias *e here makes the file hold more than 250,000 values" in checked.stderr
    ran = segloop("run", "shop", cwd=workspace.root)
    assert ran.returncode == 0, ran.stderr
    assert [run.status for run in history(workspace, "shop")] == ["success"]
    bomb = segloop("run", "bomb", cwd=workspace.root)
    assert bomb.returncode == 1 and "bomb.yml:6: the alias *e" in bomb.stderr
    assert "Traceback" not in checked.stderr + ran.stderr + bomb.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_an_alias_bomb_does_not_stop_serve_from_serving_the_good_pipelines(workspace: Workspace) -> None:
    import httpx

    (workspace.pipelines_dir / "bomb.yml").write_text(ALIAS_BOMB)
    port = free_port()
    server = subprocess.Popen([*SEGLOOP, "serve", "--port", str(port)], cwd=workspace.root,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + HANG
        while True:
            assert server.poll() is None, server.communicate()
            try:
                index = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "segloop serve never started listening"
                time.sleep(0.2)
        assert index.status_code == 200
        assert 'href="/pipelines/shop"' in index.text and "the alias *e here makes the file" in index.text
        assert httpx.get(f"http://127.0.0.1:{port}/pipelines/shop", timeout=30).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/pipelines/bomb", timeout=30).status_code == 404
    finally:
        server.terminate()
        server.communicate(timeout=30)


# -- 3. the UI resolves names outside pipelines/ ----------------------------------------------


def asgi_get(app: Any, raw_path: str) -> tuple[int, str]:
    """GET a path exactly as written (HTTP clients would normalize ``/.``), through the ASGI app."""
    import asyncio

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "scheme": "http", "path": raw_path, "raw_path": raw_path.encode(), "query_string": b"",
             "root_path": "", "headers": [(b"host", b"127.0.0.1:8765")], "server": ("127.0.0.1", 8765),
             "client": ("127.0.0.1", 50000)}
    status: list[int] = []
    body: list[bytes] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])
        elif message["type"] == "http.response.body":
            body.append(message.get("body", b""))

    asyncio.run(app(scope, receive, send))
    return status[0], b"".join(body).decode()


@pytest.mark.parametrize("name", ["segloop.yml", ".env", ".", "..", "shop.yml", "pipelines"])
def test_the_ui_serves_pipelines_by_name_only(workspace: Workspace, name: str) -> None:
    (workspace.root / ".env").write_text("SEGMENT_WRITE_KEY=wk_very_secret\n")
    status, body = asgi_get(create_app(workspace), f"/pipelines/{name}")
    assert status == 404
    assert f"no pipeline file `{name}`" in body
    for leak in ("warehouses", "wk_very_secret", "this folder has", "mapping"):
        assert leak not in body  # nothing read or listed from the folder
    assert asgi_get(create_app(workspace), "/pipelines/shop")[0] == 200


# -- 4. credentials in URLs ---------------------------------------------------------------------


@pytest.fixture
def failing_endpoint() -> Iterator[int]:
    """A local stand-in for Segment that answers every batch with 503."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    thread.join(10)


SECRET_PASSWORD = "pw-7Hq2xZ"


@pytest.mark.slow
def test_a_password_in_an_endpoint_url_is_never_shown(workspace: Workspace, failing_endpoint: int) -> None:
    endpoint = f"http://segloop:{SECRET_PASSWORD}@127.0.0.1:{failing_endpoint}/?api_key=k-{SECRET_PASSWORD}"
    (workspace.pipelines_dir / "send.yml").write_text(RFM_PIPELINE.replace("name: shop", "name: send") + f"""\
  to_segment:
    type: segment
    input: rfm
    call: identify
    customer_id: user_id
    traits: [segment]
    write_key: ${{SEGLOOP_T_WRITE_KEY}}
    endpoint: {endpoint}
    max_retries: 1
    max_retry_time: 5
""")
    ran = segloop("run", "send", cwd=workspace.root, env={"SEGLOOP_T_WRITE_KEY": "wk_test_123456"})
    assert ran.returncode == 1  # nothing reached "Segment"
    console = ran.stdout + ran.stderr
    assert f"Segment endpoint http://[secure]@127.0.0.1:{failing_endpoint}/?api_key=[secure]" in console
    run = history(workspace, "send")[0]
    report = (workspace.state_dir / "runs" / run.id / "report.html").read_text()
    db = sqlite3.connect(workspace.state_dir / "state.db")
    stored = "\n".join(str(row) for table in ("runs", "node_runs") for row in db.execute(f"select * from {table}"))
    db.close()
    ui = TestClient(create_app(workspace), base_url="http://127.0.0.1:8765")
    pages = ui.get("/pipelines/send").text + ui.get(f"/runs/{run.id}").text + ui.get(f"/runs/{run.id}/report").text
    for where, text in {"console": console, "history": stored, "report": report, "ui": pages}.items():
        assert SECRET_PASSWORD not in text, where


# -- 5. two pipeline files with one name ----------------------------------------------------------


def test_two_files_with_one_pipeline_name_are_refused(workspace: Workspace) -> None:
    (workspace.pipelines_dir / "shop_copy.yml").write_text(RFM_PIPELINE)
    checked = CliRunner().invoke(cli, ["validate"])
    output = checked.output.replace(str(workspace.root) + "/", "")
    assert checked.exit_code == 1
    assert "pipelines/shop.yml:1: pipeline name `shop` is also used by pipelines/shop_copy.yml" in output
    assert "pipelines/shop_copy.yml:1: pipeline name `shop` is also used by pipelines/shop.yml" in output
    ran = CliRunner().invoke(cli, ["run", "shop"])
    assert ran.exit_code == 1
    assert "pipeline name `shop` is used by pipelines/shop.yml and pipelines/shop_copy.yml" in ran.output.replace(
        str(workspace.root) + "/", "")
    assert history(workspace, "shop") == []
