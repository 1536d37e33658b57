"""The Client against a recording fake of Segment: payloads, batching, retries, loss."""

from __future__ import annotations

import base64
import math
import re
import threading
import time
from typing import Any

import pytest

from segloop.errors import DataError
from segloop.segment import Client, Outcome, QueuedMessage
from segloop.segment.messages import LIBRARY
from segloop.segment.send.transport import MAX_BATCH_BYTES, MAX_BATCH_MESSAGES
from tests.segment.send.fake_segment import FakeSegment

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$")


def make(fake: FakeSegment, **options: Any) -> Client:
    options.setdefault("retry_base_delay", 0.01)
    return Client("WRITE_KEY", host="http://segment.test", transport=fake, **options)


def strip_volatile(msg: dict[str, Any]) -> dict[str, Any]:
    assert ISO.match(msg.pop("timestamp"))
    assert isinstance(msg.pop("messageId"), str)
    return msg


def test_track_identify_group_exact_payloads_and_auth() -> None:
    fake = FakeSegment()
    client = make(fake)
    client.track("162514333", "Sales Prediction", {"iphone": 0.734, "apple_watch": 0.812})
    client.identify("162514333", {"ltv": 120.5}, context={"ip": "0.0.0.0"})
    client.group("162514333", "acme", {"plan": "pro"}, anonymous_id="a-1")
    report = client.shutdown()
    assert report.sent == 3 and report.lost == 0
    library = {"library": dict(LIBRARY)}
    got = sorted((strip_volatile(msg) for msg in fake.delivered()), key=lambda x: x["type"])
    assert got == [
        {"type": "group", "userId": "162514333", "anonymousId": "a-1", "groupId": "acme",
         "traits": {"plan": "pro"}, "context": library, "integrations": {}},
        {"type": "identify", "userId": "162514333", "traits": {"ltv": 120.5},
         "context": {"ip": "0.0.0.0", **library}, "integrations": {}},
        {"type": "track", "userId": "162514333", "event": "Sales Prediction",
         "properties": {"iphone": 0.734, "apple_watch": 0.812}, "context": library,
         "integrations": {}},
    ]
    request = fake.requests[0]
    assert request.url == "http://segment.test/v1/batch"
    assert request.headers["authorization"] == "Basic " + base64.b64encode(b"WRITE_KEY:").decode()
    assert request.headers["content-type"] == "application/json"
    assert request.body["writeKey"] == "WRITE_KEY"
    assert ISO.match(request.body["sentAt"])


def test_page_screen_alias_and_given_ids_and_timestamps() -> None:
    fake = FakeSegment()
    client = make(fake)
    client.page("u", "Docs", "Install", {"path": "/install"}, message_id="m-1",
                timestamp="2024-01-01T00:00:00.000+00:00")
    client.screen(anonymous_id="a", name="Home")
    client.alias("old-id", "new-id")
    client.shutdown()
    by_type = {msg["type"]: msg for msg in fake.delivered()}
    assert by_type["page"]["messageId"] == "m-1"
    assert by_type["page"]["timestamp"] == "2024-01-01T00:00:00.000+00:00"
    assert by_type["page"]["category"] == "Docs" and by_type["page"]["name"] == "Install"
    assert by_type["screen"]["anonymousId"] == "a" and "userId" not in by_type["screen"]
    assert by_type["alias"]["previousId"] == "old-id" and by_type["alias"]["userId"] == "new-id"


def test_missing_required_arguments_raise_clear_errors() -> None:
    client = make(FakeSegment())
    with pytest.raises(DataError, match="user_id"):
        client.track(event="E")
    with pytest.raises(DataError, match="event"):
        client.track("u")
    with pytest.raises(DataError, match="group_id"):
        client.group("u")
    client.shutdown()


def test_write_key_is_not_in_repr() -> None:
    client = make(FakeSegment())
    assert "WRITE_KEY" not in repr(client) and "[secure]" in repr(client)
    client.shutdown()


@pytest.mark.parametrize("count", [1, 99, 100, 101, 2501])
def test_batches_respect_upload_size_and_deliver_everything(count: int) -> None:
    fake = FakeSegment()
    client = make(fake, upload_size=100)
    for i in range(count):
        client.track(f"user-{i}", "E", {"i": i})
    report = client.flush()
    client.shutdown()
    sizes = [len(r.body["batch"]) for r in fake.requests]
    assert max(sizes) <= 100
    assert sum(sizes) == count and len(fake.requests) == math.ceil(count / 100)
    assert report.sent == count and report.lost == 0
    assert sorted(m["properties"]["i"] for m in fake.delivered()) == list(range(count))


