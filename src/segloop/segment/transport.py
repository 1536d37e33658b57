"""HTTP side of the sender: endpoints, request bodies, answers sorted into retry / final.

Kept apart from the queueing so the policy (what is retried, how long to wait, how many
requests may be in flight) can be read and tested on its own. The transport itself is
httpx's: pass any ``httpx.BaseTransport``, or a plain function ``request -> response``
(wrapped in ``httpx.MockTransport``) to fake Segment in tests.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip as gzip_module
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import httpx
import orjson

from segloop import __version__

HOSTS = {
    "us": "https://api.segment.io",
    "eu": "https://events.eu1.segmentapis.com",
}
MAX_BATCH_BYTES = 500_000
"""Segment refuses a request over 500 KB; segloop counts the whole body, envelope included."""
MAX_BATCH_MESSAGES = 2500
"""Segment silently drops messages past 2,500 in one batch (with a 200)."""
MAX_RETRY_AFTER = 300.0
"""Cap on a server's Retry-After, a guard against an absurd header."""
_SENT_AT_LEN = len("2024-01-01T00:00:00.000+00:00")

TransportLike = httpx.BaseTransport | Callable[[httpx.Request], httpx.Response]


def endpoint_url(host: str | None = None, region: str = "us") -> str:
    """The ``/v1/batch`` URL for a region (``us``/``eu``) or an explicit host URL."""
    if host:
        base = host.rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise ValueError(f"host {host!r} must start with http:// or https://")
    else:
        if region not in HOSTS:
            raise ValueError(f"unknown Segment region {region!r}; use 'us' or 'eu'")
        base = HOSTS[region]
    return base if base.endswith("/v1/batch") else base + "/v1/batch"


def make_http_client(
    transport: TransportLike | None, timeout: float, connections: int
) -> httpx.Client:
    """An httpx client with a keep-alive pool sized for ``connections`` requests in flight."""
    if transport is not None and not isinstance(transport, httpx.BaseTransport):
        transport = httpx.MockTransport(transport)
    return httpx.Client(
        transport=transport,
        timeout=httpx.Timeout(timeout),
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        follow_redirects=False,
    )


class Envelope:
    """Builds ``{"batch":[...],"sentAt":...,"writeKey":...}`` around encoded messages."""

    def __init__(self, write_key: str):
        self._key = orjson.dumps(write_key)
        auth = base64.b64encode(f"{write_key}:".encode()).decode()
        self.headers = {
            "Content-Type": "application/json",
            "Authorization": f"Basic {auth}",
            "User-Agent": f"segloop/{__version__}",
        }
        # Bytes of the body besides the messages and the commas between them.
        self.overhead = len(self.body([], "x" * _SENT_AT_LEN))

    def body(self, payloads: Sequence[bytes], sent_at: str | None = None) -> bytes:
        sent = sent_at or dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
        return b"".join(
            (
                b'{"batch":[',
                b",".join(payloads),
                b'],"sentAt":"',
                sent.encode(),
                b'","writeKey":',
                self._key,
                b"}",
            )
        )

    def size(self, payloads: Sequence[bytes]) -> int:
        return self.overhead + sum(len(p) for p in payloads) + max(len(payloads) - 1, 0)


@dataclass(frozen=True)
class Answer:
    """What one POST came back with, sorted: ``ok``, ``retry`` or ``final``."""

    kind: str  # "ok" | "retry" | "final"
    status: int | None
    detail: str
    retry_after: float | None = None
    rate_limited: bool = False

    @property
    def splittable(self) -> bool:
        """A final answer that may be caused by one bad message (worth bisecting)."""
        return self.kind == "final" and self.status in (400, 413, 422)


def post_batch(
    http: httpx.Client,
    url: str,
    envelope: Envelope,
    payloads: Sequence[bytes],
    *,
    gzip: bool = False,
    attempt: int = 0,
) -> Answer:
    """POST one batch and sort the answer; network errors become ``retry`` answers."""
    body = envelope.body(payloads)
    headers = dict(envelope.headers)
    if attempt:
        headers["X-Retry-Count"] = str(attempt)
    if gzip:
        body = gzip_module.compress(body, compresslevel=5)
        headers["Content-Encoding"] = "gzip"
    try:
        response = http.post(url, content=body, headers=headers)
        response.read()
    except httpx.TransportError as exc:
        return Answer("retry", None, f"network error: {type(exc).__name__}: {exc}")
    return classify(response)


def classify(response: httpx.Response) -> Answer:
    status = response.status_code
    if 200 <= status < 300:
        return Answer("ok", status, "")
    detail = f"HTTP {status}: {_short(response.text)}"
    if status == 429 or status in (408, 460) or (500 <= status < 600 and status not in (501, 505)):
        return Answer(
            "retry",
            status,
            detail,
            retry_after=parse_retry_after(response.headers),
            rate_limited=status == 429,
        )
    if 300 <= status < 400:
        detail += " (a redirect: check that the host points at Segment or a collector)"
    return Answer("final", status, detail)


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def parse_retry_after(headers: httpx.Headers) -> float | None:
    """Seconds to wait from ``Retry-After`` (seconds or HTTP date) or ``X-RateLimit-Reset``."""
    value = headers.get("Retry-After")
    if value:
        try:
            return min(max(float(value), 0.0), MAX_RETRY_AFTER)
        except ValueError:
            pass
        try:
            when = parsedate_to_datetime(value)
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.UTC)
            return min(max(when.timestamp() - time.time(), 0.0), MAX_RETRY_AFTER)
        except (TypeError, ValueError, OverflowError):
            return None
    reset = headers.get("X-RateLimit-Reset")
    if reset:
        try:
            seconds = float(reset)
        except ValueError:
            return None
        if seconds > 1e9:  # an epoch time, not a delay
            seconds -= time.time()
        return min(max(seconds, 0.0), MAX_RETRY_AFTER)
    return None


def backoff_delay(attempt: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
    return random.uniform(0.0, min(cap, base * (2 ** max(attempt, 0))))


class Throttle:
    """How many requests may be in flight now, and a shared pause after a 429.

    Additive increase, multiplicative decrease: a 429 halves the number of concurrent
    requests and pauses every sender for the server's Retry-After; each run of successes
    as long as the current limit raises it by one, up to ``max_in_flight``.
    """

    def __init__(self, max_in_flight: int):
        self.max_in_flight = max_in_flight
        self.limit = max_in_flight
        self.in_flight = 0
        self.pause_until = 0.0
        self._successes = 0
        self._cond = threading.Condition()
        self._woken = False

    def acquire(self, abort: threading.Event) -> bool:
        """Wait for a free slot outside any pause; False when ``abort`` is set."""
        with self._cond:
            while True:
                if abort.is_set():
                    return False
                now = time.monotonic()
                if now >= self.pause_until and self.in_flight < self.limit:
                    self.in_flight += 1
                    return True
                wait = self.pause_until - now if now < self.pause_until else None
                self._cond.wait(wait if wait is None else max(wait, 0.001))

    def release(self) -> None:
        with self._cond:
            self.in_flight -= 1
            self._cond.notify()

    def succeeded(self) -> None:
        with self._cond:
            if self.limit >= self.max_in_flight:
                return
            self._successes += 1
            if self._successes >= self.limit:
                self._successes = 0
                self.limit += 1
                self._cond.notify()

    def rate_limited(self, delay: float) -> None:
        with self._cond:
            self.limit = max(1, self.limit // 2)
            self._successes = 0
            self.pause_until = max(self.pause_until, time.monotonic() + delay)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()
