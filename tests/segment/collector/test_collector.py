"""The collector answers as Segment's HTTP Tracking API does, and a 200 means archived."""

from __future__ import annotations

import gzip
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest

from segloop.segment.archive.files import read_all_messages
from segloop.segment.collector.app import RunningCollector, serve_in_thread, summary

KEY = "wk_test"
OTHER_KEY = "wk_other"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "collector"


@pytest.fixture
def collector(data_dir: Path) -> Iterator[RunningCollector]:
    with serve_in_thread({KEY: "web", OTHER_KEY: "mobile"}, data_dir) as running:
        yield running


@pytest.fixture
def client(collector: RunningCollector) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=collector.url, auth=(KEY, ""), timeout=10) as http:
        yield http


def track(i: int | str, **extra: object) -> dict[str, object]:
    return {
        "type": "track",
        "userId": f"u{i}",
        "event": "Order Completed",
        "messageId": f"m-{i}",
        "properties": {"revenue": 10},
        **extra,
    }


def archived(data_dir: Path) -> list[dict]:
    return read_all_messages(data_dir / "segment-logs")


def post_json(http: httpx.Client, path: str, body: object, **kwargs: object) -> httpx.Response:
    return http.post(path, content=orjson.dumps(body), headers={"Content-Type": "application/json"}, **kwargs)  # type: ignore[arg-type]


def test_batch_is_archived_in_segment_layout_before_200(client, collector, data_dir):
    res = post_json(client, "/v1/batch", {"batch": [track(1), track(2)]})
    assert res.status_code == 200
    assert res.json() == {"success": True}
    files = list((data_dir / "segment-logs" / "web").glob("*/*.gz"))
    assert len(files) == 1
    day = int(files[0].parent.name)
    assert day % 86_400_000 == 0
    assert abs(day - datetime.now(UTC).timestamp() * 1000) < 2 * 86_400_000
    assert [m["messageId"] for m in archived(data_dir)] == ["m-1", "m-2"]
    assert collector.stats["accepted"] == 2


@pytest.mark.parametrize("call", ["track", "identify", "page", "screen", "group", "alias"])
def test_single_call_endpoints_set_the_type(client, data_dir, call):
    body = {"userId": "u1", "event": "Signed Up", "groupId": "g1", "previousId": "a1"}
    res = post_json(client, f"/v1/{call}", body)
    assert res.status_code == 200
    (message,) = archived(data_dir)
    assert message["type"] == call


def test_import_is_an_alias_of_batch(client, data_dir):
    assert post_json(client, "/v1/import", {"batch": [track(1)]}).status_code == 200
    assert len(archived(data_dir)) == 1


def test_write_key_in_body_and_source_routing(collector, data_dir):
    with httpx.Client(base_url=collector.url) as http:
        res = post_json(http, "/v1/track", {"writeKey": OTHER_KEY, **track(5)})
    assert res.status_code == 200
    assert (data_dir / "segment-logs" / "mobile").is_dir()
    assert not (data_dir / "segment-logs" / "web").exists()
    (message,) = archived(data_dir)
    assert "writeKey" not in message  # secrets are never stored


@pytest.mark.parametrize("auth", [None, ("wrong", ""), ("", "")])
def test_unknown_or_missing_write_key_is_401(collector, data_dir, auth):
    with httpx.Client(base_url=collector.url, auth=auth) as http:
        res = post_json(http, "/v1/batch", {"batch": [track(1)]})
    assert res.status_code == 401
    assert "wrong" not in res.text
    assert archived(data_dir) == []


def test_timestamps_are_stamped_and_skew_corrected(client, data_dir):
    # The device clock is 1 hour behind: sent 10 s after the event, by its own clock.
    device_now = datetime.now(UTC) - timedelta(hours=1)
    event_at = device_now - timedelta(seconds=10)
    before = datetime.now(UTC)
    body = {
        "batch": [track(1, timestamp=event_at.isoformat())],
        "sentAt": device_now.isoformat(),
    }
    assert post_json(client, "/v1/batch", body).status_code == 200
    after = datetime.now(UTC)
    (message,) = archived(data_dir)
    received = datetime.fromisoformat(message["receivedAt"])
    assert before - timedelta(milliseconds=1) <= received <= after
    assert message["originalTimestamp"] == event_at.isoformat()
    corrected = datetime.fromisoformat(message["timestamp"])
    assert abs((received - corrected) - timedelta(seconds=10)) < timedelta(milliseconds=2)


def test_message_without_timestamp_gets_received_at(client, data_dir):
    assert post_json(client, "/v1/track", {"userId": "u", "event": "E"}).status_code == 200
    (message,) = archived(data_dir)
    assert message["timestamp"] == message["receivedAt"]
    assert "originalTimestamp" not in message
    assert message["messageId"]  # generated when the sender gave none


