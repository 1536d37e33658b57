"""Every page of the UI in headless Chromium (Debian's, driven by Playwright), over real runs.

One test per page. Each takes screenshots at 1280x800 (the window, and the full page) into
its own temporary folder, ``<pytest tmp>/<test>/screenshots/``, never into the repository;
pytest keeps the last few runs' folders, and the path is printed (``-s`` shows it). No
request may leave 127.0.0.1, no page may raise a JavaScript error, and none may break a rule
of the UI's Content-Security-Policy (web/headers.py).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from segloop.config import Workspace
from segloop.scheduler import BackgroundRuns
from segloop.store import RunRecord, RunStore
from segloop.web.app import create_app
from tests.web.real import KEY, collector, copy_history, history  # noqa: F401 - fixture
from tests.web.test_browser import CHROMIUM, CHROMIUM_ARGS, serving, watch_csp

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists() and not os.environ.get("CI"),
                       reason="needs Debian's chromium: apt-get install -y chromium"),
]
VIEWPORT = {"width": 1280, "height": 800}


class Site:
    def __init__(self, base: str, workspace: Workspace, shots: Path):
        self.base, self.workspace, self.shots = base, workspace, shots

    def runs(self, pipeline: str) -> list[RunRecord]:
        store = RunStore(self.workspace.state_dir / "state.db")
        try:
            return sorted(store.list_runs(pipeline, 50), key=lambda r: r.started_at)
        finally:
            store.close()


@pytest.fixture
def site(history: Path, tmp_path: Path) -> Iterator[Site]:  # noqa: F811
    workspace = copy_history(history, tmp_path / "ws")
    shots = tmp_path / "screenshots"
    shots.mkdir()
    runs = BackgroundRuns(workspace)
    with collector(tmp_path / "collector"):
        with serving(create_app(workspace, runs=runs)) as base:
            yield Site(base, workspace, shots)
        runs.join(120)
    print(f"\nscreenshots: {shots}")


@contextmanager
def browser(site: Site) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    outside: list[str] = []
    errors: list[str] = []
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = chromium.new_page(viewport=VIEWPORT)
            page.set_default_timeout(60_000)

            def only_the_ui(route: Any) -> None:
                if route.request.url.startswith(site.base):
                    route.continue_()
                else:
                    outside.append(route.request.url)
                    route.abort()

            page.route("**/*", only_the_ui)
            page.on("pageerror", lambda error: errors.append(str(error)))
            violations = watch_csp(page)
            yield page
            assert violations == []  # no page needs anything its Content-Security-Policy forbids
        finally:
            chromium.close()
    assert outside == []  # nothing left the machine
    assert errors == []  # no script failed


def shoot(page: Any, site: Site, name: str) -> None:
    page.screenshot(path=str(site.shots / f"{name}.png"))
    page.screenshot(path=str(site.shots / f"{name}-full.png"), full_page=True)
    assert (site.shots / f"{name}.png").stat().st_size > 5_000


def test_overview_page(site: Site) -> None:
    from playwright.sync_api import expect

    with browser(site) as page:
        page.goto(site.base + "/")
        expect(page.locator("#health")).to_contain_text(re.compile(r"^(All 2 pipelines healthy\.|2 pipelines: .*)$"))
        expect(page.locator('tr[data-pipeline="segments"] .pill').first).to_have_text("healthy")
        strip = page.locator('tr[data-pipeline="shop"] svg[data-chart="recent-runs"] rect.run')
        expect(strip).to_have_count(3)
        expect(strip.first).to_have_attribute("data-status", "dry")
        shoot(page, site, "overview")
        page.click("text=segments")
        expect(page.locator("h1")).to_contain_text("segments")


def test_pipeline_page_with_trends_and_run_now(site: Site) -> None:
    from playwright.sync_api import expect

    with browser(site) as page:
        page.goto(site.base + "/pipelines/shop")
        for kind, count in (("messages-sent", 1), ("messages-problems", 1), ("quality", 4), ("durations", 1)):
            expect(page.locator(f'#trends svg[data-chart="{kind}"]')).to_have_count(count)
        expect(page.locator('svg[data-chart="messages-sent"] circle.point')).to_have_count(2)
        dry = site.runs("shop")[0]
        expect(page.locator(f'#runs tr[data-run-id="{dry.id}"] td.status')).to_have_text("dry run")
        shoot(page, site, "pipeline")
        page.click("#run-now")
        expect(page.locator("#started")).to_be_visible()
        expect(page.locator('#runs tr[data-status="success"]')).to_have_count(4, timeout=120_000)
        expect(page.locator('svg[data-chart="durations"] rect.run-bar')).to_have_count(4)
        expect(page.locator('svg[data-chart="messages-sent"] circle.point')).to_have_count(3)
        newest = site.runs("shop")[-1]
        assert newest.trigger == "ui" and newest.status == "success"
        shoot(page, site, "pipeline-after-run")


def test_run_page(site: Site) -> None:
    from playwright.sync_api import expect

    dry = site.runs("shop")[0]
    with browser(site) as page:
        page.goto(f"{site.base}/runs/{dry.id}")
        expect(page.locator("#run-status")).to_have_text("dry run")
        expect(page.locator("time").first).to_have_text(re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$"))
        shoot(page, site, "run")


def test_report_page(site: Site) -> None:
    from playwright.sync_api import expect

    last = site.runs("segments")[-1]
    with browser(site) as page:
        page.goto(f"{site.base}/runs/{last.id}")
        page.click("#open-report")
        grid = page.locator('svg[data-chart="rfm-grid"]')
        expect(grid).to_be_visible()
        loyal = grid.locator('g.cell[data-segment="potential_loyalists"] text.label').first
        expect(loyal).to_have_text("potentialloyalists")  # two whole words on two lines
        assert "…" not in (grid.text_content() or "")
        shoot(page, site, "report")


def test_table_page(site: Site) -> None:
    from playwright.sync_api import expect

    with browser(site) as page:
        page.goto(site.base + "/pipelines/shop")
        page.click('#nodes tr[data-node="clusters"] a')
        expect(page.locator("#rows tbody tr")).to_have_count(100)
        expect(page.locator("#rows thead th").nth(2)).to_have_text("cluster_name")
        shoot(page, site, "table")


def test_preview_page(site: Site) -> None:
    from playwright.sync_api import expect

    with browser(site) as page:
        page.goto(site.base + "/pipelines/shop/nodes/rfm_to_segment/preview")
        page.click("#preview-run")
        # Everything was sent by the last run and nothing changed since: nothing to send.
        rows = site.runs("shop")[-1].nodes[-1].rows
        expect(page.locator('#preview-counts tr:has(th:text-is("unchanged")) td')).to_have_text(f"{rows:,}")
        expect(page.locator('#preview-counts tr:has(th:text-is("to_send")) td')).to_have_text("0")
        assert KEY not in page.content()
        shoot(page, site, "preview")


def test_edit_page_live_checks_preview_and_save(site: Site) -> None:
    from playwright.sync_api import expect

    file = site.workspace.pipelines_dir / "shop.yml"
    with browser(site) as page:
        page.goto(site.base + "/pipelines/shop")
        page.click("#edit-link")
        text = page.locator("#text")
        expect(text).to_have_value(file.read_text())
        # Type a new node at the end with a typo in its type: the error shows as you type.
        text.click()
        page.keyboard.press("Control+End")
        page.keyboard.type("\n  top_customers:           # the best, for a campaign\n    type: sqll")
        line = len(file.read_text().splitlines()) + 3
        error = page.locator("#errors li")
        expect(error).to_have_count(1)
        expect(error).to_contain_text(f"pipelines/shop.yml:{line}: node `top_customers`: unknown node type `sqll`")
        expect(page.locator("#gutter .err")).to_have_text(str(line))
        expect(page.locator("#dag-state")).to_have_text("not redrawn: fix the errors first")
        shoot(page, site, "edit-error")
        # Fix it: the DAG is redrawn with the new node, which can be previewed at once.
        page.keyboard.press("Backspace")
        page.keyboard.type("\n    input: rfm\n    sql: select user_id, monetary from rfm where r_score = 5 order by monetary desc")
        expect(page.locator("#errors li")).to_have_count(0)
        expect(page.locator('#dag svg g.node[data-node="top_customers"]')).to_have_count(1)
        page.select_option("#preview-node", "top_customers")
        page.click("#preview-run")
        expect(page.locator("#preview-rows thead th")).to_have_text(["user_id", "monetary"])
        assert page.locator("#preview-rows tbody tr").count() > 0
        shoot(page, site, "edit-preview")
        typed = text.input_value()
        page.click("#save")
        expect(page.locator("#saved")).to_contain_text("Saved pipelines/shop.yml.")
        assert file.read_text() == typed
        assert "# the best, for a campaign" in file.read_text() and "# recency, frequency" in file.read_text()
        shoot(page, site, "edit-saved")
