"""``segloop.segment.Client``: Segment's Python API, with delivery that loses nothing silently.

Same methods and defaults as ``segment-analytics-python`` 2.x (``track``, ``identify``,
``group``, ``page``, ``screen``, ``alias``, ``flush``, ``shutdown``; ``upload_size=100``,
``upload_interval=0.5``, ``max_queue_size=10000``) and these differences:

* Messages are encoded once, in the caller's thread, with orjson (numpy, Decimal, NaN,
  datetimes handled), and queued as bytes; batches are sized exactly, envelope included.
* ``max_in_flight`` sender threads, each with a kept-alive connection, so a slow or
  failing batch does not stall the others.
* 429 slows every sender down (Retry-After honoured, concurrency halved); 5xx and
  network errors are retried with full-jitter backoff, bounded by ``max_retries`` and
  ``max_retry_time``; a 400 is bisected so one bad message does not sink its batch.
* Every queued message ends ``sent``, ``rejected`` or ``failed`` and is reported to
  ``on_batch_done``; ``flush()`` returns the counts, including what was dropped.
* Threads start on first use, are joined on ``shutdown()`` and at exit, and a forked
  child gets a fresh queue and sender.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping
from typing import Any, Literal

import orjson

from segloop.errors import DataError
from segloop.masking import mask_url
from segloop.segment import messages as m
from segloop.segment.send.batching import MessageQueue
from segloop.segment.send.results import (
    BatchListener,
    DeliveryReport,
    Enqueued,
    Outcome,
    QueuedMessage,
)
from segloop.segment.send.transport import (
    MAX_BATCH_BYTES,
    MAX_BATCH_MESSAGES,
    Envelope,
    Throttle,
    TransportLike,
    backoff_delay,
    endpoint_url,
    make_sender,
    post_batch,
)

log = logging.getLogger("segloop.segment")

DEFAULT_MAX_IN_FLIGHT = 16
"""Concurrent requests per client; chosen with bench/sender.py (see bench/README.md)."""
ATEXIT_FLUSH_SECONDS = 30.0
"""At interpreter exit, how long a client still tries to deliver what it holds."""

_CLIENTS: weakref.WeakSet[Client] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for client in list(_CLIENTS):
        client._reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Client:
    """Send Segment calls in batches from background threads; see the module docstring.

    Beyond Segment's library's arguments: ``region`` (``us``/``eu``) when ``host`` is not
    given; ``on_full`` (``drop`` returns false when the queue is full, ``block`` waits);
    ``on_batch_done(items, outcome)`` for every message's final outcome; ``max_in_flight``
    concurrent requests; ``max_retry_time`` seconds of retrying per batch;
    ``retry_base_delay`` for the backoff; ``transport`` an httpx transport or a function
    ``request -> response``. docs/segment-client.md has the table of defaults.
    """

    MAX_REFUSALS_IN_A_ROW = 20
    """Single messages refused (400) with no success between them: the endpoint refuses
    everything, so stop bisecting (2n-1 requests per batch) and reject whole batches."""

    def __init__(
        self,
        write_key: str,
        host: str | None = None,
        *,
        region: str = "us",
        upload_size: int = 100,
        upload_interval: float = 0.5,
        max_queue_size: int = 10000,
        on_full: Literal["drop", "block"] = "drop",
        on_error: Callable[[Exception, list[dict[str, Any]]], None] | None = None,
        on_batch_done: BatchListener | None = None,
        gzip: bool = False,
        max_retries: int = 10,
        timeout: float = 15.0,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        max_retry_time: float = 600.0,
        retry_base_delay: float = 0.5,
        transport: TransportLike | None = None,
        send: bool = True,
    ):
        if not isinstance(write_key, str) or not write_key:
            raise DataError("Segment write key is empty; pass the source's write key")
        if on_full not in ("drop", "block"):
            raise ValueError(f"on_full must be 'drop' or 'block', got {on_full!r}")
        if not 1 <= upload_size <= MAX_BATCH_MESSAGES:
            raise ValueError(f"upload_size must be between 1 and {MAX_BATCH_MESSAGES}")
        if max_in_flight < 1 or max_queue_size < 1:
            raise ValueError("max_in_flight and max_queue_size must be at least 1")
        self._write_key = write_key
        self.url = endpoint_url(host, region)
        self.upload_size = upload_size
        self.upload_interval = upload_interval
        self.max_queue_size = max_queue_size
        self.on_full = on_full
        self._block = on_full == "block"
        self.on_error = on_error
        self.on_batch_done = on_batch_done
        self.gzip = gzip
        self.max_retries = max_retries
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self.max_retry_time = max_retry_time
        self.retry_base_delay = retry_base_delay
        self.transport = transport
        self.send = send
        self.envelope = Envelope(write_key)
        self._init_state()
        _CLIENTS.add(self)
        self._atexit = _atexit_hook(weakref.ref(self))
        atexit.register(self._atexit)

    def __repr__(self) -> str:
        return f"Client(write_key=[secure], url={mask_url(self.url)!r}, max_in_flight={self.max_in_flight})"

    # --- state -------------------------------------------------------------------------

    def _init_state(self) -> None:
        self._queue = MessageQueue(self.max_queue_size)
        self._throttle = Throttle(self.max_in_flight)
        self._abort = threading.Event()
        self._assemble = threading.Lock()
        self._state_lock = threading.Lock()
        self._done_cond = threading.Condition(threading.Lock())
        self._threads: list[threading.Thread] = []
        self._http: Any = None
        self._started = False
        self._shut = False
        self._completed = 0
        self._report = DeliveryReport()
        self._warned_retrying = False  # one warning per client when sending starts to fail
        self._refusals_in_a_row = 0
        self._ids = itertools.count()
        self._id_prefix = uuid.uuid4().hex[:24] + "-"

    def _reset_after_fork(self) -> None:
        """In a forked child: forget the parent's threads, queue, locks and sockets."""
        self._init_state()

    def _ensure_started(self) -> None:
        with self._state_lock:
            if self._started or self._shut:
                return
            self._http = make_sender(self.url, self.transport, self.timeout, self.max_in_flight)
            for i in range(self.max_in_flight):
                t = threading.Thread(target=self._run_sender, name=f"segloop-sender-{i}", daemon=True)
                t.start()
                self._threads.append(t)
            self._started = True

    # --- public calls (signatures of segment-analytics-python 2.x) ----------------------

    def track(self, user_id: Any = None, event: str | None = None, properties: Mapping[str, Any] | None = None,
              context: Mapping[str, Any] | None = None, timestamp: Any = None, anonymous_id: Any = None,
              integrations: Mapping[str, Any] | None = None, message_id: str | None = None) -> Enqueued:
        """Record an action a user did (``event``) with its ``properties``."""
        _require_identity("track", user_id, anonymous_id)
        if type(event) is not str or not event:
            raise DataError("track needs an `event` name (a non-empty string)")
        msg = {"type": "track", "event": event, "properties": _mapping("properties", properties)}
        return self._common(msg, user_id, anonymous_id, context, timestamp, integrations, message_id)

    def identify(self, user_id: Any = None, traits: Mapping[str, Any] | None = None,
                 context: Mapping[str, Any] | None = None, timestamp: Any = None, anonymous_id: Any = None,
                 integrations: Mapping[str, Any] | None = None, message_id: str | None = None) -> Enqueued:
        """Tie a user to their ``traits``."""
        _require_identity("identify", user_id, anonymous_id)
        msg = {"type": "identify", "traits": _mapping("traits", traits)}
        return self._common(msg, user_id, anonymous_id, context, timestamp, integrations, message_id)

    def group(self, user_id: Any = None, group_id: Any = None, traits: Mapping[str, Any] | None = None,
              context: Mapping[str, Any] | None = None, timestamp: Any = None, anonymous_id: Any = None,
              integrations: Mapping[str, Any] | None = None, message_id: str | None = None) -> Enqueued:
        """Tie a user to a group (account, company) with the group's ``traits``."""
        _require_identity("group", user_id, anonymous_id)
        if group_id is None or group_id == "":
            raise DataError("group needs a `group_id`")
        msg = {"type": "group", "groupId": m.stringify_id(group_id), "traits": _mapping("traits", traits)}
        return self._common(msg, user_id, anonymous_id, context, timestamp, integrations, message_id)

    def page(self, user_id: Any = None, category: str | None = None, name: str | None = None,
             properties: Mapping[str, Any] | None = None, context: Mapping[str, Any] | None = None,
             timestamp: Any = None, anonymous_id: Any = None, integrations: Mapping[str, Any] | None = None,
             message_id: str | None = None) -> Enqueued:
        """Record a page view."""
        return self._view("page", user_id, category, name, properties, context, timestamp, anonymous_id,
                          integrations, message_id)

    def screen(self, user_id: Any = None, category: str | None = None, name: str | None = None,
               properties: Mapping[str, Any] | None = None, context: Mapping[str, Any] | None = None,
               timestamp: Any = None, anonymous_id: Any = None, integrations: Mapping[str, Any] | None = None,
               message_id: str | None = None) -> Enqueued:
        """Record a mobile screen view."""
        return self._view("screen", user_id, category, name, properties, context, timestamp, anonymous_id,
                          integrations, message_id)

    def alias(self, previous_id: Any = None, user_id: Any = None, context: Mapping[str, Any] | None = None,
              timestamp: Any = None, integrations: Mapping[str, Any] | None = None,
              message_id: str | None = None) -> Enqueued:
        """Merge the identity ``previous_id`` into ``user_id``."""
        if previous_id is None or previous_id == "" or user_id is None or user_id == "":
            raise DataError("alias needs both `previous_id` and `user_id`")
        msg = {"type": "alias", "previousId": m.stringify_id(previous_id)}
        return self._common(msg, user_id, None, context, timestamp, integrations, message_id)

    def _view(self, call: str, user_id: Any, category: str | None, name: str | None,
              properties: Mapping[str, Any] | None, context: Mapping[str, Any] | None, timestamp: Any,
              anonymous_id: Any, integrations: Mapping[str, Any] | None, message_id: str | None) -> Enqueued:
        _require_identity(call, user_id, anonymous_id)
        msg: dict[str, Any] = {"type": call, "properties": _mapping("properties", properties)}
        if name is not None:
            msg["name"] = name
        if category is not None:
            msg["category"] = category
        return self._common(msg, user_id, anonymous_id, context, timestamp, integrations, message_id)

    def _common(self, msg: dict[str, Any], user_id: Any, anonymous_id: Any, context: Mapping[str, Any] | None,
                timestamp: Any, integrations: Mapping[str, Any] | None, message_id: str | None) -> Enqueued:
        """Fields every call has, filled in as Segment's library does (hot path: kept flat)."""
        if user_id is not None:
            msg["userId"] = user_id if type(user_id) is str else m.stringify_id(user_id)
        if anonymous_id is not None:
            msg["anonymousId"] = anonymous_id if type(anonymous_id) is str else m.stringify_id(anonymous_id)
        try:
            msg["timestamp"] = m.now_timestamp() if timestamp is None else m.format_timestamp(timestamp)
        except TypeError as exc:
            raise DataError(f"{msg['type']}: {exc}") from None
        ctx = dict(_mapping("context", context)) if context else {}
        ctx["library"] = {"name": "segloop", "version": m.LIBRARY["version"]}
        msg["context"] = ctx
        msg["integrations"] = _mapping("integrations", integrations)
        msg["messageId"] = f"{self._id_prefix}{next(self._ids)}" if message_id is None else str(message_id)
        return self._submit(msg, None, None)

    def enqueue(self, message: Mapping[str, Any], ref: Any = None,
                listener: BatchListener | None = None) -> Enqueued:
        """Queue a ready-made message dict (e.g. from ``messages.render_row``).

        Adds ``context.library`` and a ``messageId`` when missing; never raises for bad
        content: an invalid or oversize message is rejected (returned false, reported to
        the listener and counted). ``ref`` travels with the message to the listener
        (``on_batch_done`` when ``listener`` is None), e.g. a row number.
        """
        msg = dict(message)
        context = msg.get("context")
        if not isinstance(context, Mapping) or "library" not in context:
            msg["context"] = {**(context if isinstance(context, Mapping) else {}), "library": dict(m.LIBRARY)}
        if not msg.get("messageId"):
            msg["messageId"] = f"{self._id_prefix}{next(self._ids)}"
        problem = m.validate(msg)
        if problem is not None:
            return self._reject(msg, problem, ref, listener)
        return self._submit(msg, ref, listener)

    def _submit(self, msg: dict[str, Any], ref: Any, listener: BatchListener | None) -> Enqueued:
        data = m.encode(msg)
        if isinstance(data, m.Rejection):
            return self._reject(msg, data, ref, listener)
        if not self.send:  # Segment's `send=False`: accepted, reported as not sent
            with self._queue.lock:
                self._queue.accepted += 1
            self._complete([QueuedMessage(data, msg["messageId"], ref, listener)],
                           Outcome("failed", "send_disabled", "the client was created with send=False"))
            return Enqueued(True, msg)
        if not self._started:
            self._ensure_started()
        item = QueuedMessage(data, msg["messageId"], ref, listener)
        if self._queue.put(item, self._block):
            return Enqueued(True, msg)
        with self._done_cond:
            self._report.dropped += 1
        reason = "client is shut down" if self._queue.closed else "queue is full"
        if self._report.dropped in (1, 10, 100) or self._report.dropped % 1000 == 0:
            log.warning("Segment queue: message dropped (%s); %d dropped so far", reason, self._report.dropped)
        return Enqueued(False, msg, reason)

    def _reject(self, msg: dict[str, Any], problem: m.Rejection, ref: Any,
                listener: BatchListener | None) -> Enqueued:
        rejected = self._report.rejected + 1
        if rejected <= 10 or rejected % 1000 == 0:  # loud, but not once per row of a bad table
            log.warning("Segment message rejected before sending (%d so far): %s", rejected, problem.detail)
        try:
            payload = m.dumps(msg)
        except TypeError:
            payload = orjson.dumps(msg, default=repr)
        item = QueuedMessage(payload, str(msg.get("messageId") or ""), ref, listener)
        self._finish([item], Outcome("rejected", problem.reason, problem.detail), [msg])
        with self._done_cond:
            self._report.rejected += 1
            by = self._report.rejected_by_reason
            by[problem.reason] = by.get(problem.reason, 0) + 1
        return Enqueued(False, msg, problem.detail, "rejected")

    # --- flush / shutdown -------------------------------------------------------------

    def report(self) -> DeliveryReport:
        """Current totals (a copy)."""
        with self._done_cond:
            r = self._report
            return DeliveryReport(r.sent, r.rejected, r.failed, r.dropped, self._queue.accepted - self._completed,
                                  dict(r.rejected_by_reason))

    def flush(self, timeout: float | None = None) -> DeliveryReport:
        """Send everything queued now and wait until each message is sent, rejected or failed.

        Returns the totals; ``pending`` is non-zero only when ``timeout`` ran out.
        """
        if not self._started:
            return self.report()
        with self._queue.lock:
            target = self._queue.accepted
        with self._queue.lock:
            self._queue.flushing += 1
            self._queue.not_empty.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            with self._done_cond:
                while self._completed < target:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        break
                    self._done_cond.wait(remaining)
        finally:
            with self._queue.lock:
                self._queue.flushing -= 1
        return self.report()

    def shutdown(self, timeout: float | None = None) -> DeliveryReport:
        """Flush (up to ``timeout`` seconds), stop and join every thread, close connections.

        Messages still undelivered when ``timeout`` runs out are reported as failed
        (reason ``shutdown``). Calling it twice is harmless.
        """
        atexit.unregister(self._atexit)
        if self._shut:
            return self.report()
        self.flush(timeout)
        with self._state_lock:
            self._shut = True
        self._queue.closed = True
        self._queue.abort = True
        self._abort.set()
        self._queue.wake_all()
        self._throttle.wake()
        for t in self._threads:
            t.join()
        self._threads.clear()
        leftover = self._queue.drain()
        if leftover:
            self._complete(leftover, Outcome("failed", "shutdown",
                                             "the client shut down before these messages were sent"))
        if self._http is not None:
            self._http.close()
        return self.report()

    join = shutdown  # Segment's library name for stopping the consumer threads

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # --- sender threads ---------------------------------------------------------------

    def _run_sender(self) -> None:
        queue = self._queue
        while True:
            with self._assemble:
                batch = queue.take(self.upload_size, MAX_BATCH_BYTES, self.envelope.overhead,
                                   self.upload_interval)
            if batch is None:
                return
            if batch:
                try:
                    self._deliver(batch)
                except Exception as exc:  # a bug must not kill the thread and strand messages
                    log.exception("Segment sender: unexpected error")
                    self._complete(batch, Outcome("failed", "internal_error", repr(exc)))

    def _deliver(self, batch: list[QueuedMessage]) -> None:
        """Send one batch until it is sent, rejected or failed (bisecting on a 400)."""
        attempt = 0
        first_failure: float | None = None
        while True:
            if not self._throttle.acquire(self._abort):
                self._complete(batch, Outcome("failed", "shutdown",
                                              "the client shut down before these messages were sent"))
                return
            try:
                answer = post_batch(self._http, self.envelope, [i.payload for i in batch],
                                    gzip=self.gzip, attempt=attempt)
            finally:
                self._throttle.release()
            if answer.kind == "ok":
                self._throttle.succeeded()
                self._complete(batch, Outcome("sent", http_status=answer.status))
                self._refusals_in_a_row = 0
                return
            if answer.splittable and len(batch) > 1 and self._refusals_in_a_row < self.MAX_REFUSALS_IN_A_ROW:
                half = len(batch) // 2
                self._deliver(batch[:half])
                self._deliver(batch[half:])
                return
            if answer.kind == "final":
                if answer.splittable and len(batch) == 1:
                    self._refusals_in_a_row += 1
                code = f"http_{answer.status}" if answer.status else "http_error"
                self._complete(batch, Outcome("rejected", code, answer.detail, answer.status))
                return
            # retry
            now = time.monotonic()
            first_failure = first_failure or now
            if answer.rate_limited:
                delay = answer.retry_after if answer.retry_after is not None else backoff_delay(attempt, self.retry_base_delay)
                self._throttle.rate_limited(delay)
            else:
                attempt += 1
                if attempt > self.max_retries:
                    self._complete(batch, Outcome("failed", "retries_exhausted",
                                                  f"gave up after {attempt} tries; last answer: {answer.detail}",
                                                  answer.status))
                    return
                delay = answer.retry_after if answer.retry_after is not None else backoff_delay(attempt, self.retry_base_delay)
            if now + delay - first_failure > self.max_retry_time:
                self._complete(batch, Outcome("failed", "retry_time_exceeded",
                                              f"still failing after {now - first_failure:.0f} s "
                                              f"(max_retry_time={self.max_retry_time:g} s); last answer: "
                                              f"{answer.detail}", answer.status))
                return
            if not answer.rate_limited and not self._warned_retrying:
                self._warned_retrying = True  # a run that seems to hang says why (once)
                log.warning("Segment endpoint %s: %s; retrying with backoff, up to %d tries or %g s per "
                            "batch, then the rows count as failed and the next run sends them",
                            mask_url(self.url), answer.detail, self.max_retries, self.max_retry_time)
            log.debug("Segment batch of %d: %s; retrying in %.2f s", len(batch), answer.detail, delay)
            if not answer.rate_limited and self._abort.wait(delay):
                self._complete(batch, Outcome("failed", "shutdown",
                                              f"the client shut down while retrying; last answer: {answer.detail}",
                                              answer.status))
                return

    def _complete(self, items: list[QueuedMessage], outcome: Outcome) -> None:
        with self._done_cond:
            r = self._report
            n = len(items)
            if outcome.status == "sent":
                r.sent += n
            elif outcome.status == "rejected":
                r.rejected += n
                key = outcome.reason or "rejected"
                r.rejected_by_reason[key] = r.rejected_by_reason.get(key, 0) + n
            else:
                r.failed += n
            self._completed += n
            self._done_cond.notify_all()
        self._finish(items, outcome, None)

    def _finish(self, items: list[QueuedMessage], outcome: Outcome,
                decoded: list[dict[str, Any]] | None) -> None:
        """Tell listeners and ``on_error``; a failing callback is logged, never fatal."""
        groups: dict[int, tuple[BatchListener, list[QueuedMessage]]] = {}
        for item in items:
            listener = item.listener or self.on_batch_done
            if listener is not None:
                groups.setdefault(id(listener), (listener, []))[1].append(item)
        for listener, group in groups.values():
            try:
                listener(group, outcome)
            except Exception:
                log.exception("Segment on_batch_done callback failed")
        if outcome.status != "sent" and self.on_error is not None:
            try:
                msgs = decoded if decoded is not None else [i.message() for i in items]
                self.on_error(_as_error(outcome), msgs)
            except Exception:
                log.exception("Segment on_error callback failed")


def _as_error(outcome: Outcome) -> Exception:
    from segloop.errors import TerminalDeliveryError, TransientDeliveryError

    text = f"{outcome.reason}: {outcome.detail}"
    if outcome.status == "rejected":
        return TerminalDeliveryError(text, status=outcome.http_status)
    return TransientDeliveryError(text, status=outcome.http_status)


def _mapping(name: str, value: Mapping[str, Any] | None) -> dict[str, Any]:
    if value is None:
        return {}
    if type(value) is dict:
        return value
    if isinstance(value, Mapping):
        return dict(value)
    raise DataError(f"`{name}` must be a dict, got {type(value).__name__}")


def _require_identity(call: str, user_id: Any, anonymous_id: Any) -> None:
    if (user_id is None or user_id == "") and (anonymous_id is None or anonymous_id == ""):
        raise DataError(f"{call} needs a `user_id` or an `anonymous_id`")


def _atexit_hook(ref: weakref.ref[Client]) -> Callable[[], None]:
    def hook() -> None:
        client = ref()
        if client is not None and not client._shut:
            client.shutdown(timeout=ATEXIT_FLUSH_SECONDS)

    return hook
