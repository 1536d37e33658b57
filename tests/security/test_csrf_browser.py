"""A hostile web page, open in the user's real browser, cannot press "Run now" (Chromium + Playwright).

The page is served from another local port (another origin, the same site): it submits a
form to the UI at once, does the same from a sandboxed iframe (whose requests say
``Origin: null``), and POSTs with ``fetch(mode: "no-cors")``. Each request reaches the
UI and is refused; no run starts.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from segloop.config import Workspace
from segloop.scheduler import BackgroundRuns
from segloop.store import RunStore
from segloop.web.app import create_app
from tests.web.helpers import RFM_PIPELINE, copy_workspace, demo_template  # noqa: F401 - fixture
from tests.web.test_browser import CHROMIUM, CHROMIUM_ARGS, serving

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium: apt-get install -y chromium"),
]

HOSTILE_PAGE = """<!doctype html>
<html><body>
<h1>Cute cats</h1>
<iframe name="sink"></iframe>
<form id="direct" method="post" action="{run}" target="sink"><input name="csrf_token" value="guessed"></form>
<iframe sandbox="allow-forms allow-scripts" srcdoc="
  <form id=f method=post action='{run}'><input name=x value=1></form>
  <script>document.getElementById('f').submit()</script>"></iframe>
<script>
  document.getElementById('direct').submit();
  fetch('{run}', {{method: 'POST', mode: 'no-cors', body: new URLSearchParams('x=1')}});
</script>
</body></html>
"""


class Recorded:
    """The UI app, noting the method, path and answer status of every request it gets."""

    def __init__(self, app: Any):
        self.app = app
        self.answers: list[tuple[str, str, int]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def noting(message: Any) -> None:
            if message["type"] == "http.response.start":
                self.answers.append((scope["method"], scope["path"], message["status"]))
            await send(message)

        await self.app(scope, receive, noting if scope["type"] == "http" else send)


@pytest.fixture
def ui(demo_template: Path, tmp_path: Path) -> Iterator[tuple[str, Workspace, BackgroundRuns, Recorded]]:  # noqa: F811
    workspace = Workspace.load(copy_workspace(demo_template, tmp_path / "ws", {"shop": RFM_PIPELINE}))
    runs = BackgroundRuns(workspace)
    app = Recorded(create_app(workspace, runs=runs))
    with serving(app) as base:
        yield base, workspace, runs, app
    runs.join(60)


@pytest.fixture
def hostile_site(ui: tuple[str, Workspace, BackgroundRuns, Recorded]) -> Iterator[str]:
    """Another origin on this machine (another port), serving the attack page."""
    page = HOSTILE_PAGE.format(run=f"{ui[0]}/pipelines/shop/run").encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/cats.html"
    server.shutdown()
    thread.join(10)


def test_a_hostile_page_cannot_start_a_run(ui: tuple[str, Workspace, BackgroundRuns, Recorded],
                                          hostile_site: str) -> None:
    from playwright.sync_api import sync_playwright

    _, workspace, runs, app = ui
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.goto(hostile_site)
            deadline = time.monotonic() + 120  # the three POSTs, answered by the UI (a loaded machine is slow)
            while len(app.answers) < 3 and time.monotonic() < deadline:
                page.wait_for_timeout(100)
        finally:
            browser.close()
    assert app.answers == [("POST", "/pipelines/shop/run", 403)] * 3
    runs.join(60)
    store = RunStore(workspace.state_dir / "state.db")
    try:
        assert store.list_runs("shop", 5) == []  # nothing ran, nothing was even skipped
    finally:
        store.close()
    assert runs.active() == []