def test_batch_context_is_merged_into_each_message(client, data_dir):
    body = {
        "batch": [track(1, context={"ip": "1.2.3.4"}), track(2)],
        "context": {"library": {"name": "my-lib"}, "ip": "9.9.9.9"},
    }
    assert post_json(client, "/v1/batch", body).status_code == 200
    first, second = archived(data_dir)
    assert first["context"] == {"library": {"name": "my-lib"}, "ip": "1.2.3.4"}
    assert second["context"] == {"library": {"name": "my-lib"}, "ip": "9.9.9.9"}


def test_messages_without_ids_are_dropped_and_counted(client, collector, data_dir):
    body = {
        "batch": [
            track(1),
            {"type": "track", "event": "No One"},
            {"type": "track", "userId": "u3"},
            {"type": "bogus", "userId": "u4"},
            {"type": "group", "userId": "u5"},
            "not an object",
        ]
    }
    res = post_json(client, "/v1/batch", body)
    assert res.status_code == 200
    assert [m["messageId"] for m in archived(data_dir)] == ["m-1"]
    stats = collector.stats
    assert stats["received"] == 6
    assert stats["accepted"] == 1
    assert stats["dropped"] == {
        "missing_user_id_and_anonymous_id": 1,
        "missing_event": 1,
        "invalid_type": 1,
        "missing_group_id": 1,
        "not_an_object": 1,
    }
    assert stats["sources"]["web"]["accepted"] == 1


def test_duplicate_message_ids_are_dropped_across_restarts(data_dir):
    with serve_in_thread({KEY: "web"}, data_dir) as running, httpx.Client(
        base_url=running.url, auth=(KEY, "")
    ) as http:
        assert post_json(http, "/v1/batch", {"batch": [track(1), track(1), track(2)]}).status_code == 200
        assert running.stats["deduped"] == 1
    with serve_in_thread({KEY: "web"}, data_dir) as running, httpx.Client(
        base_url=running.url, auth=(KEY, "")
    ) as http:
        assert post_json(http, "/v1/batch", {"batch": [track(1), track(3)]}).status_code == 200
        assert running.stats["deduped"] == 1
        assert running.stats["accepted"] == 1
    assert sorted(m["messageId"] for m in archived(data_dir)) == ["m-1", "m-2", "m-3"]


def test_dedupe_window_zero_keeps_duplicates(data_dir):
    with serve_in_thread({KEY: "web"}, data_dir, dedupe_window_s=0) as running, httpx.Client(
        base_url=running.url, auth=(KEY, "")
    ) as http:
        post_json(http, "/v1/batch", {"batch": [track(1), track(1)]})
    assert len(archived(data_dir)) == 2


