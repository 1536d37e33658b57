"""The collector's HTTP server under abuse: read timeouts, a connection cap, file descriptors.

The collector listens on a port that any client may reach, so a client that opens a
connection and never finishes its request must not hold it forever, and a flood of such
connections must neither take every file descriptor nor flood the log. uvicorn (h11) has a
keep-alive timeout but no header timeout, and asyncio logs a traceback for every failed
``accept()`` when descriptors run out. ``ConnectionGuard`` adds, around uvicorn's protocol:

- a **header timeout**: a connection that has not sent a complete request head within
  ``header_timeout_s`` of opening (or of its previous response) is closed;
- a **connection cap**: at most ``max_connections`` open at once, never more than the
  process's file-descriptor limit leaves room for. When full, the connection that has
  waited longest without sending a request is closed to make room for the new one, so
  half-open connections cannot lock out real senders; if every connection is busy with a
  request, the new one gets ``503`` with ``Retry-After``;
- **one log line per interval** when ``accept()`` fails for lack of descriptors (instead of
  a traceback each time), and the oldest idle connections are closed to free some.

The body read timeout is the request handler's (``Collector._read_json``): it answers 408.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("segloop.collector")

__all__ = ["ConnectionGuard", "ServerLimits", "bind_socket", "uvicorn_server"]

_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 59\r\n\r\n"
    b"Service Unavailable: too many open connections; retry soon\n"
)


@dataclass
class ServerLimits:
    """How long a client may take and how many may be connected (CollectorSettings fields)."""

    header_timeout_s: float = 30.0
    body_timeout_s: float = 30.0
    max_connections: int = 1000
    keep_alive_s: float = 30.0

    # Descriptors kept free for the archive, dedupe DB, warehouse loads and the listener.
    RESERVED_FDS: int = 32
    LOG_EVERY_S: float = 10.0  # at most one "out of file descriptors" line this often


def fd_limit() -> int:
    """The process's soft limit on open file descriptors (ulimit -n)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