def test_upload_size_above_segments_cap_is_refused() -> None:
    with pytest.raises(ValueError, match="2500"):
        make(FakeSegment(), upload_size=MAX_BATCH_MESSAGES + 1)


def test_at_most_2500_messages_per_batch() -> None:
    fake = FakeSegment()
    client = make(fake, upload_size=MAX_BATCH_MESSAGES, max_in_flight=1)
    for i in range(2501):  # small messages, so the 500 KB limit does not cut first
        assert client.enqueue({"type": "track", "userId": "u", "event": "E", "messageId": str(i)})
    client.shutdown()
    assert sorted(len(r.body["batch"]) for r in fake.requests) == [1, 2500]


def test_request_bodies_never_exceed_500_kb_envelope_included_and_are_packed_tightly() -> None:
    fake = FakeSegment()
    client = make(fake, upload_size=2500, max_in_flight=1)
    payloads = []
    for i in range(120):  # 7 to 31 KB each, awkward sizes
        ok, msg = client.track("u", "E", {"i": i, "blob": "x" * (7_000 + (i * 7919) % 24_000)})
        assert ok
        payloads.append(msg)
    report = client.shutdown()
    assert report.sent == 120
    sizes = [r.raw_size for r in fake.requests]
    assert max(sizes) <= MAX_BATCH_BYTES
    # every batch but the last could not have taken the next message
    by_index = {m["properties"]["i"]: m for m in payloads}
    from segloop.segment.messages import dumps

    for request in fake.requests[:-1]:
        last = request.body["batch"][-1]["properties"]["i"]
        assert request.raw_size + 1 + len(dumps(by_index[last + 1])) > MAX_BATCH_BYTES


def test_partial_batch_goes_out_after_upload_interval_without_flush() -> None:
    fake = FakeSegment()
    client = make(fake, upload_interval=0.3)
    start = time.monotonic()
    for i in range(5):
        client.track("u", "E", {"i": i})
    # No flush: only the interval can send it. An event, not a wall-clock upper bound, so a
    # loaded machine cannot fail the test; a client that never sends fails it after 60 s.
    assert fake.first_request.wait(60), "a partial batch was never sent without flush()"
    waited = fake.requests[0].at - start
    assert waited >= 0.25  # it waited for the interval (slowness only lengthens this)
    assert len(fake.requests[0].body["batch"]) == 5
    client.shutdown()


def test_one_poison_message_is_rejected_and_all_others_delivered() -> None:
    fake = FakeSegment(poison="poison")
    seen: dict[str, list[str]] = {}
    lock = threading.Lock()

    def on_batch_done(items: list[QueuedMessage], outcome: Outcome) -> None:
        with lock:
            seen.setdefault(outcome.status, []).extend(i.message_id for i in items)

    errors: list[tuple[Exception, list[dict[str, Any]]]] = []
    client = make(fake, on_batch_done=on_batch_done, on_error=lambda e, batch: errors.append((e, batch)))
    poison_id = ""
    for i in range(100):
        props = {"i": i, "poison": True} if i == 37 else {"i": i}
        ok, msg = client.track("u", "E", props)
        if i == 37:
            poison_id = msg["messageId"]
    report = client.shutdown()
    assert report.sent == 99 and report.rejected == 1 and report.rejected_by_reason == {"http_400": 1}
    assert sorted(m["properties"]["i"] for m in fake.delivered()) == [i for i in range(100) if i != 37]
    assert seen["rejected"] == [poison_id] and len(seen["sent"]) == 99
    assert len(errors) == 1 and errors[0][1][0]["messageId"] == poison_id
    assert "Invalid JSON" in str(errors[0][0])


def test_429_with_retry_after_pauses_every_sender_that_long() -> None:
    fake = FakeSegment(script=[(429, {"Retry-After": "1"})])
    client = make(fake, upload_size=10)
    pauses: list[float] = []  # what the client asked its senders to wait, not wall time
    rate_limited = client._throttle.rate_limited
    client._throttle.rate_limited = lambda delay: (pauses.append(delay), rate_limited(delay))[1]  # type: ignore[method-assign]
    for i in range(50):
        client.track("u", "E", {"i": i})
    report = client.shutdown()
    assert report.sent == 50 and report.lost == 0
    limited = next(r for r in fake.requests if r.status == 429)
    later = [r.at - limited.at for r in fake.requests if r.at > limited.at]
    assert later and min(later) >= 0.95  # no sender sent anything during the pause
    assert pauses == [1.0]  # ... which lasted the server's Retry-After, no longer
    assert sorted(fake.delivered_ids().values()) == [1] * 50


