"""The HTTP policy on its own: what is retried, how long to wait, how sizes are counted."""

from __future__ import annotations

import email.utils
import threading
import time

import httpx
import orjson
import pytest

from segloop.segment.send.transport import (
    MAX_RETRY_AFTER,
    Envelope,
    Throttle,
    backoff_delay,
    classify,
    endpoint_url,
    parse_retry_after,
)


@pytest.mark.parametrize(
    ("status", "kind"),
    [(200, "ok"), (204, "ok"), (400, "final"), (401, "final"), (413, "final"), (408, "retry"),
     (429, "retry"), (500, "retry"), (501, "final"), (503, "retry"), (505, "final"), (302, "final")],
)
def test_answers_are_sorted_into_ok_retry_and_final(status: int, kind: str) -> None:
    answer = classify(status, httpx.Headers(), "Invalid JSON")
    assert answer.kind == kind
    if kind != "ok":
        assert f"HTTP {status}" in answer.detail


def test_only_payload_errors_are_worth_splitting() -> None:
    assert classify(400, {}, "").splittable
    assert classify(413, {}, "").splittable
    assert not classify(401, {}, "").splittable
    assert not classify(503, {}, "").splittable


def test_retry_after_in_seconds_as_a_date_and_as_rate_limit_reset() -> None:
    assert parse_retry_after(httpx.Headers({"Retry-After": "3"})) == 3.0
    assert parse_retry_after(httpx.Headers({"Retry-After": "100000"})) == MAX_RETRY_AFTER
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    delay = parse_retry_after(httpx.Headers({"Retry-After": when}))
    assert delay is not None and 28 <= delay <= 31
    assert parse_retry_after(httpx.Headers({"X-RateLimit-Reset": "2"})) == 2.0
    epoch = str(int(time.time() + 10))
    reset = parse_retry_after(httpx.Headers({"X-RateLimit-Reset": epoch}))
    assert reset is not None and 8 <= reset <= 11
    assert parse_retry_after(httpx.Headers({"Retry-After": "soon"})) is None
    assert parse_retry_after(httpx.Headers({})) is None


def test_backoff_is_full_jitter_and_capped() -> None:
    delays = [backoff_delay(3, base=0.5, cap=30) for _ in range(500)]
    assert 0 <= min(delays) < 0.5 and 3.0 < max(delays) <= 4.0
    assert max(backoff_delay(20, base=0.5, cap=30) for _ in range(200)) <= 30


def test_envelope_size_is_exactly_the_body_length() -> None:
    envelope = Envelope('key-with-"quotes"')
    payloads = [orjson.dumps({"i": i, "s": "é" * i}) for i in range(7)]
    for n in (0, 1, 7):
        body = envelope.body(payloads[:n])
        assert len(body) == envelope.size(payloads[:n])
        decoded = orjson.loads(body)
        assert decoded["writeKey"] == 'key-with-"quotes"' and len(decoded["batch"]) == n


def test_endpoints() -> None:
    assert endpoint_url(None, "eu") == "https://events.eu1.segmentapis.com/v1/batch"
    assert endpoint_url("http://127.0.0.1:8088/v1/batch") == "http://127.0.0.1:8088/v1/batch"
    with pytest.raises(ValueError, match="http"):
        endpoint_url("127.0.0.1:8088")


def test_throttle_halves_on_429_and_grows_back_with_successes() -> None:
    throttle = Throttle(8)
    throttle.rate_limited(0.0)
    throttle.rate_limited(0.0)
    assert throttle.limit == 2
    for _ in range(2 + 3 + 4 + 5 + 6 + 7):
        throttle.succeeded()
    assert throttle.limit == 8


def test_throttle_pause_holds_every_sender() -> None:
    throttle = Throttle(4)
    throttle.rate_limited(0.3)
    abort = threading.Event()
    start = time.monotonic()
    assert throttle.acquire(abort)
    assert time.monotonic() - start >= 0.28
    throttle.release()
    abort.set()
    throttle.rate_limited(5)
    assert not throttle.acquire(abort)  # shutting down: no wait
