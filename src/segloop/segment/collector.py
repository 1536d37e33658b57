"""`segloop collector`: a Segment-compatible HTTP Tracking API that archives what it accepts.

Senders (Segment's own libraries, segloop's Segment action, curl) point their host at it.
It answers as Segment does (see docs/collector.md for the few places it is stricter), and a
200 means durable: accepted messages are appended to the raw archive
(`<data>/segment-logs/<source>/<day>/<file>.gz`) and fsynced first. Concurrent requests
are group-committed by one commit thread, so one fsync covers many requests.

Request checks live in ``collector_requests`` (pure functions); this module holds the
dedupe store, the commit thread, stats, the Starlette app, and ways to run it (the CLI's
``run_forever`` and ``serve_in_thread`` for tests and the demo).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import random
import socket
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from segloop.errors import ConfigError, WarehouseLockedError
from segloop.segment.archive import ArchiveWriter, day_partition
from segloop.segment.collector_requests import (
    CALL_TYPES,
    BadRequest,
    Limits,
    Prepared,
    decode_body,
    parse_json,
    prepare,
    write_key_from,
)

if TYPE_CHECKING:  # pragma: no cover
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

log = logging.getLogger("segloop.collector")

__all__ = ["Collector", "CollectorSettings", "Limits", "RunningCollector", "serve_in_thread"]


# -- dedupe -------------------------------------------------------------------------------


class DedupeStore:
    """messageIds seen in the last window, in SQLite under the data folder (survives restarts).

    Used only from the commit thread. Written after the archive is fsynced: a crash in
    between can let a retried message into the archive twice, which the loader dedupes on
    `id`; the opposite order could lose a message.
    """

    PRUNE_EVERY_S = 300.0
    _CHUNK = 500

    def __init__(self, path: Path, window_s: float):
        self.window_ms = int(window_s * 1000)
        self.db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS seen (message_id TEXT PRIMARY KEY, seen_ms INTEGER NOT NULL)"
        )
        self.db.execute("CREATE INDEX IF NOT EXISTS seen_by_time ON seen (seen_ms)")
        self._last_prune = 0.0

    def seen(self, ids: list[str], now_ms: int) -> set[str]:
        if self.window_ms <= 0:
            return set()
        cutoff = now_ms - self.window_ms
        found: set[str] = set()
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), self._CHUNK):
            chunk = unique[start : start + self._CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(
                f"SELECT message_id FROM seen WHERE seen_ms >= ? AND message_id IN ({marks})",
                [cutoff, *chunk],
            )
            found.update(row[0] for row in rows)
        return found

    def add(self, ids: list[str], now_ms: int) -> None:
        if self.window_ms <= 0 or not ids:
            return
        self.db.execute("BEGIN")
        self.db.executemany(
            "INSERT OR REPLACE INTO seen (message_id, seen_ms) VALUES (?, ?)",
            [(i, now_ms) for i in ids],
        )
        self.db.execute("COMMIT")
        if time.monotonic() - self._last_prune > self.PRUNE_EVERY_S:
            self._last_prune = time.monotonic()
            self.db.execute("DELETE FROM seen WHERE seen_ms < ?", [now_ms - self.window_ms])

    def close(self) -> None:
        self.db.close()


# -- commit thread ------------------------------------------------------------------------


@dataclass
class CommitResult:
    accepted: int
    deduped: int


@dataclass
class _Pending:
    source: str
    day_ms: int
    lines: list[tuple[str, bytes]]
    future: Future[CommitResult]


class Committer:
    """One thread that dedupes, appends and fsyncs everything queued since its last fsync."""

    def __init__(self, writer: ArchiveWriter, dedupe: DedupeStore):
        self.writer = writer
        self.dedupe = dedupe
        self.clock: Callable[[], float] = time.time  # the dedupe window's clock; tests move it
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._lock = threading.Lock()  # held while writing; rotate() takes it too
        self.commits = 0
        self._thread = threading.Thread(target=self._run, name="segloop-commit", daemon=True)
        self._thread.start()

    def submit(self, source: str, day_ms: int, lines: list[tuple[str, bytes]]) -> Future[CommitResult]:
        future: Future[CommitResult] = Future()
        self._queue.put(_Pending(source, day_ms, lines, future))
        return future

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            stop = False
            while True:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                group.append(more)
            self._commit(group)
            if stop:
                return

    def _commit(self, group: list[_Pending]) -> None:
        now_ms = int(self.clock() * 1000)
        try:
            with self._lock:
                already = self.dedupe.seen([mid for p in group for mid, _ in p.lines], now_ms)
                fresh: set[str] = set()
                dedupe_on = self.dedupe.window_ms > 0
                files: dict[tuple[str, int], list[bytes]] = {}
                results: list[CommitResult] = []
                for pending in group:
                    accepted = deduped = 0
                    for message_id, line in pending.lines:
                        if message_id in already or message_id in fresh:
                            deduped += 1
                            continue
                        if dedupe_on:
                            fresh.add(message_id)
                        files.setdefault((pending.source, pending.day_ms), []).append(line)
                        accepted += 1
                    results.append(CommitResult(accepted, deduped))
                self.writer.append(files)
                self.dedupe.add(list(fresh), now_ms)
                self.commits += 1
        except Exception as exc:  # disk full, permissions: every waiter gets a 500
            log.error("could not write the archive: %s", exc)
            # Later writes go to fresh files, never after a member that may be half written.
            with contextlib.suppress(OSError):
                self.writer.rotate()
            for pending in group:
                pending.future.set_exception(exc)
            return
        for pending, result in zip(group, results, strict=True):
            pending.future.set_result(result)

    def rotate(self) -> None:
        with self._lock:
            self.writer.rotate()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self.writer.close()
        self.dedupe.close()


# -- stats --------------------------------------------------------------------------------


@dataclass
class SourceStats:
    received: int = 0
    accepted: int = 0
    deduped: int = 0
    dropped: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "accepted": self.accepted,
            "deduped": self.deduped,
            "dropped": dict(self.dropped),
        }


@dataclass
class Stats:
    """Counters since the collector started (messages and requests)."""

    started: float = field(default_factory=time.time)
    total: SourceStats = field(default_factory=SourceStats)
    sources: dict[str, SourceStats] = field(default_factory=dict)
    requests: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    loads: int = 0
    loads_skipped: int = 0  # rounds that found the warehouse file held by another process
    last_load: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.total.as_dict(),
            "requests": dict(self.requests),
            "rejected_requests": dict(self.rejected),
            "sources": {name: s.as_dict() for name, s in sorted(self.sources.items())},
            "uptime_s": round(time.time() - self.started, 3),
            "loads": self.loads,
            "loads_skipped": self.loads_skipped,
            "last_load": self.last_load,
        }


# -- settings and app ---------------------------------------------------------------------


def parse_duration(text: str | float | int) -> float:
    """Seconds in "24h", "60s", "5m", "2d", "250ms" or a bare number of seconds."""
    if isinstance(text, int | float):
        return float(text)
    value = text.strip().lower()
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    for suffix in ("ms", "s", "m", "h", "d"):
        if value.endswith(suffix):
            number = value[: -len(suffix)]
            break
    else:
        number, suffix = value, "s"
    try:
        return float(number) * units[suffix]
    except ValueError:
        raise ConfigError(
            f"`{text}` is not a duration; write it like 60s, 5m, 24h or 2d"
        ) from None


@dataclass
class CollectorSettings:
    """Everything `segloop collector` takes; `keys` maps write key -> source schema."""

    keys: dict[str, str]
    data_dir: Path
    dedupe_window_s: float = 86400.0
    latency_ms: int = 0
    fail_rate: float = 0.0
    rate_limit: int | None = None
    load_every_s: float | None = None
    loader: Callable[[Path], Any] | None = None  # called with the data dir on each load
    fsync: bool = True

    SOURCE_NAME: ClassVar[str] = r"^[A-Za-z_][A-Za-z0-9_]*$"

    def check(self) -> None:
        import re

        if not self.keys:
            raise ConfigError(
                "the collector needs at least one write key: --key WRITE_KEY=SOURCE_SCHEMA"
            )
        for source in self.keys.values():
            if not re.match(self.SOURCE_NAME, source):
                raise ConfigError(
                    f"source schema `{source}` is not a plain SQL name; use letters, digits "
                    "and `_`, starting with a letter"
                )
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ConfigError(f"--fail-rate must be between 0 and 1, not {self.fail_rate}")


class Collector:
    """The collector's state (archive, dedupe, stats) and its Starlette app."""

    def __init__(self, settings: CollectorSettings):
        settings.check()
        self.settings = settings
        self.data_dir = Path(settings.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.stats = Stats()
        for source in settings.keys.values():
            self.stats.sources.setdefault(source, SourceStats())
        writer = ArchiveWriter(self.data_dir, fsync=settings.fsync)
        dedupe = DedupeStore(self.data_dir / "dedupe.sqlite", settings.dedupe_window_s)
        self.committer = Committer(writer, dedupe)
        self._rate_window = (0, 0)
        self._stop = threading.Event()
        self._load_lock = threading.Lock()
        self._loader_thread: threading.Thread | None = None
        if settings.loader is not None and settings.load_every_s:
            self._loader_thread = threading.Thread(
                target=self._load_loop, name="segloop-load", daemon=True
            )
            self._loader_thread.start()

    # -- continuous loading ----------------------------------------------------------------

    def load_now(self) -> Any:
        """Load what the archive holds so far (only new bytes are read)."""
        loader = self.settings.loader
        if loader is None:
            return None
        with self._load_lock:
            result = loader(self.data_dir)
        self.stats.loads += 1
        summary = getattr(result, "summary", None)
        self.stats.last_load = summary() if callable(summary) else None
        return result

    def _load_or_skip(self, when: str) -> None:
        """One continuous load; a warehouse file held by another process skips the round.

        Nothing is lost by skipping: the archive keeps every message and the loader records
        what it loaded, so the next round loads everything new since the last full load.
        """
        try:
            self.load_now()
        except WarehouseLockedError as exc:
            self.stats.loads_skipped += 1
            log.warning("load skipped (%s): %s The archive keeps the messages; %s.", when, exc,
                        "they load at the next round" if when == "timer"
                        else "run `segloop load-archive` or restart the collector to load them")

    def _load_loop(self) -> None:
        interval = self.settings.load_every_s or 60.0
        while not self._stop.wait(interval):
            try:
                self._load_or_skip("timer")
            except Exception as exc:  # keep collecting; report and try again next tick
                log.error("continuous load failed: %s", exc)

    def close(self) -> None:
        self._stop.set()
        if self._loader_thread is not None:
            self._loader_thread.join()
        self.committer.close()
        if self.settings.loader is not None and self.settings.load_every_s:
            self._load_or_skip("shutdown")  # the tail received since the last tick

    # -- request handling -----------------------------------------------------------------

    def _rate_limited(self) -> bool:
        limit = self.settings.rate_limit
        if not limit:
            return False
        second = int(time.monotonic())
        window, count = self._rate_window
        count = count + 1 if window == second else 1
        self._rate_window = (second, count)
        return count > limit

    async def handle(self, request: Request, call: str | None) -> Response:
        from starlette.responses import JSONResponse, PlainTextResponse

        received_at = datetime.now(UTC)
        settings = self.settings
        if self._rate_limited():
            return self._answer(
                PlainTextResponse(
                    "Too Many Requests", 429, headers={"Retry-After": "1", "X-RateLimit-Reset": "1"}
                )
            )
        if settings.latency_ms:
            await asyncio.sleep(settings.latency_ms / 1000)
        if settings.fail_rate and random.random() < settings.fail_rate:
            return self._answer(PlainTextResponse("Internal Server Error (injected by --fail-rate)", 500))
        try:
            body, body_bytes = await self._read_json(request)
        except BadRequest as exc:
            self.stats.rejected[exc.reason] += 1
            return self._answer(PlainTextResponse(f"Bad Request: {exc}", 400))
        write_key = write_key_from(request.headers.get("authorization"), body)
        source = settings.keys.get(write_key) if write_key else None
        if source is None:
            self.stats.rejected["unknown_write_key"] += 1
            return self._answer(
                PlainTextResponse(
                    "Unauthorized: missing or unknown write key; send it as the HTTP Basic "
                    "user or as `writeKey` in the body",
                    401,
                )
            )
        try:
            prepared = prepare(body, call, received_at, body_bytes)
        except BadRequest as exc:
            self.stats.rejected[exc.reason] += 1
            return self._answer(PlainTextResponse(f"Bad Request: {exc}", 400))
        result = CommitResult(0, 0)
        if prepared.lines:
            day = day_partition(int(received_at.timestamp() * 1000))
            future = self.committer.submit(source, day, prepared.lines)
            try:
                result = await asyncio.wrap_future(future)
            except Exception:
                return self._answer(
                    PlainTextResponse("Internal Server Error: the archive could not be written", 500)
                )
        self._count(source, prepared, result)
        headers = {}
        if prepared.dropped:
            headers["X-Segloop-Dropped"] = str(sum(prepared.dropped.values()))
            if "batch_over_2500_messages" in prepared.dropped:
                log.warning("a batch of %d messages was dropped (over 2,500)", prepared.received)
        return self._answer(JSONResponse({"success": True}, headers=headers))

    async def _read_json(self, request: Request) -> tuple[dict[str, Any], int]:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in ("application/json", "text/plain"):
            raise BadRequest(
                "wrong_content_type",
                f"Content-Type must be application/json, not `{content_type or 'missing'}`",
            )
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > Limits.MAX_REQUEST_BYTES:
            raise BadRequest("request_too_large", "the request is over 500 KB")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > Limits.MAX_REQUEST_BYTES:
                raise BadRequest("request_too_large", "the request is over 500 KB")
            chunks.append(chunk)
        raw = decode_body(b"".join(chunks), request.headers.get("content-encoding"))
        return parse_json(raw), len(raw)

    def _count(self, source: str, prepared: Prepared, result: CommitResult) -> None:
        for stats in (self.stats.total, self.stats.sources.setdefault(source, SourceStats())):
            stats.received += prepared.received
            stats.accepted += result.accepted
            stats.deduped += result.deduped
            stats.dropped.update(prepared.dropped)

    def stats_dict(self) -> dict[str, Any]:
        """/stats: message and request counters, plus fsynced commits (group commit at work)."""
        return {**self.stats.as_dict(), "commits": self.committer.commits}

    def _answer(self, response: Response) -> Response:
        self.stats.requests[str(response.status_code)] += 1
        return response

    def app(self) -> Starlette:
        from starlette.applications import Starlette
        from starlette.middleware import Middleware
        from starlette.middleware.cors import CORSMiddleware
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        from segloop.segment.collector_openapi import openapi_spec

        def endpoint(call: str | None) -> Callable[[Request], Any]:
            async def handler(request: Request) -> Response:
                return await self.handle(request, call)

            return handler

        async def health(request: Request) -> Response:
            return JSONResponse({"status": "ok"})

        async def stats(request: Request) -> Response:
            return JSONResponse(self.stats_dict())

        async def spec(request: Request) -> Response:
            return JSONResponse(openapi_spec())

        routes = [
            Route("/v1/batch", endpoint(None), methods=["POST"]),
            Route("/v1/import", endpoint(None), methods=["POST"]),
            *[Route(f"/v1/{call}", endpoint(call), methods=["POST"]) for call in CALL_TYPES],
            Route("/health", health, methods=["GET"]),
            Route("/stats", stats, methods=["GET"]),
            Route("/openapi.json", spec, methods=["GET"]),
        ]
        # Browsers (analytics.js) post cross-origin, as they do to api.segment.io.
        cors = Middleware(
            CORSMiddleware, allow_origins=["*"], allow_methods=["GET", "POST"], allow_headers=["*"]
        )
        return Starlette(routes=routes, middleware=[cors])


# -- running ------------------------------------------------------------------------------


@dataclass
class RunningCollector:
    """A collector serving on a loopback port (from ``serve_in_thread``)."""

    url: str
    port: int
    collector: Collector

    @property
    def stats(self) -> dict[str, Any]:
        return self.collector.stats_dict()


def bind_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit this; without it small responses wait ~40 ms for a delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _uvicorn_server(app: Any, sock: socket.socket) -> Any:
    import uvicorn

    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, lifespan="off",
        timeout_keep_alive=30,
    )
    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            # uvicorn re-raises the signal once shut down, which would kill the process
            # before the archive is closed and the last load runs; return normally instead.
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list):
                captured.clear()

    return _Server(config)


