"""The settings table of docs/segment-client.md, default by default, observed from outside.

Each test creates the client without the setting it pins, so a changed default fails here;
the fake transport (tests/segment/send/fake_segment.py) stands in for Segment's cloud only.
"""

from __future__ import annotations

import threading
from typing import Any

import httpx
import orjson

from segloop.segment import Client, Outcome, QueuedMessage
from tests.segment.send.fake_segment import FakeSegment

WAIT_S = 60  # only reached when the behaviour is broken


def make(fake: Any, **options: Any) -> Client:
    return Client("WRITE_KEY", host="http://segment.test", transport=fake, **options)


def test_upload_size_defaults_to_100_messages_per_request() -> None:
    fake = FakeSegment()
    client = make(fake)
    for i in range(250):
        client.track("u", "E", {"i": i})
    report = client.shutdown()
    assert report.sent == 250
    assert sorted(len(r.body["batch"]) for r in fake.requests) == [50, 100, 100]


def test_upload_interval_defaults_to_half_a_second() -> None:
    fake = FakeSegment()
    client = make(fake)
    client.track("u", "E")
    # Nothing is sent for the first 0.45 s (a negative check: a slow machine only delays it) ...
    assert not fake.first_request.wait(0.45)
    # ... and then the partial batch goes out by itself, without flush().
    assert fake.first_request.wait(WAIT_S)
    assert len(fake.requests[0].body["batch"]) == 1
    client.shutdown()


def test_max_queue_size_defaults_to_10000_and_on_full_to_drop() -> None:
    gate = threading.Event()  # a stuck Segment: nothing leaves the queue but one batch
    fake = FakeSegment(gate=gate)
    client = make(fake, max_in_flight=1)
    results = [client.track("u", "E", {"i": i}) for i in range(10_500)]
    accepted = sum(1 for r in results if r)
    dropped = [r for r in results if not r]
    # 10,000 wait in the queue, at most one batch (100) is with the sender.
    assert 10_000 <= accepted <= 10_100
    assert dropped and all(r.reason == "queue is full" for r in dropped)  # dropped, not blocked
    gate.set()
    report = client.shutdown()
    assert report.sent == accepted and report.dropped == len(dropped)


def test_max_retries_defaults_to_10_retries_after_the_first_try() -> None:
    fake = FakeSegment(fail_rate=lambda n: 503)
    outcomes: list[Outcome] = []
    client = make(fake, retry_base_delay=0.001,
                  on_batch_done=lambda items, outcome: outcomes.append(outcome))
    client.track("u", "E")
    report = client.flush(timeout=WAIT_S)
    assert report.failed == 1
    assert [o.reason for o in outcomes] == ["retries_exhausted"]
    assert len(fake.requests) == 11
    client.shutdown()


def test_gzip_is_off_by_default_and_on_when_asked() -> None:
    plain, zipped = FakeSegment(), FakeSegment()
    for fake, options in ((plain, {}), (zipped, {"gzip": True})):
        client = make(fake, **options)
        client.track("u", "E")
        assert client.shutdown().sent == 1
    assert "content-encoding" not in plain.requests[0].headers
    assert zipped.requests[0].headers["content-encoding"] == "gzip"


def test_send_false_sends_nothing_and_reports_every_message_failed() -> None:
    fake = FakeSegment()
    outcomes: list[tuple[str, str | None]] = []

    def on_done(items: list[QueuedMessage], outcome: Outcome) -> None:
        outcomes.extend((outcome.status, outcome.reason) for _ in items)

    client = make(fake, send=False, on_batch_done=on_done)
    results = [client.track("u", "E", {"i": i}) for i in range(5)]
    report = client.shutdown()
    assert all(results)  # accepted, as with Segment's library
    assert fake.requests == []
    assert report.sent == 0 and report.failed == 5
    assert outcomes == [("failed", "send_disabled")] * 5


class Refuses:
    """A Segment stand-in answering ``status`` to any batch holding a message marked bad."""

    def __init__(self, status: int):
        self.status = status
        self.batches: list[list[int]] = []
        self.delivered: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        batch = orjson.loads(request.content)["batch"]
        numbers = [m["properties"]["i"] for m in batch]
        with self.lock:
            self.batches.append(numbers)
            if any(m["properties"].get("bad") for m in batch):
                return httpx.Response(self.status, text="Unprocessable Entity")
            self.delivered.extend(numbers)
        return httpx.Response(200, json={"success": True})


def test_422_splits_the_batch_down_to_the_one_bad_message() -> None:
    segment = Refuses(422)
    client = make(segment, max_in_flight=1)
    for i in range(100):
        client.track("u", "E", {"i": i, **({"bad": True} if i == 61 else {})})
    report = client.shutdown()
    assert report.sent == 99 and report.rejected == 1
    assert report.rejected_by_reason == {"http_422": 1}
    assert sorted(segment.delivered) == [i for i in range(100) if i != 61]
    assert [61] in segment.batches  # bisected down to the single message
    assert len(segment.batches) <= 2 * 7 + 1  # halves, not one request per message
