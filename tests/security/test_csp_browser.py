"""Workspace data full of ``<script>`` and ``onerror=`` runs nothing in a real browser, and the
UI's own script and stylesheet break no rule of its Content-Security-Policy (Chromium + Playwright).

Each page of the hostile workspace (tests/security/hostile.py) is opened: no payload runs
(``window.__pwned`` stays unset), the payload is on the page as text, the stylesheet is
applied and the browser reports no CSP violation (``securitypolicyviolation`` events and
console messages, listened to from before the page's first byte). Then the test plays an
escaping bug: it puts an inline ``<script>`` and an ``<img onerror=...>`` into the page
itself, and the browser refuses both, by the policy.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from segloop.config import Workspace
from segloop.scheduler import BackgroundRuns
from segloop.web.app import create_app
from tests.security.hostile import COLUMN, IMG, SCRIPT, TABLE, hostile_workspace, last_run_id
from tests.web.test_browser import CHROMIUM, CHROMIUM_ARGS, browser_tools, serving, watch_csp  # noqa: F401

pytestmark = pytest.mark.slow



@pytest.fixture
def ui(tmp_path: Path) -> Iterator[tuple[str, Workspace]]:
    workspace = Workspace.load(hostile_workspace(tmp_path / "ws"))
    runs = BackgroundRuns(workspace)
    with serving(create_app(workspace, runs=runs)) as base:
        yield base, workspace
    runs.join(60)


class Watched:
    """A Chromium page whose CSP violations and script errors are noted."""

    def __init__(self, page: Any):
        self.page = page
        self.violations = watch_csp(page)
        self.errors: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    def pwned(self) -> Any:
        return self.page.evaluate("window.__pwned")

    def settle(self) -> None:
        """Give the page's images, handlers and the violation reports time to arrive."""
        self.page.wait_for_load_state("load")
        self.page.wait_for_timeout(300)


def test_hostile_workspace_data_runs_nothing_and_the_ui_breaks_no_rule(ui: tuple[str, Workspace]) -> None:
    from playwright.sync_api import expect, sync_playwright

    base, workspace = ui
    run = last_run_id(workspace)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            watched = Watched(page)
            for path, shown in (("/", SCRIPT), ("/pipelines/hostile", TABLE),
                                ("/pipelines/hostile/nodes/notes/table", IMG), (f"/runs/{run}", TABLE),
                                (f"/runs/{run}/report", TABLE), ("/pipelines/hostile/edit", SCRIPT)):
                page.goto(base + path)
                watched.settle()
                assert watched.pwned() is None, path
                text = page.locator("#text").input_value() if path.endswith("/edit") else page.locator("body").inner_text()
                assert shown in text, path  # there, as text (the editor's: in its textarea)
                # the stylesheet (allowed by its hash) is applied: the body has no default margin
                assert page.evaluate("getComputedStyle(document.body).margin") == "0px", path
            page.goto(base + "/pipelines/hostile/nodes/notes/table")
            expect(page.locator("#rows thead th").nth(2)).to_have_text(COLUMN)
            # The editor's own script works under the policy: it checks the text and previews a
            # node, whose markup-laden rows it shows as text.
            page.goto(base + "/pipelines/hostile/edit")
            page.locator("#text").press("End")
            page.locator("#text").type(" ")
            expect(page.locator("#check-state")).to_contain_text("valid")
            page.select_option("#preview-node", "notes")
            page.click("#preview-run")
            expect(page.locator("#preview-rows tbody td").nth(1)).to_have_text(SCRIPT)
            watched.settle()
            assert watched.pwned() is None
            assert watched.violations == [] and watched.errors == []

            # An escaping bug, played: markup put into the page itself. The policy refuses both.
            page.goto(base + "/pipelines/hostile/nodes/notes/table")
            page.evaluate("""() => {
              const script = document.createElement("script");
              script.textContent = "window.__pwned = 'inline script'";
              document.body.append(script);
              document.body.insertAdjacentHTML("beforeend", '<img src="/nothing.png" onerror="window.__pwned = 4">');
            }""")
            watched.settle()
            assert watched.pwned() is None
            refused = {v.split(" | ")[0] for v in watched.violations if " | " in v}  # the events
            assert refused == {"script-src-elem", "script-src-attr"}, watched.violations
        finally:
            browser.close()
