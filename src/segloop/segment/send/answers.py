"""How a Segment (or collector) HTTP answer is sorted: ``ok``, ``retry`` or ``final``.

Shared by both senders, the httpx one in segment/send/transport.py and the kept-alive
``http.client`` one in segment/send/direct.py. It lives in its own module so the two import it
downward instead of importing each other.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Protocol

MAX_RETRY_AFTER = 300.0
"""Cap on a server's Retry-After, a guard against an absurd header."""


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


class Sender(Protocol):
    """Posts one request body; answers are already sorted (network errors are ``retry``)."""

    def post(self, body: bytes, headers: dict[str, str]) -> Answer: ...

    def close(self) -> None: ...


def classify(status: int, headers: Mapping[str, str], text: str) -> Answer:
    """Sort an HTTP answer: 2xx ok; 408, 429, 460 and 5xx (not 501/505) retry; the rest final."""
    if 200 <= status < 300:
        return Answer("ok", status, "")
    detail = f"HTTP {status}: {_short(text)}"
    if status == 429 or status in (408, 460) or (500 <= status < 600 and status not in (501, 505)):
        return Answer(
            "retry",
            status,
            detail,
            retry_after=parse_retry_after(headers),
            rate_limited=status == 429,
        )
    if 300 <= status < 400:
        detail += " (a redirect: check that the host points at Segment or a collector)"
    return Answer("final", status, detail)


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
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