def test_gzip_body_is_accepted(client, data_dir):
    raw = gzip.compress(orjson.dumps({"batch": [track(i) for i in range(50)]}))
    res = client.post(
        "/v1/batch",
        content=raw,
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert res.status_code == 200
    assert len(archived(data_dir)) == 50


BIG = "x" * (33 * 1024)


@pytest.mark.parametrize(
    ("case", "content", "headers"),
    [
        ("invalid json", b'{"batch": [', {}),
        ("bare NaN", b'{"batch": [{"type": "track", "userId": "u", "event": "E", "properties": {"v": NaN}}]}', {}),
        ("bare Infinity", b'{"userId": "u", "event": "E", "properties": {"v": Infinity}}', {}),
        ("oversize message", orjson.dumps({"batch": [{**track(9), "properties": {"blob": BIG}}]}), {}),
        ("oversize request", orjson.dumps({"batch": [track(i, properties={"b": "y" * 20_000}) for i in range(30)]}), {}),
        ("wrong content type", orjson.dumps({"batch": [track(1)]}), {"Content-Type": "application/x-www-form-urlencoded"}),
        ("empty body", b"", {}),
        ("json array", b"[1, 2]", {}),
        ("batch not a list", b'{"batch": {"a": 1}}', {}),
        ("not gzip", b"plain", {"Content-Encoding": "gzip"}),
        ("gzip bomb", gzip.compress(b'{"batch": [' + b" " * 5_000_000 + b"]}"), {"Content-Encoding": "gzip"}),
    ],
)
def test_bad_input_gets_400_and_nothing_is_lost(collector, client, data_dir, case, content, headers):
    assert post_json(client, "/v1/batch", {"batch": [track("before")]}).status_code == 200
    path = "/v1/track" if case == "bare Infinity" else "/v1/batch"
    res = client.post(path, content=content, headers={"Content-Type": "application/json", **headers})
    assert res.status_code == 400, case
    assert res.headers["content-type"].startswith("text/plain")
    assert res.text.startswith("Bad Request")
    # The server stays up and keeps every message it accepted before and after.
    assert client.get("/health").status_code == 200
    assert post_json(client, "/v1/batch", {"batch": [track("after")]}).status_code == 200
    assert sorted(m["messageId"] for m in archived(data_dir)) == ["m-after", "m-before"]
    assert sum(collector.stats["rejected_requests"].values()) == 1


def test_batch_over_2500_messages_gets_200_and_is_dropped_like_segment(client, collector, data_dir):
    body = {"batch": [{"type": "track", "userId": "u", "event": "E"} for _ in range(2501)]}
    res = post_json(client, "/v1/batch", body)
    assert res.status_code == 200
    assert res.headers["X-Segloop-Dropped"] == "2501"
    assert archived(data_dir) == []
    # Counted as refused for being over the limit, not as invalid messages (issue #23).
    assert collector.stats["dropped"] == {}
    assert collector.stats["over_limit"] == {"batches": 1, "messages": 2501}
    invalid = [{"type": "track", "userId": "u"}, {"type": "track", "event": "E"}]
    assert post_json(client, "/v1/batch", {"batch": invalid}).status_code == 200
    line = summary(collector.stats)
    assert "2 invalid messages dropped (1 missing event, 1 missing user id and anonymous id)" in line
    assert "2,501 messages refused in 1 batch over Segment's 2,500-message limit" in line


def test_batch_of_exactly_2500_messages_is_accepted(client, data_dir):
    body = {"batch": [{"type": "track", "userId": "u", "event": "E"} for _ in range(2500)]}
    assert post_json(client, "/v1/batch", body).status_code == 200
    assert len(archived(data_dir)) == 2500


def test_concurrent_senders_are_all_archived_once(collector, data_dir):
    errors: list[str] = []

    def sender(worker: int) -> None:
        with httpx.Client(base_url=collector.url, auth=(KEY, "")) as http:
            for n in range(20):
                batch = [track(f"{worker}-{n}-{i}") for i in range(25)]
                res = post_json(http, "/v1/batch", {"batch": batch})
                if res.status_code != 200:
                    errors.append(res.text)

    threads = [threading.Thread(target=sender, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    ids = [m["messageId"] for m in archived(data_dir)]
    assert len(ids) == len(set(ids)) == 6 * 20 * 25
    # Group commit: far fewer fsynced commits than requests.
    assert collector.collector.committer.commits <= 6 * 20


def test_stats_and_health(client, collector):
    post_json(client, "/v1/batch", {"batch": [track(1)]})
    stats = client.get("/stats").json()
    assert stats["accepted"] == 1
    assert stats["requests"]["200"] >= 1
    assert client.get("/health").json() == {"status": "ok"}
    spec = client.get("/openapi.json").json()
    assert "/v1/batch" in spec["paths"]


def test_rate_limit_answers_429_with_retry_after(data_dir):
    with serve_in_thread({KEY: "web"}, data_dir, rate_limit=5) as running, httpx.Client(
        base_url=running.url, auth=(KEY, "")
    ) as http:
        codes = [post_json(http, "/v1/track", track(uuid.uuid4().hex)).status_code for _ in range(30)]
        limited = [c for c in codes if c == 429]
        assert limited, codes
        res = next(r for r in [post_json(http, "/v1/track", track("x")) for _ in range(10)] if r.status_code == 429)
        assert res.headers["Retry-After"] == "1"
        # Each second allows at most 5 (30 quick requests span at most a couple of seconds).
        assert codes.count(200) <= 5 * 3
    assert len(archived(data_dir)) == running.stats["accepted"]


def test_fail_rate_gives_500s_and_archives_nothing_for_them(data_dir):
    with serve_in_thread({KEY: "web"}, data_dir, fail_rate=0.5) as running, httpx.Client(
        base_url=running.url, auth=(KEY, "")
    ) as http:
        codes = [post_json(http, "/v1/track", track(i)).status_code for i in range(60)]
    assert set(codes) == {200, 500}
    assert 10 <= codes.count(500) <= 50
    assert len(archived(data_dir)) == codes.count(200)


def test_latency_is_added(data_dir):
    import time

    with serve_in_thread({KEY: "web"}, data_dir, latency_ms=200) as running, httpx.Client(
        base_url=running.url, auth=(KEY, "")
    ) as http:
        start = time.perf_counter()
        assert post_json(http, "/v1/track", track(1)).status_code == 200
        assert time.perf_counter() - start >= 0.2


def test_absurd_clocks_do_not_break_the_server(client, data_dir):
    # Found by schemathesis: year-1 event times with a year-9999 sentAt overflowed.
    body = {
        "batch": [track(1, timestamp="0001-01-01T00:00:00Z")],
        "sentAt": "9999-12-31T23:59:59Z",
    }
    assert post_json(client, "/v1/batch", body).status_code == 200
    (message,) = archived(data_dir)
    assert message["timestamp"] == message["receivedAt"]
    assert message["originalTimestamp"] == "0001-01-01T00:00:00Z"


def test_continuous_loading_into_a_warehouse(data_dir, tmp_path):
    import time

    from segloop.segment.archive.loader import load_archive
    from segloop.warehouses import Warehouse

    with Warehouse.duckdb(tmp_path / "live.duckdb") as wh:
        options = {"load_every_s": 0.1, "loader": lambda folder: load_archive(wh, folder / "segment-logs")}
        with serve_in_thread({KEY: "web"}, data_dir, **options) as running, httpx.Client(
            base_url=running.url, auth=(KEY, "")
        ) as http:
            assert post_json(http, "/v1/batch", {"batch": [track(i) for i in range(10)]}).status_code == 200
            deadline = time.monotonic() + 10
            while running.stats["loads"] == 0 or (running.stats["last_load"] or {}).get("messages", 0) == 0:
                assert time.monotonic() < deadline, running.stats
                time.sleep(0.05)
            assert running.stats["last_load"]["rows_inserted"]["web.tracks"] == 10
            assert post_json(http, "/v1/batch", {"batch": [track(i) for i in range(10, 15)]}).status_code == 200
        # Leaving the block loads the tail received since the last tick.
        assert wh.count(wh.table("tracks", "web")) == 15


def test_deeply_nested_message_is_dropped_not_a_server_error(client, collector, data_dir):
    # JSON parsers accept 300 levels; the archive's serializer stops at 254. Found by review.
    deep = b'{"n": ' * 300 + b"1" + b"}" * 300
    content = (
        b'{"batch": [{"type": "track", "userId": "u", "event": "E", "properties": '
        + deep + b"}, " + orjson.dumps(track(2)) + b"]}"
    )
    res = client.post("/v1/batch", content=content, headers={"Content-Type": "application/json"})
    assert res.status_code == 200
    assert [m["messageId"] for m in archived(data_dir)] == ["m-2"]
    assert collector.stats["dropped"] == {"nested_too_deeply": 1}


def test_browsers_may_post_cross_origin(client, data_dir):
    preflight = client.options(
        "/v1/track",
        headers={"Origin": "https://shop.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"},
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] in ("*", "https://shop.example")
    # analytics.js sends text/plain (no preflight) with the write key in the body.
    res = client.post(
        "/v1/track",
        content=orjson.dumps({**track(1), "writeKey": KEY}),
        headers={"Content-Type": "text/plain", "Origin": "https://shop.example"},
        auth=None,
    )
    assert res.status_code == 200
    assert res.headers["access-control-allow-origin"] == "*"
    assert len(archived(data_dir)) == 1


def test_archive_write_failure_is_a_500_and_the_next_request_succeeds(client, collector, data_dir):
    writer = collector.collector.committer.writer
    real_append = writer.append
    calls = {"n": 0}

    def failing_once(groups):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(28, "No space left on device")
        return real_append(groups)

    writer.append = failing_once
    failed = post_json(client, "/v1/batch", {"batch": [track(1)]})
    assert failed.status_code == 500  # retryable: senders try again
    assert post_json(client, "/v1/batch", {"batch": [track(1)]}).status_code == 200
    assert [m["messageId"] for m in archived(data_dir)] == ["m-1"]
    assert collector.stats["accepted"] == 1


def test_a_message_id_older_than_the_window_is_accepted_again(data_dir):
    # A fake clock: on a loaded machine two requests can be further apart than a short window.
    now = [1_000_000.0]
    with serve_in_thread({KEY: "web"}, data_dir, dedupe_window_s=300) as running, httpx.Client(
        base_url=running.url, auth=(KEY, "")
    ) as http:
        running.collector.committer.clock = lambda: now[0]
        post_json(http, "/v1/batch", {"batch": [track(1)]})
        now[0] += 299
        post_json(http, "/v1/batch", {"batch": [track(1)]})
        assert running.stats["deduped"] == 1
        now[0] += 2  # 301 s after the first acceptance
        post_json(http, "/v1/batch", {"batch": [track(1)]})
        assert running.stats["accepted"] == 2
    assert len(archived(data_dir)) == 2
