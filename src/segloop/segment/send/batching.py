"""The client's bounded queue of encoded messages, which hands out whole batches."""

from __future__ import annotations

import threading
import time
from collections import deque

from segloop.segment.send.results import QueuedMessage


class MessageQueue:
    """A bounded FIFO of encoded messages that hands out whole batches.

    One sender assembles at a time; producers wake it only when a full batch is there,
    instead of on every message, which keeps thread switches per batch, not per message.
    """

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self.items: deque[QueuedMessage] = deque()
        self.bytes = 0
        self.lock = threading.Lock()
        self.not_empty = threading.Condition(self.lock)
        self.not_full = threading.Condition(self.lock)
        self.want_count = 1
        self.want_bytes = 1
        self.closed = False
        self.flushing = 0
        self.abort = False
        self.accepted = 0  # messages ever put (flush waits for as many to complete)

    def put(self, item: QueuedMessage, block: bool) -> bool:
        with self.lock:
            while len(self.items) >= self.maxsize:
                if not block or self.closed:
                    return False
                self.not_full.wait()
            if self.closed:
                return False
            self.items.append(item)
            self.accepted += 1
            self.bytes += len(item.payload)
            n = len(self.items)
            # Wake the assembling sender when its batch can be completed, or when the queue
            # is full (a queue smaller than a batch must not wait for upload_interval).
            if n >= self.want_count or self.bytes >= self.want_bytes or n >= self.maxsize:
                self.not_empty.notify()
            return True

    def take(self, max_count: int, max_bytes: int, overhead: int, interval: float) -> list[QueuedMessage] | None:
        """The next batch: full, or whatever came within ``interval``; None when closing."""
        with self.lock:
            while not self.items:
                if self.closed or self.abort:
                    return None
                self.want_count = self.want_bytes = 1
                self.not_empty.wait()
            if self.abort:
                return None
            deadline = time.monotonic() + interval
            batch: list[QueuedMessage] = []
            size = overhead
            while True:
                full = False
                while self.items and len(batch) < max_count:
                    n = len(self.items[0].payload)
                    add = n + 1 if batch else n
                    if size + add > max_bytes and batch:
                        full = True
                        break
                    batch.append(self.items.popleft())
                    self.bytes -= n
                    size += add
                self.not_full.notify(len(batch))
                if full or len(batch) >= max_count or self.flushing or self.closed or self.abort:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.want_count = max_count - len(batch)
                self.want_bytes = max(max_bytes - size, 1)
                self.not_empty.wait(remaining)
            self.want_count = self.want_bytes = 1
            return batch

    def wake_all(self) -> None:
        with self.lock:
            self.not_empty.notify_all()
            self.not_full.notify_all()

    def drain(self) -> list[QueuedMessage]:
        with self.lock:
            items = list(self.items)
            self.items.clear()
            self.bytes = 0
            self.not_full.notify_all()
            return items
