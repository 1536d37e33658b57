"""Headless Chromium (Debian's, driven by Playwright; never a downloaded browser) clicks through the UI."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from segloop.config import Workspace
from segloop.scheduler import BackgroundRuns
from segloop.web.app import create_app
from tests.requirements import missing, require_module
from tests.web.helpers import (
    DEMO_PIPELINE,
    WRITE_KEY,
    copy_workspace,
    demo_template,  # noqa: F401 - fixture
    fakes,  # noqa: F401 - fixture
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def browser_tools() -> None:
    """Debian's chromium and Playwright; CI installs both (.ci/run), so there a missing one fails."""
    if not CHROMIUM.exists():
        missing(f"the UI test needs Debian's chromium at {CHROMIUM}: apt-get install -y chromium")
    require_module("playwright.sync_api", "pip install -e '.[dev]'")


# Installed before any script of a page: every Content-Security-Policy violation the browser reports.
CSP_LISTENER = """
document.addEventListener("securitypolicyviolation", e => {
  window.__cspViolation([e.effectiveDirective, e.blockedURI, e.sample || ""].join(" | "));
});
"""


def watch_csp(page: Any) -> list[str]:
    """The CSP violations ``page`` will report (events, and Chromium's console lines about them)."""
    seen: list[str] = []

    def note(violation: str) -> None:  # (Playwright wraps the callback: a builtin's append cannot be)
        seen.append(violation)

    page.expose_function("__cspViolation", note)
    page.add_init_script(CSP_LISTENER)
    page.on("console", lambda message: seen.append(message.text) if "Content Security Policy" in message.text else None)
    return seen


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """``app`` served by uvicorn on a free loopback port, in a thread; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the UI server did not start in 15 s")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def server(demo_template: Path, tmp_path: Path, fakes: None) -> Iterator[tuple[str, Workspace]]:  # noqa: F811
    workspace = Workspace.load(copy_workspace(demo_template, tmp_path / "ws", {"demo": DEMO_PIPELINE}))
    runs = BackgroundRuns(workspace)
    with serving(create_app(workspace, runs=runs)) as base:
        yield base, workspace
    runs.join(60)


def test_run_from_the_ui_and_open_its_report(server: tuple[str, Workspace], artifacts: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    base, _ = server
    outside: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(60_000)

            def only_the_ui(route: object) -> None:
                url = route.request.url  # type: ignore[attr-defined]
                if url.startswith(base):
                    route.continue_()  # type: ignore[attr-defined]
                else:
                    outside.append(url)
                    route.abort()  # type: ignore[attr-defined]

            page.route("**/*", only_the_ui)
            violations = watch_csp(page)
            page.goto(base + "/")
            page.click("text=demo")
            expect(page.locator('svg[data-chart="dag"]')).to_be_visible()
            page.click("#run-now")
            expect(page.locator("#started")).to_be_visible()
            finished = page.locator('#runs tr[data-status="success"]')
            expect(finished).to_have_count(1, timeout=60_000)  # the page refreshes itself while running
            expect(finished.locator("td").nth(1)).to_have_text("ui")
            page.screenshot(path=str(artifacts / "ui-pipeline.png"), full_page=True)
            finished.locator("a.report-link").click()
            grid = page.locator('svg[data-chart="rfm-grid"]')
            expect(grid).to_be_visible()
            expect(page.locator("#run-status")).to_have_text("success")
            for kind in ("dag", "segment-sizes", "cluster-sizes", "clv-distribution",
                         "propensity-distribution", "recommend-metrics", "segment-send"):
                expect(page.locator(f'svg[data-chart="{kind}"]').first).to_be_visible()
            assert grid.bounding_box()["width"] > 300  # type: ignore[index] # drawn, not collapsed
            assert WRITE_KEY not in page.content()
            page.screenshot(path=str(artifacts / "ui-report.png"), full_page=True)
            assert violations == []  # the pages and the report need nothing their CSP forbids
        finally:
            browser.close()
    assert outside == []  # nothing left the machine
    assert (artifacts / "ui-report.png").stat().st_size > 10_000


def test_report_file_renders_offline(server: tuple[str, Workspace]) -> None:
    """The report opened as a local file makes no request at all (no CDN, fonts or scripts)."""
    from playwright.sync_api import sync_playwright

    from segloop.pipeline import Pipeline

    _, workspace = server
    report = Pipeline.load("demo", workspace).run().report
    assert report is not None
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.on("request", lambda request: requests.append(request.url))
            page.goto(report.as_uri())
            assert page.locator("svg.chart").count() >= 9
            assert page.locator('svg[data-chart="rfm-grid"] g.cell').count() == 25
        finally:
            browser.close()
    assert requests == [report.as_uri()]
