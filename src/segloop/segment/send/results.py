"""What happens to a message: queued item, outcome, enqueue result and delivery totals.

Shared by the Client, ``send_messages`` and the sync layer, so a caller can checkpoint
exactly which messageIds were sent, rejected or failed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

Status = Literal["sent", "rejected", "failed"]


class QueuedMessage:
    """One encoded message on its way: payload bytes, id, and the caller's reference."""

    __slots__ = ("listener", "message_id", "payload", "ref")

    def __init__(self, payload: bytes, message_id: str, ref: Any = None, listener: Any = None):
        self.payload = payload
        self.message_id = message_id
        self.ref = ref
        self.listener = listener

    def message(self) -> dict[str, Any]:
        """The message as a dict (decoded again; only needed on error paths)."""
        result: dict[str, Any] = orjson.loads(self.payload)
        return result


@dataclass(frozen=True)
class Outcome:
    """How a group of messages ended. ``reason`` is a stable code, ``detail`` a sentence."""

    status: Status
    reason: str | None = None
    detail: str | None = None
    http_status: int | None = None


BatchListener = Callable[[list[QueuedMessage], Outcome], None]


class Enqueued(tuple):  # type: ignore[type-arg]
    """``(ok, message)`` like Segment's library, but false when the message was not queued.

    ``if not client.track(...)`` works (Segment's tuple is always true), and so does
    ``ok, msg = client.track(...)``. ``reason`` says why a message was not queued;
    ``status`` is ``queued``, ``rejected`` (bad content) or ``dropped`` (queue full/closed).
    """

    reason: str | None = None
    status: Literal["queued", "rejected", "dropped"] = "queued"

    def __new__(cls, ok: bool, message: dict[str, Any], reason: str | None = None,
                status: Literal["queued", "rejected", "dropped"] | None = None) -> Enqueued:
        self = tuple.__new__(cls, (ok, message))
        if not ok:  # the common, successful case stays a bare tuple (hot path)
            self.reason = reason
            self.status = status or "dropped"
        return self

    @property
    def ok(self) -> bool:
        return bool(self[0])

    @property
    def message(self) -> dict[str, Any]:
        result: dict[str, Any] = self[1]
        return result

    def __bool__(self) -> bool:
        return bool(self[0])


@dataclass
class DeliveryReport:
    """Totals since the client was created; ``lost`` is everything that did not arrive."""

    sent: int = 0
    rejected: int = 0
    failed: int = 0
    dropped: int = 0
    pending: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def lost(self) -> int:
        return self.rejected + self.failed + self.dropped + self.pending
