"""A fake Segment ``/v1/batch`` for the client tests: records batches, injects failures.

Used as the client's ``transport`` (a plain function ``request -> response``). It is the
one fake the tests allow: Segment's cloud cannot exist here.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson


@dataclass
class Request:
    at: float
    body: dict[str, Any]
    raw_size: int
    headers: httpx.Headers
    url: str
    status: int | None = None  # None: a network error was raised


@dataclass
class FakeSegment:
    """Answers 200 unless a rule says otherwise.

    * ``script``: answers for the next requests, in order: an int status, a
      ``(status, headers)`` pair, ``"reset"`` (connection reset) or ``"stall"`` (timeout).
    * ``poison``: a message whose ``properties`` contain this key makes its batch ``400``.
    * ``gate``: when set to an Event, every request waits for it (a stuck server).
    """

    script: list[Any] = field(default_factory=list)
    poison: str | None = None
    gate: threading.Event | None = None
    fail_rate: Callable[[int], Any] | None = None
    requests: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    first_request: threading.Event = field(default_factory=threading.Event)  # set on arrival

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.gate is not None:
            self.gate.wait(10)
        raw = request.content
        data = gzip.decompress(raw) if request.headers.get("content-encoding") == "gzip" else raw
        body = orjson.loads(data)
        rec = Request(time.monotonic(), body, len(raw), request.headers, str(request.url))
        with self.lock:
            self.requests.append(rec)
            number = len(self.requests)
            self.first_request.set()
            action = self.script.pop(0) if self.script else None
        if action is None and self.fail_rate is not None:
            action = self.fail_rate(number)
        if action == "reset":
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        if action == "stall":
            time.sleep(0.02)
            raise httpx.ReadTimeout("timed out")
        headers: dict[str, str] = {}
        if isinstance(action, tuple):
            action, headers = action
        if action is None and self.poison is not None and any(
            self.poison in (msg.get("properties") or {}) for msg in body["batch"]
        ):
            action = 400
        status = action or 200
        rec.status = status
        if status == 200:
            return httpx.Response(200, json={"success": True})
        text = "Invalid JSON" if status == 400 else "Service Unavailable"
        return httpx.Response(status, text=text, headers=headers)

    # what reached Segment (200 answers only)
    def delivered(self) -> list[dict[str, Any]]:
        with self.lock:
            return [m for r in self.requests if r.status == 200 for m in r.body["batch"]]

    def delivered_ids(self) -> Counter[str]:
        return Counter(m["messageId"] for m in self.delivered())

    def ok_requests(self) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.status == 200]
