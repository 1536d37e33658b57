"""analytics.js (@segment/analytics-next) in headless Chromium delivers to the collector.

A local page (its own 127.0.0.1 port, so every call is cross-origin as on a real site)
loads the npm package's UMD bundle, installed from the npm registry by the test setup,
and uses the collector as both ``cdnURL`` (settings) and ``apiHost`` (events). Page,
identify, track, group and alias, in default mode (one POST per call to /v1/p, /v1/i ...)
and in batching mode (/v1/b), each land exactly once in Segment's warehouse tables.
Chromium is Debian's (never a downloaded browser); requests leaving 127.0.0.1 are blocked
and fail the test.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from segloop.segment.archive.files import read_all_messages
from segloop.segment.archive.loader import load_archive
from segloop.segment.collector.app import RunningCollector, serve_in_thread
from segloop.warehouses import Warehouse
from tests.segment.collector.npm_packages import npm_package

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
KEYS = {"wk_browser_default": "web_default", "wk_browser_batching": "web_batching"}

pytestmark = [
    pytest.mark.slow,
    # CI installs chromium (.ci/run), so there a missing browser fails instead of skipping.
    pytest.mark.skipif(not CHROMIUM.exists() and not os.environ.get("CI"),
                       reason="needs Debian's chromium: apt-get install -y chromium"),
]

PAGE = """<!doctype html>
<html><head><title>Shop home</title><script src="/ajs/index.js"></script></head>
<body><h1>Shop</h1><script>
window.sendAll = async function (cdnURL, writeKey, batching) {
  const options = batching
    ? {integrations: {"Segment.io": {deliveryStrategy: {strategy: "batching", config: {size: 50, timeout: 300}}}}}
    : {};
  const [analytics] = await AnalyticsNext.AnalyticsBrowser.load({writeKey, cdnURL}, options);
  await analytics.page("Docs", "Home", {section: "intro"});
  await analytics.identify("user-1", {email: "ada@example.com", plan: "pro", logins: 3});
  await analytics.track("Order Completed", {revenue: 42.5, currency: "EUR"});
  await analytics.group("group-1", {name: "Acme", employees: 12});
  await analytics.alias("user-1-new", "user-1");
  return analytics.user().anonymousId();
};
</script></body></html>
"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def site(tmp_path: Path) -> Iterator[str]:
    """The shop's page and the analytics-next bundle on a local port of their own."""
    root = tmp_path / "site"
    root.mkdir()
    (root / "index.html").write_text(PAGE)
    shutil.copytree(npm_package("@segment/analytics-next") / "dist" / "umd", root / "ajs")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join(10)


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[RunningCollector]:
    with serve_in_thread(KEYS, tmp_path / "collector") as running:
        yield running


def wait_for(page: object, condition: object, what: str, seconds: float = 60) -> None:
    """Poll ``condition`` while Playwright runs the page (its route handlers run only then)."""
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        page.wait_for_timeout(100)  # type: ignore[attr-defined]


def test_analytics_js_in_chromium_lands_every_call_once(site: str, collector: RunningCollector, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    posted: dict[str, list[str]] = {}
    outside: list[str] = []
    anonymous: dict[str, str] = {}
    bodies: list[dict] = []  # what analytics.js posted for alias, to compare with the warehouse
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            for key, mode in zip(KEYS, ("default", "batching"), strict=True):
                page = browser.new_page()
                page.set_default_timeout(60_000)

                def local_only(route: object) -> None:
                    url = route.request.url  # type: ignore[attr-defined]
                    if url.startswith("http://127.0.0.1:"):
                        route.continue_()  # type: ignore[attr-defined]
                    else:
                        outside.append(url)
                        route.abort()  # type: ignore[attr-defined]

                page.route("**/*", local_only)
                sent = posted.setdefault(mode, [])
                page.on("request", lambda r, sent=sent: sent.append(f"{r.method} {r.url}"))
                page.on("request", lambda r: r.url.endswith("/v1/a") and bodies.append(r.post_data_json))
                page.goto(f"{site}/index.html?from=test")
                anonymous[mode] = page.evaluate(
                    "([url, key, batching]) => window.sendAll(url, key, batching)",
                    [collector.url, key, mode == "batching"],
                )
                source = KEYS[key]
                wait_for(page, lambda source=source: collector.stats["sources"][source]["accepted"] >= 5,
                         f"5 messages from the {mode} page")
                page.close()
        finally:
            browser.close()

    assert outside == []
    api = collector.url + "/v1/"
    for mode, key in zip(("default", "batching"), KEYS, strict=True):
        calls = [line.split(" ", 1) for line in posted[mode] if line.split(" ", 1)[1].startswith(api)]
        assert ["GET", f"{api}projects/{key}/settings"] in calls
        paths = sorted(url[len(api):] for method, url in calls if method == "POST")
        assert paths == (["a", "g", "i", "p", "t"] if mode == "default" else ["b"]), paths

    stats = collector.stats
    assert stats["not_found"] == {} and stats["rejected_requests"] == {}
    assert stats["accepted"] == 10 and stats["deduped"] == 0 and stats["dropped"] == {}
    messages = read_all_messages(tmp_path / "collector" / "segment-logs")
    assert len(messages) == 10 and len({m["messageId"] for m in messages}) == 10

    with Warehouse.duckdb(tmp_path / "wh.duckdb") as wh:
        result = load_archive(wh, tmp_path / "collector")
        assert sorted(result.schemas) == sorted(KEYS.values())
        for mode, schema in zip(("default", "batching"), KEYS.values(), strict=True):

            def rows(table: str, schema: str = schema) -> list[dict]:
                return wh.to_arrow(wh.table(table, schema)).to_pylist()

            tables = {t: rows(t) for t in ("pages", "identifies", "tracks", "order_completed", "groups", "aliases", "users")}
            assert {t: len(r) for t, r in tables.items()} == dict.fromkeys(tables, 1), mode
            everything = [r for t, r in tables.items() if t != "users"]
            for (row,) in everything:
                assert row["anonymous_id"] == anonymous[mode]
                assert row["context_library_name"] == "analytics.js"
                assert row["context_page_url"] == f"{site}/index.html?from=test"
                assert row["context_page_path"] == "/index.html"
                assert row["context_page_title"] == "Shop home"
                assert row["context_page_search"] == "?from=test"
                assert "Chrome" in row["context_user_agent"]
                assert row["received_at"] is not None and row["sent_at"] is not None
            (page_row,) = tables["pages"]
            assert (page_row["name"], page_row["category"], page_row["section"]) == ("Home", "Docs", "intro")
            (identify,) = tables["identifies"]
            assert (identify["user_id"], identify["email"], identify["plan"], identify["logins"]) == (
                "user-1", "ada@example.com", "pro", 3)
            (order,) = tables["order_completed"]
            assert (order["event_text"], order["revenue"], order["currency"], order["user_id"]) == (
                "Order Completed", 42.5, "EUR", "user-1")
            (group,) = tables["groups"]
            assert (group["group_id"], group["name"], group["employees"]) == ("group-1", "Acme", 12)
            (alias,) = tables["aliases"]
            # analytics.js (1.84) sends the current user as `userId` of alias("user-1-new",
            # "user-1"); the warehouse keeps exactly what it sent.
            assert alias["previous_id"] == "user-1"
            assert alias["user_id"] == bodies[0]["userId"]
            (user,) = tables["users"]
            assert (user["id"], user["email"]) == ("user-1", "ada@example.com")