def test_429_halves_concurrency() -> None:
    fake = FakeSegment(script=[(429, {"Retry-After": "0"})])
    client = make(fake, max_in_flight=8)
    client.track("u", "E")
    client.flush()
    assert client._throttle.limit == 4  # slowed down, rather than hammering
    client.shutdown()


@pytest.mark.parametrize("failure", [500, 502, 503, 504, 408, "reset", "stall"])
def test_server_errors_resets_and_stalls_are_retried(failure: Any) -> None:
    fake = FakeSegment(script=[failure, failure])
    client = make(fake, upload_size=10)
    for i in range(30):
        client.track("u", "E", {"i": i})
    report = client.shutdown()
    assert report.sent == 30 and report.lost == 0
    assert sorted(fake.delivered_ids().values()) == [1] * 30
    assert any(r.headers.get("x-retry-count") for r in fake.requests)


def test_nothing_lost_and_nothing_delivered_twice_under_random_failures() -> None:
    import random

    rng = random.Random(7)
    choices = [None] * 6 + [500, 503, "reset", "stall", (429, {"Retry-After": "0"})]
    fake = FakeSegment(fail_rate=lambda n: rng.choice(choices))
    client = make(fake, upload_size=50, max_in_flight=6, max_retries=30)
    ids = {client.track(f"u{i}", "E", {"i": i})[1]["messageId"] for i in range(3000)}
    report = client.shutdown()
    delivered = fake.delivered_ids()
    assert set(delivered) == ids
    assert max(delivered.values()) == 1
    assert report.sent == 3000 and report.lost == 0
    assert any(r.status != 200 for r in fake.requests)


def test_retries_exhausted_are_reported_as_failed_not_hidden() -> None:
    fake = FakeSegment(fail_rate=lambda n: 503)
    errors: list[Any] = []
    client = make(fake, max_retries=2, on_error=lambda e, batch: errors.append(batch))
    for i in range(5):
        client.track("u", "E", {"i": i})
    report = client.shutdown()
    assert report.failed == 5 and report.sent == 0 and report.lost == 5
    assert len(fake.requests) == 3  # first try + 2 retries
    assert sum(len(b) for b in errors) == 5


