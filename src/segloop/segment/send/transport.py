"""HTTP side of the sender: endpoints, request bodies, pacing (answers: segment/send/answers.py).

Kept apart from the queueing so the policy (what is retried, how long to wait, how many
requests may be in flight) can be read and tested on its own. By default requests go out
over kept-alive ``http.client`` connections (segment/send/direct.py, the cheapest per request);
pass any ``httpx.BaseTransport``, or a plain function ``request -> response`` (wrapped in
``httpx.MockTransport``) to send through httpx instead, e.g. to fake Segment in tests.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip as gzip_module
import random
import threading
import time
from collections.abc import Callable, Sequence

import httpx
import orjson

# The answer types live in segment/send/answers.py (shared with segment/send/direct.py); they stay
# importable from here.
from segloop.segment.send.answers import MAX_RETRY_AFTER as MAX_RETRY_AFTER
from segloop.segment.send.answers import Answer, Sender, classify
from segloop.segment.send.answers import parse_retry_after as parse_retry_after
from segloop.version import __version__

HOSTS = {
    "us": "https://api.segment.io",
    "eu": "https://events.eu1.segmentapis.com",
}
MAX_BATCH_BYTES = 500_000
"""Segment refuses a request over 500 KB; segloop counts the whole body, envelope included."""
MAX_BATCH_MESSAGES = 2500
"""Segment silently drops messages past 2,500 in one batch (with a 200)."""
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


class HttpxSender:
    """Through an ``httpx.Client``: any httpx transport (tests, proxies from the environment)."""

    def __init__(self, url: str, http: httpx.Client):
        self.url = url
        self.http = http

    def post(self, body: bytes, headers: dict[str, str]) -> Answer:
        try:
            response = self.http.post(self.url, content=body, headers=headers)
            response.read()
        except httpx.TransportError as exc:
            return Answer("retry", None, f"network error: {type(exc).__name__}: {exc}")
        return classify(response.status_code, response.headers, response.text)

    def close(self) -> None:
        self.http.close()


def make_sender(url: str, transport: TransportLike | None, timeout: float, connections: int) -> Sender:
    """The sender for a client: httpx when a transport is given or a proxy applies to ``url``,
    else direct keep-alive connections (about half the CPU per request, see bench/README.md)."""
    if transport is None and not _proxied(url):
        from segloop.segment.send.direct import DirectSender

        return DirectSender(url, timeout)
    return HttpxSender(url, make_http_client(transport, timeout, connections))


def _proxied(url: str) -> bool:
    import urllib.request
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    return bool(proxies.get(parts.scheme) or proxies.get("all")) and not urllib.request.proxy_bypass(
        parts.hostname or ""
    )


def post_batch(
    sender: Sender,
    envelope: Envelope,
    payloads: Sequence[bytes],
    *,
    gzip: bool = False,
    attempt: int = 0,
) -> Answer:
    """POST one batch (fresh ``sentAt``, retry count header, optional gzip) and sort the answer."""
    body = envelope.body(payloads)
    headers = dict(envelope.headers)
    if attempt:
        headers["X-Retry-Count"] = str(attempt)
    if gzip:
        body = gzip_module.compress(body, compresslevel=5)
        headers["Content-Encoding"] = "gzip"
    return sender.post(body, headers)


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