@dataclass
class ConnectionGuard:
    """Tracks the server's connections (event-loop thread only) and enforces ServerLimits."""

    limits: ServerLimits = field(default_factory=ServerLimits)
    header_timeouts: int = 0
    evicted: int = 0  # idle or half-open connections closed to make room
    refused: int = 0  # new connections answered 503 because every slot was busy
    fd_exhausted: int = 0  # accept() failures for lack of file descriptors
    open: int = 0
    _waiting: OrderedDict[Any, asyncio.TimerHandle] = field(default_factory=OrderedDict)
    _cycles: dict[Any, Any] = field(default_factory=dict)
    _last_fd_log: float = float("-inf")
    _fd_unlogged: int = 0

    @property
    def cap(self) -> int:
        """max_connections, lowered to what the descriptor limit leaves after the reserve."""
        room = fd_limit() - max(self.limits.RESERVED_FDS, fd_limit() // 8)
        return max(1, min(self.limits.max_connections, room))

    def as_dict(self) -> dict[str, int]:
        return {
            "open": self.open,
            "cap": self.cap,
            "header_timeouts": self.header_timeouts,
            "evicted": self.evicted,
            "refused_busy": self.refused,
            "accept_out_of_fds": self.fd_exhausted,
        }

    # -- connection events (called by the protocol subclass) ---------------------------

    def opened(self, conn: Any) -> None:
        self.open += 1
        if self.open > self.cap and not self._evict_oldest(1):
            self.refused += 1
            conn.transport.write(_BUSY)
            conn.transport.close()
            return
        self._cycles[conn] = conn.cycle
        self._wait(conn)

    def closed(self, conn: Any) -> None:
        self.open -= 1
        self._cycles.pop(conn, None)
        self._unwait(conn)

    def progressed(self, conn: Any) -> None:
        """After bytes arrived: a new request cycle means its head is complete."""
        if conn in self._waiting and conn.cycle is not self._cycles.get(conn):
            self._cycles[conn] = conn.cycle
            self._unwait(conn)

    def responded(self, conn: Any) -> None:
        """After a response: the connection waits for its next request head (or pipelined one)."""
        if conn.transport.is_closing() or conn.cycle is not self._cycles.get(conn):
            self._cycles[conn] = conn.cycle
            return
        self._wait(conn)

    # -- internals --------------------------------------------------------------------

    def _wait(self, conn: Any) -> None:
        self._unwait(conn)
        loop = asyncio.get_running_loop()
        self._waiting[conn] = loop.call_later(self.limits.header_timeout_s, self._expire, conn)

    def _unwait(self, conn: Any) -> None:
        timer = self._waiting.pop(conn, None)
        if timer is not None:
            timer.cancel()

    def _expire(self, conn: Any) -> None:
        if self._waiting.pop(conn, None) is not None:
            self.header_timeouts += 1
            conn.transport.close()

    def _evict_oldest(self, count: int) -> int:
        """Close up to ``count`` connections that have waited longest for a request head."""
        done = 0
        while done < count and self._waiting:
            conn, timer = self._waiting.popitem(last=False)
            timer.cancel()
            conn.transport.close()
            self.evicted += 1
            done += 1
        return done

    def loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """asyncio's handler, but out-of-descriptor accept errors are one line per interval."""
        exc = context.get("exception")
        if isinstance(exc, ValueError) and "_start_serving" in str(context.get("message")):
            # asyncio retries accept() 1 s after each failure, up to one retry per backlog
            # slot; retries due after shutdown closed the socket find no descriptor. Harmless.
            return
        if not (isinstance(exc, OSError) and exc.errno in _OUT_OF_FDS):
            loop.default_exception_handler(context)
            return
        self.fd_exhausted += 1
        # Free a few descriptors held by connections that never sent a request.
        self._evict_oldest(max(1, len(self._waiting) // 10))
        now = time.monotonic()
        if now - self._last_fd_log < self.limits.LOG_EVERY_S:
            self._fd_unlogged += 1
            return
        since = f" ({self._fd_unlogged} more since the last line)" if self._fd_unlogged else ""
        log.warning(
            "out of file descriptors: cannot accept new connections (%s; %d open, limit "
            "`ulimit -n` %d)%s; they wait in the backlog. Raise `ulimit -n` or lower "
            "--max-connections.", exc.strerror or exc, self.open, fd_limit(), since,
        )
        self._last_fd_log = now
        self._fd_unlogged = 0


def guarded_protocol(base: type, guard: ConnectionGuard) -> type:
    """uvicorn's HTTP protocol class with the guard's hooks around its connection events."""

    class GuardedProtocol(base):  # type: ignore[valid-type,misc]
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            guard.opened(self)

        def connection_lost(self, exc: Exception | None) -> None:
            guard.closed(self)
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            guard.progressed(self)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            guard.responded(self)

    return GuardedProtocol


def bind_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit this; without it small responses wait ~40 ms for a delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def uvicorn_server(app: Any, sock: socket.socket, guard: ConnectionGuard) -> Any:
    """A uvicorn server for ``app`` on ``sock`` whose connections go through ``guard``."""
    import uvicorn

    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, lifespan="off",
        timeout_keep_alive=int(guard.limits.keep_alive_s), http="h11",
    )
    config.load()
    config.http_protocol_class = guarded_protocol(config.http_protocol_class, guard)

    class _Server(uvicorn.Server):
        async def serve(self, sockets: list[socket.socket] | None = None) -> None:
            asyncio.get_running_loop().set_exception_handler(guard.loop_exception)
            await super().serve(sockets)

        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            # uvicorn re-raises the signal once shut down, which would kill the process
            # before the archive is closed and the last load runs; return normally instead.
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list):
                captured.clear()

    return _Server(config)