@contextlib.contextmanager
def serve_in_thread(
    keys: dict[str, str], data_dir: str | Path, **options: Any
) -> Iterator[RunningCollector]:
    """Run a collector on a free 127.0.0.1 port in a background thread; yields its URL.

    ``options`` are CollectorSettings fields (dedupe_window_s, latency_ms, fail_rate,
    rate_limit, load_every_s, loader, fsync). Leaving the block stops the server and
    flushes the archive.
    """
    collector = Collector(CollectorSettings(keys=dict(keys), data_dir=Path(data_dir), **options))
    sock = bind_socket()
    port = sock.getsockname()[1]
    server = _uvicorn_server(collector.app(), sock)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="segloop-collector", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            collector.close()
            raise RuntimeError("the collector did not start within 10 s")
        time.sleep(0.01)
    try:
        yield RunningCollector(f"http://127.0.0.1:{port}", port, collector)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        collector.close()


def run_forever(
    settings: CollectorSettings, host: str, port: int, announce: Callable[[str], None]
) -> dict[str, Any]:
    """Serve until interrupted (the CLI); ``announce`` gets the URL once listening.

    Returns the final /stats counters.
    """
    collector = Collector(settings)
    sock = bind_socket(host, port)
    bound = sock.getsockname()[1]
    server = _uvicorn_server(collector.app(), sock)
    announce(f"http://{host}:{bound}")
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        collector.close()
    return collector.stats_dict()