def test_a_failing_endpoint_is_said_once_not_left_to_look_like_a_hang(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeSegment(fail_rate=lambda n: 503)
    client = make(fake, max_retries=2, upload_size=2)
    for i in range(6):  # three batches, each retried twice
        client.track("u", "E", {"i": i})
    with caplog.at_level("WARNING", logger="segloop"):
        report = client.shutdown()
    assert report.failed == 6
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert client.url in warnings[0] and "retrying" in warnings[0] and "up to 2 tries" in warnings[0]


def test_total_retry_time_is_bounded() -> None:
    fake = FakeSegment(fail_rate=lambda n: (503, {"Retry-After": "0.2"}))
    outcomes: list[Outcome] = []
    client = make(fake, max_retries=1000, max_retry_time=0.5,
                  on_batch_done=lambda items, outcome: outcomes.append(outcome))
    client.track("u", "E")
    report = client.flush(timeout=120)  # 1,000 tries x 0.2 s would be 200 s
    assert report.failed == 1 and report.pending == 0
    assert [o.reason for o in outcomes] == ["retry_time_exceeded"]
    # Tries at 0 s, 0.2 s, 0.4 s: the next (0.6 s) would pass max_retry_time. A slow machine
    # makes fewer tries, never more.
    assert 1 <= len(fake.requests) <= 3
    client.shutdown()


def test_other_4xx_rejects_whole_batch_without_bisecting() -> None:
    fake = FakeSegment(fail_rate=lambda n: 401)
    client = make(fake, upload_size=100)
    for i in range(64):
        client.track("u", "E", {"i": i})
    report = client.shutdown()
    assert report.rejected == 64 and report.rejected_by_reason == {"http_401": 64}
    assert len(fake.requests) == 1


def test_full_queue_drop_returns_false_counts_and_never_raises() -> None:
    gate = threading.Event()
    fake = FakeSegment(gate=gate)
    client = make(fake, max_queue_size=10, upload_size=5, max_in_flight=1, on_full="drop")
    results = [client.track("u", "E", {"i": i}) for i in range(200)]
    accepted = [r for r in results if r]
    dropped = [r for r in results if not r]
    assert dropped and all(r.reason == "queue is full" for r in dropped)
    gate.set()
    report = client.shutdown()
    assert report.dropped == len(dropped)
    assert report.sent == len(accepted) == len(fake.delivered())


def test_full_queue_block_waits_and_loses_nothing() -> None:
    gate = threading.Event()
    fake = FakeSegment(gate=gate)
    client = make(fake, max_queue_size=10, upload_size=5, max_in_flight=1, on_full="block")
    done = threading.Event()

    def produce() -> None:
        for i in range(200):
            assert client.track("u", "E", {"i": i})
        done.set()

    producer = threading.Thread(target=produce)
    producer.start()
    time.sleep(0.3)
    assert not done.is_set()  # backpressure: the producer waits for room
    gate.set()
    producer.join(10)
    report = client.shutdown()
    assert done.is_set()
    assert report.sent == 200 and report.dropped == 0
    assert sorted(m["properties"]["i"] for m in fake.delivered()) == list(range(200))


def test_oversize_message_is_rejected_and_counted_not_raised() -> None:
    fake = FakeSegment()
    client = make(fake)
    result = client.track("u", "E", {"blob": "x" * 40_000})
    assert not result and "32,768" in (result.reason or "")
    client.track("u", "E")
    report = client.shutdown()
    assert report.rejected_by_reason == {"too_large": 1} and report.sent == 1


def test_gzip_bodies() -> None:
    fake = FakeSegment()
    client = make(fake, gzip=True)
    client.track("u", "E", {"text": "hello " * 200})
    client.shutdown()
    assert fake.requests[0].headers["content-encoding"] == "gzip"
    assert fake.requests[0].raw_size < 1200
    assert fake.delivered()[0]["properties"]["text"].startswith("hello")


def test_region_and_host_choose_the_endpoint() -> None:
    assert Client("k").url == "https://api.segment.io/v1/batch"
    assert Client("k", region="eu").url == "https://events.eu1.segmentapis.com/v1/batch"
    assert Client("k", host="http://127.0.0.1:8088/").url == "http://127.0.0.1:8088/v1/batch"
    with pytest.raises(ValueError, match="region"):
        Client("k", region="mars")


def test_threads_start_on_first_use_and_are_all_joined_on_shutdown() -> None:
    def senders() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith("segloop-sender")]

    before = len(senders())
    client = make(FakeSegment(), max_in_flight=5)
    assert len(senders()) == before
    client.track("u", "E")
    assert len(senders()) == before + 5
    client.shutdown()
    assert len(senders()) == before
    assert not client.track("u", "E")  # after shutdown: refused, not hanging
    client.shutdown()  # twice is fine


def test_shutdown_with_timeout_reports_undelivered_as_failed() -> None:
    gate = threading.Event()
    fake = FakeSegment(gate=gate)
    client = make(fake, max_in_flight=1, upload_size=2)
    for i in range(6):
        client.track("u", "E", {"i": i})
    threading.Timer(1.0, gate.set).start()
    report = client.shutdown(timeout=0.2)
    assert report.sent + report.failed == 6 and report.failed >= 4
    assert report.pending == 0


def test_flush_returns_when_nothing_was_sent() -> None:
    client = make(FakeSegment())
    assert client.flush().sent == 0
    client.shutdown()


def test_queue_smaller_than_a_batch_does_not_wait_for_the_interval_each_time() -> None:
    fake = FakeSegment()
    # An hour-long interval: if any refill waited for it, the producer would still be blocked
    # when the (generous) join below gives up; no wall-clock bound on how fast it runs.
    client = make(fake, max_queue_size=10, upload_size=100, on_full="block", upload_interval=3600)
    queued: list[bool] = []
    producer = threading.Thread(
        target=lambda: queued.extend(bool(client.track("u", "E", {"i": i})) for i in range(200)),
        daemon=True)
    producer.start()
    try:
        producer.join(120)
        assert not producer.is_alive(), "a full queue smaller than a batch waited for upload_interval"
        assert queued == [True] * 200
        report = client.flush(timeout=120)
    finally:
        client.shutdown(timeout=0)  # also releases a producer still blocked
    assert report.sent == 200


def test_an_endpoint_refusing_everything_is_not_bisected_forever() -> None:
    fake = FakeSegment(fail_rate=lambda n: 400)
    client = make(fake, upload_size=100, max_in_flight=1)
    for i in range(2000):
        client.track("u", "E", {"i": i})
    report = client.shutdown()
    assert report.rejected == 2000 and report.rejected_by_reason == {"http_400": 2000}
    # bisecting every batch down to single messages would take 20 x 199 = 3,980 requests
    assert len(fake.requests) < 300
