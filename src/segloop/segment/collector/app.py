"""`segloop collector`: a Segment-compatible HTTP Tracking API that archives what it accepts.

Senders (Segment's own libraries, segloop's Segment action, curl) point their host at it.
It answers as Segment does (see docs/collector.md for the few places it is stricter), and a
200 means durable: accepted messages are appended to the raw archive
(`<data>/segment-logs/<source>/<day>/<file>.gz`) and fsynced first. Concurrent requests
are group-committed by one commit thread, so one fsync covers many requests.

analytics.js (``@segment/analytics-next``) works against it too: its short paths
(``/v1/t``, ``/v1/b``...), its settings fetch (``/v1/projects/<writeKey>/settings``, which
points the page back here) and its metrics posts (``/v1/m``, counted apart).

Request checks live in ``collector_requests`` (pure functions), the dedupe store and the
commit thread in ``collector_commit``, timeouts and connection limits in
``collector_server``; this module holds the stats, the Starlette app, and ways to run it
(the CLI's ``run_forever`` and ``serve_in_thread`` for tests and the demo).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from segloop.errors import ConfigError, WarehouseLockedError
from segloop.segment.archive.files import ArchiveWriter, day_partition
from segloop.segment.collector.commit import CommitResult, Committer, DedupeStore
from segloop.segment.collector.requests import (
    CALL_TYPES,
    SHORT_PATHS,
    BadRequest,
    Limits,
    Prepared,
    analytics_js_settings,
    decode_body,
    parse_json,
    prepare,
    write_key_from,
)
from segloop.segment.collector.server import (
    ConnectionGuard,
    ServerLimits,
    bind_socket,
    uvicorn_server,
)

if TYPE_CHECKING:  # pragma: no cover
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

log = logging.getLogger("segloop.collector")

__all__ = ["Collector", "CollectorSettings", "Limits", "RunningCollector", "serve_in_thread"]


# -- stats --------------------------------------------------------------------------------


@dataclass
class SourceStats:
    received: int = 0
    accepted: int = 0
    deduped: int = 0
    dropped: Counter[str] = field(default_factory=Counter)  # invalid messages, by reason
    over_limit: Counter[str] = field(default_factory=Counter)  # batches over 2,500 messages

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "accepted": self.accepted,
            "deduped": self.deduped,
            "dropped": dict(self.dropped),
            "over_limit": {"batches": self.over_limit["batches"],
                           "messages": self.over_limit["messages"]},
        }


@dataclass
class Stats:
    """Counters since the collector started (messages and requests)."""

    MAX_PATHS: ClassVar[int] = 100  # distinct unknown paths remembered; the rest count as "other"

    started: float = field(default_factory=time.time)
    total: SourceStats = field(default_factory=SourceStats)
    sources: dict[str, SourceStats] = field(default_factory=dict)
    requests: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    not_found: Counter[str] = field(default_factory=Counter)  # "METHOD /path" -> count
    metrics_posts: int = 0  # analytics.js's own telemetry (/v1/m), never archived
    loads: int = 0
    loads_skipped: int = 0  # rounds that found the warehouse file held by another process
    last_load: dict[str, Any] | None = None

    def count_not_found(self, method: str, path: str) -> bool:
        """Count a request for an unknown path; True the first time this path is seen."""
        key = f"{method} {path[:200]}"
        if key not in self.not_found and len(self.not_found) >= self.MAX_PATHS:
            key = "other"
        first = key not in self.not_found
        self.not_found[key] += 1
        return first and key != "other"

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.total.as_dict(),
            "requests": dict(self.requests),
            "rejected_requests": dict(self.rejected),
            "not_found": dict(self.not_found),
            "metrics_posts": self.metrics_posts,
            "sources": {name: s.as_dict() for name, s in sorted(self.sources.items())},
            "uptime_s": round(time.time() - self.started, 3),
            "loads": self.loads,
            "loads_skipped": self.loads_skipped,
            "last_load": self.last_load,
        }


def summary(stats: dict[str, Any]) -> str:
    """One line for the end of `segloop collector`: what was kept, dropped and refused, and why."""
    dropped = stats["dropped"]
    parts = [f"{stats['accepted']:,} messages accepted", f"{stats['deduped']:,} duplicates dropped"]
    invalid = sum(dropped.values())
    reasons = ", ".join(f"{n:,} {why.replace('_', ' ')}" for why, n in sorted(dropped.items()))
    parts.append(f"{invalid:,} invalid messages dropped" + (f" ({reasons})" if reasons else ""))
    over = stats["over_limit"]
    if over["batches"]:
        parts.append(
            f"{over['messages']:,} messages refused in {over['batches']:,} "
            f"batch{'es' if over['batches'] != 1 else ''} over Segment's 2,500-message limit "
            "(send at most 2,500 per batch)"
        )
    parts.append(f"{sum(stats['rejected_requests'].values()):,} requests refused")
    if stats["not_found"]:
        parts.append(f"{sum(stats['not_found'].values()):,} requests to unknown paths")
    return "collector stopped: " + ", ".join(parts)


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
    header_timeout_s: float = 30.0  # a client must finish its request head within this
    body_timeout_s: float = 30.0  # ... and send its whole body within this (else 408)
    max_connections: int = 1000  # never more than `ulimit -n` leaves room for

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
        if self.header_timeout_s <= 0 or self.body_timeout_s <= 0 or self.max_connections < 1:
            raise ConfigError("the collector's read timeouts and --max-connections must be positive")

    def limits(self) -> ServerLimits:
        return ServerLimits(header_timeout_s=self.header_timeout_s,
                            body_timeout_s=self.body_timeout_s,
                            max_connections=self.max_connections)


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
        self.guard = ConnectionGuard(settings.limits())
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
        except TimeoutError:
            self.stats.rejected["body_timeout"] += 1
            return self._answer(PlainTextResponse(
                f"Request Timeout: the body did not arrive within {settings.body_timeout_s:g} s",
                408, headers={"Connection": "close"}))
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
        if prepared.dropped or prepared.over_limit:
            headers["X-Segloop-Dropped"] = str(sum(prepared.dropped.values()) + prepared.over_limit)
        if prepared.over_limit:
            log.warning(
                "a batch of %d messages to source `%s` was refused whole: Segment's limit is "
                "2,500 messages per batch (Segment answers 200 and drops it too); the sender "
                "should send smaller batches", prepared.over_limit, source)
        return self._answer(JSONResponse({"success": True}, headers=headers))

    async def _read_json(self, request: Request) -> tuple[dict[str, Any], int]:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in ("application/json", "text/plain"):
            raise BadRequest(
                "wrong_content_type",
                f"Content-Type must be application/json, not `{content_type or 'missing'}`",
            )
        raw = await self._read_body(request)
        return parse_json(raw), len(raw)

    async def _read_body(self, request: Request) -> bytes:
        """The decoded body, at most 500 KB, all of it within the body timeout."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > Limits.MAX_REQUEST_BYTES:
            raise BadRequest("request_too_large", "the request is over 500 KB")
        chunks: list[bytes] = []
        size = 0
        async with asyncio.timeout(self.settings.body_timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > Limits.MAX_REQUEST_BYTES:
                    raise BadRequest("request_too_large", "the request is over 500 KB")
                chunks.append(chunk)
        return decode_body(b"".join(chunks), request.headers.get("content-encoding"))

    async def metrics(self, request: Request) -> Response:
        """analytics.js's own telemetry (`/v1/m`): read (bounded), counted, never archived."""
        from starlette.responses import JSONResponse, PlainTextResponse

        try:
            await self._read_body(request)
        except BadRequest as exc:
            self.stats.rejected[exc.reason] += 1
            return self._answer(PlainTextResponse(f"Bad Request: {exc}", 400))
        except TimeoutError:
            self.stats.rejected["body_timeout"] += 1
            return self._answer(PlainTextResponse("Request Timeout", 408, headers={"Connection": "close"}))
        self.stats.metrics_posts += 1
        return self._answer(JSONResponse({"success": True}))

    async def project_settings(self, request: Request) -> Response:
        """`/v1/projects/<writeKey>/settings`: analytics.js's start-up settings, pointing here."""
        from starlette.responses import JSONResponse, PlainTextResponse

        write_key = request.path_params["write_key"]
        if write_key not in self.settings.keys:
            self.stats.rejected["unknown_write_key"] += 1
            return self._answer(PlainTextResponse(
                "Not Found: no source has this write key; start the collector with "
                "--key WRITE_KEY=SOURCE_SCHEMA", 404))
        server = request.scope.get("server") or ("127.0.0.1", 0)
        body = analytics_js_settings(write_key, request.headers.get("host"), request.url.scheme,
                                     f"{server[0]}:{server[1]}")
        return self._answer(JSONResponse(body))

    async def not_found(self, request: Request, status: int = 404) -> Response:
        """An unknown path (404) or method (405): counted in /stats, logged once per path."""
        from starlette.responses import PlainTextResponse

        if self.stats.count_not_found(request.method, request.url.path):
            text = "no such endpoint" if status == 404 else "method not allowed"
            log.warning("%s %s: %s (%d); /stats counts these under `not_found`. Senders post "
                        "to /v1/batch, /v1/<call> or analytics.js's /v1/<letter>.",
                        request.method, request.url.path[:200], text, status)
        text = "Not Found" if status == 404 else "Method Not Allowed"
        return self._answer(PlainTextResponse(text, status))

    def _count(self, source: str, prepared: Prepared, result: CommitResult) -> None:
        for stats in (self.stats.total, self.stats.sources.setdefault(source, SourceStats())):
            stats.received += prepared.received
            stats.accepted += result.accepted
            stats.deduped += result.deduped
            stats.dropped.update(prepared.dropped)
            if prepared.over_limit:
                stats.over_limit["batches"] += 1
                stats.over_limit["messages"] += prepared.over_limit

    def stats_dict(self) -> dict[str, Any]:
        """/stats: message and request counters, fsynced commits (group commit at work), connections."""
        return {**self.stats.as_dict(), "commits": self.committer.commits,
                "connections": self.guard.as_dict()}

    def _answer(self, response: Response) -> Response:
        self.stats.requests[str(response.status_code)] += 1
        return response

    def app(self) -> Starlette:
        """The Starlette app: ingestion paths (with CORS) and /health, /stats, /openapi.json (without)."""
        from starlette.applications import Starlette
        from starlette.middleware.cors import CORSMiddleware
        from starlette.responses import JSONResponse
        from starlette.routing import Route, request_response
        from starlette.types import ASGIApp

        from segloop.segment.collector.openapi import openapi_spec

        def cors(handler: Callable[[Request], Any]) -> ASGIApp:
            # Browsers (analytics.js) post cross-origin, as they do to api.segment.io. Only
            # these paths answer other origins: /stats and the rest are not theirs to read.
            return CORSMiddleware(request_response(handler), allow_origins=["*"],
                                  allow_methods=["GET", "POST"], allow_headers=["*"], max_age=3600)

        def endpoint(call: str | None) -> ASGIApp:
            async def handler(request: Request) -> Response:
                if request.method != "POST":  # an OPTIONS that is no CORS preflight
                    return await self.not_found(request, 405)
                return await self.handle(request, call)

            return cors(handler)

        async def health(request: Request) -> Response:
            return JSONResponse({"status": "ok"})

        async def stats(request: Request) -> Response:
            return JSONResponse(self.stats_dict())

        async def spec(request: Request) -> Response:
            return JSONResponse(openapi_spec())

        post = ["POST", "OPTIONS"]
        routes = [
            Route("/v1/batch", endpoint(None), methods=post),
            Route("/v1/import", endpoint(None), methods=post),
            Route("/v1/b", endpoint(None), methods=post),
            *[Route(f"/v1/{call}", endpoint(call), methods=post) for call in CALL_TYPES],
            *[Route(f"/v1/{letter}", endpoint(call), methods=post) for letter, call in SHORT_PATHS.items()],
            Route("/v1/m", cors(self.metrics), methods=post),
            Route("/v1/projects/{write_key}/settings", cors(self.project_settings),
                  methods=["GET", "OPTIONS"]),
            Route("/health", health, methods=["GET"]),
            Route("/stats", stats, methods=["GET"]),
            Route("/openapi.json", spec, methods=["GET"]),
        ]
        app = Starlette(routes=routes)

        async def not_found(request: Request, exc: Exception) -> Response:
            return await self.not_found(request, getattr(exc, "status_code", 404))

        app.add_exception_handler(404, not_found)
        app.add_exception_handler(405, not_found)
        return app


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


@contextlib.contextmanager
def serve_in_thread(
    keys: dict[str, str], data_dir: str | Path, **options: Any
) -> Iterator[RunningCollector]:
    """Run a collector on a free 127.0.0.1 port in a background thread; yields its URL.

    ``options`` are CollectorSettings fields (dedupe_window_s, latency_ms, fail_rate,
    rate_limit, load_every_s, loader, fsync, header_timeout_s, body_timeout_s,
    max_connections). Leaving the block stops the server and
    flushes the archive.
    """
    collector = Collector(CollectorSettings(keys=dict(keys), data_dir=Path(data_dir), **options))
    sock = bind_socket()
    port = sock.getsockname()[1]
    server = uvicorn_server(collector.app(), sock, collector.guard)
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
    server = uvicorn_server(collector.app(), sock, collector.guard)
    announce(f"http://{host}:{bound}")
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        collector.close()
    return collector.stats_dict()
