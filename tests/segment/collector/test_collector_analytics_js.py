"""What analytics.js (@segment/analytics-next) asks of a Segment API, request by request.

The browser test (test_collector_browser.py) runs the real library; these pin each piece
it relies on, as it sends them: text/plain JSON with the write key in the body, the short
paths, the batch path, its metrics posts, and the settings it fetches at start.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from segloop.segment.archive.files import read_all_messages
from segloop.segment.collector.app import RunningCollector, serve_in_thread

KEY = "wk_ajs"
BROWSER = {"Content-Type": "text/plain", "Origin": "https://shop.example"}


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[RunningCollector]:
    with serve_in_thread({KEY: "web"}, tmp_path / "collector") as running:
        yield running


@pytest.fixture
def http(collector: RunningCollector) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=collector.url, timeout=10) as client:
        yield client


def archived(tmp_path: Path) -> list[dict]:
    return read_all_messages(tmp_path / "collector" / "segment-logs")


@pytest.mark.parametrize(
    ("letter", "call", "fields"),
    [
        ("t", "track", {"event": "Order Completed", "properties": {"revenue": 3}}),
        ("i", "identify", {"traits": {"plan": "pro"}}),
        ("p", "page", {"name": "Home", "properties": {"path": "/"}}),
        ("s", "screen", {"name": "Home"}),
        ("g", "group", {"groupId": "g1", "traits": {"name": "Acme"}}),
        ("a", "alias", {"previousId": "anon-1"}),
    ],
)
def test_short_paths_take_text_plain_with_the_write_key_in_the_body(http, collector, tmp_path, letter, call, fields):
    body = {"type": call, "userId": "u1", "anonymousId": "anon-1", "writeKey": KEY,
            "messageId": f"ajs-{letter}", "sentAt": "2025-01-01T00:00:01Z",
            "timestamp": "2025-01-01T00:00:00Z", **fields}
    res = http.post(f"/v1/{letter}", content=orjson.dumps(body), headers=BROWSER)
    assert res.status_code == 200, res.text
    assert res.headers["access-control-allow-origin"] == "*"
    (message,) = archived(tmp_path)
    assert message["type"] == call and message["messageId"] == f"ajs-{letter}"
    assert "writeKey" not in message
    assert collector.stats["accepted"] == 1


def test_batching_mode_posts_to_v1_b(http, collector, tmp_path):
    batch = [{"type": "track", "anonymousId": "a", "event": "E", "messageId": f"b-{i}"} for i in range(3)]
    body = {"writeKey": KEY, "batch": batch, "sentAt": "2025-01-01T00:00:01Z"}
    assert http.post("/v1/b", content=orjson.dumps(body), headers=BROWSER).status_code == 200
    assert [m["messageId"] for m in archived(tmp_path)] == ["b-0", "b-1", "b-2"]


def test_metrics_posts_are_answered_and_kept_apart_from_events(http, collector, tmp_path):
    # The body analytics.js's RemoteMetrics sends (text/plain, no write key).
    series = {"series": [{"type": "Counter", "metric": "analytics_js.invoke", "value": 1,
                          "tags": {"library": "analytics.js", "library_version": "npm:next-1.84.3"}}]}
    res = http.post("/v1/m", content=orjson.dumps(series), headers=BROWSER)
    assert res.status_code == 200
    assert res.headers["access-control-allow-origin"] == "*"
    assert collector.stats["metrics_posts"] == 1
    assert collector.stats["received"] == 0 and collector.stats["accepted"] == 0
    assert archived(tmp_path) == []
    huge = b"x" * (600 * 1024)
    assert http.post("/v1/m", content=huge, headers=BROWSER).status_code == 400


def test_settings_point_analytics_js_back_at_the_collector(http, collector):
    res = http.get(f"/v1/projects/{KEY}/settings", headers={"Origin": "https://shop.example"})
    assert res.status_code == 200
    assert res.headers["access-control-allow-origin"] == "*"
    segment_io = res.json()["integrations"]["Segment.io"]
    assert segment_io["apiHost"] == f"127.0.0.1:{collector.port}/v1"
    assert segment_io["protocol"] == "http"
    assert segment_io["apiKey"] == KEY
    assert res.json()["metrics"]["sampleRate"] == 0
    # The browser's Host header is echoed only when it is a plain host[:port].
    odd = http.get(f"/v1/projects/{KEY}/settings", headers={"Host": 'evil"/><script>'})
    assert odd.json()["integrations"]["Segment.io"]["apiHost"] == f"127.0.0.1:{collector.port}/v1"
    unknown = http.get("/v1/projects/nosuchkey/settings")
    assert unknown.status_code == 404
    assert "--key" in unknown.text
    assert collector.stats["rejected_requests"] == {"unknown_write_key": 1}


def test_unknown_paths_are_counted_and_logged_once_per_path(http, collector, caplog):
    with caplog.at_level(logging.WARNING, logger="segloop.collector"):
        for _ in range(3):
            assert http.post("/v1/x", content=b"{}", headers=BROWSER).status_code == 404
        assert http.get("/v1/track").status_code == 405
        assert http.get("/nope").status_code == 404
    stats = collector.stats
    assert stats["not_found"] == {"POST /v1/x": 3, "GET /v1/track": 1, "GET /nope": 1}
    assert stats["requests"] == {"404": 4, "405": 1}
    lines = [r.getMessage() for r in caplog.records]
    assert sum("/v1/x" in line for line in lines) == 1
    assert len(lines) == 3


def test_unknown_paths_remembered_are_bounded(http, collector):
    for i in range(130):
        http.get(f"/scan/{i}")
    not_found = collector.stats["not_found"]
    assert len(not_found) == 101 and not_found["other"] == 30
