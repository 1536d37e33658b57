"""``send_messages``: push a stream of rendered messages through a Client, with per-message results.

Why a helper: a pipeline sends a million rows with backpressure (``on_full="block"``) and
must know, per row, whether it was sent, rejected (and why) or failed, to write a rejects
table and to checkpoint. This wires a listener to the client for just these messages,
reports progress from the caller's thread and returns a summary.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from segloop.segment.messages import Message, Rejection, dumps
from segloop.segment.send.client import Client
from segloop.segment.send.results import BatchListener, Outcome, QueuedMessage

Item = tuple[Any, "Message | Rejection"]


@dataclass
class SendSummary:
    """What happened to the messages of one ``send_messages`` call."""

    read: int = 0
    sent: int = 0
    rejected: int = 0
    failed: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    failed_by_reason: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def messages_per_second(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    @property
    def pending(self) -> int:
        return self.read - self.sent - self.rejected - self.failed


class _Collector:
    """Counts outcomes from sender threads and forwards them to the caller's callback."""

    def __init__(self, summary: SendSummary, on_result: BatchListener | None):
        self.summary = summary
        self.on_result = on_result
        self.lock = threading.Lock()
        self.done = 0

    def __call__(self, items: list[QueuedMessage], outcome: Outcome) -> None:
        n = len(items)
        with self.lock:
            s = self.summary
            if outcome.status == "sent":
                s.sent += n
            else:
                reason = outcome.reason or outcome.status
                if outcome.status == "rejected":
                    s.rejected += n
                    s.rejected_by_reason[reason] = s.rejected_by_reason.get(reason, 0) + n
                else:
                    s.failed += n
                    s.failed_by_reason[reason] = s.failed_by_reason.get(reason, 0) + n
            self.done += n
        if self.on_result is not None:
            self.on_result(items, outcome)


def send_messages(
    items: Iterable[Item],
    client: Client,
    *,
    on_result: BatchListener | None = None,
    progress: Callable[[int], None] | None = None,
    flush_timeout: float | None = None,
    progress_every: float = 0.25,
) -> SendSummary:
    """Send ``(ref, message)`` pairs; a ``Rejection`` in place of a message counts as rejected.

    ``on_result(items, outcome)`` is called (from sender threads, or this thread for
    rejections) for every message exactly once; ``item.ref`` is the ref given here.
    ``progress(n)`` is called from this thread with the number of messages finished since
    the previous call. Use a client with ``on_full="block"`` so nothing is dropped; a
    dropped message is reported as failed with reason ``dropped``.
    """
    summary = SendSummary()
    collector = _Collector(summary, on_result)
    started = time.monotonic()
    reported = 0
    next_report = started + progress_every

    def tick(force: bool = False) -> None:
        nonlocal reported, next_report
        if progress is None:
            return
        now = time.monotonic()
        if force or now >= next_report:
            done = collector.done
            if done > reported:
                progress(done - reported)
                reported = done
            next_report = now + progress_every

    for count, (ref, message) in enumerate(items, 1):
        summary.read += 1
        if isinstance(message, Rejection):
            collector([QueuedMessage(b"", "", ref)], Outcome("rejected", message.reason, message.detail))
        else:
            result = client.enqueue(message, ref=ref, listener=collector)
            if result.status == "dropped":
                payload = _safe_dumps(result.message)
                collector([QueuedMessage(payload, str(result.message.get("messageId", "")), ref)],
                          Outcome("failed", "dropped", f"message dropped: {result.reason}"))
        if count % 512 == 0:
            tick()
    deadline = None if flush_timeout is None else time.monotonic() + flush_timeout
    while True:
        remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        step = progress_every if remaining is None else min(progress_every, remaining)
        client.flush(timeout=step)
        tick(force=True)
        with collector.lock:
            if collector.done >= summary.read:
                break
        if remaining is not None and remaining <= 0:
            break
    summary.seconds = time.monotonic() - started
    return summary


def _safe_dumps(message: Message) -> bytes:
    try:
        return dumps(message)
    except TypeError:
        return b""
