"""Workspace data full of ``<script>`` and ``onerror=`` runs nothing in a real browser, and the
UI's own script and stylesheet break no rule of its Content-Security-Policy (Chromium + Playwright).

Each page of the hostile workspace (tests/security/hostile.py) is opened: no payload runs
(``window.__pwned`` stays unset), the payload is on the page as text, the stylesheet is
applied and the browser reports no CSP violation (``securitypolicyviolation`` events and
console messages, listened to from before the page's first byte). Then the test plays an
escaping bug: the table page arrives with its payloads unescaped (``<script>``,
``<img onerror=...>``, ``<style>``), and the browser refuses each by the policy; and markup
made from a string by a script (``insertAdjacentHTML``) is refused by Trusted Types.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from markupsafe import escape

from segloop.config import Workspace
from segloop.scheduler import BackgroundRuns
from segloop.web.app import create_app
from tests.security.hostile import (
    COLUMN,
    IMG,
    PAYLOADS,
    SCRIPT,
    TABLE,
    hostile_workspace,
    last_run_id,
)
from tests.web.test_browser import CHROMIUM, CHROMIUM_ARGS, browser_tools, serving, watch_csp  # noqa: F401

pytestmark = pytest.mark.slow



@pytest.fixture
def ui(tmp_path: Path) -> Iterator[tuple[str, Workspace]]:
    workspace = Workspace.load(hostile_workspace(tmp_path / "ws"))
    runs = BackgroundRuns(workspace)
    with serving(create_app(workspace, runs=runs)) as base:
        yield base, workspace
    runs.join(60)


def refused(violations: list[str]) -> set[str]:
    """The CSP directives of the violation events among ``violations`` (not the console lines)."""
    return {v.split(" | ")[0] for v in violations if " | " in v}


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

            # An escaping bug, played: the table page arrives with its payloads unescaped (the
            # server's answer, headers and all, with `&lt;script&gt;` put back to `<script>`).
            # The policy refuses the script, the handler and the style, and says by which rule.
            table = base + "/pipelines/hostile/nodes/notes/table"

            def unescaped(route: Any) -> None:
                answer = route.fetch()
                body = answer.text()
                for payload in PAYLOADS:
                    body = body.replace(str(escape(payload)), payload)
                route.fulfill(response=answer, body=body)

            page.route(table, unescaped)
            before = len(watched.violations)
            page.goto(table)
            watched.settle()
            assert page.locator("#rows script").count() == 1 and page.locator("#rows img[onerror]").count() == 2
            assert watched.pwned() is None
            assert refused(watched.violations[before:]) == {"script-src-elem", "script-src-attr", "style-src-elem"}
            assert page.evaluate("getComputedStyle(document.body).display") == "block"  # the injected style
            # And a script of the page's own that made markup from a string is refused too (Trusted Types).
            before = len(watched.violations)
            page.evaluate("""() => { try {
                document.body.insertAdjacentHTML("beforeend", '<img id="injected" src="/x.png" onerror="window.__pwned = 4">');
            } catch (refusal) {} }""")
            watched.settle()
            assert refused(watched.violations[before:]) == {"require-trusted-types-for"}
            assert page.locator("#injected").count() == 0 and watched.pwned() is None
        finally:
            browser.close()
