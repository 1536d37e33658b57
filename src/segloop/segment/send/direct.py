"""The default sender: one kept-alive ``http.client`` connection per sender thread.

Why not httpx here: per request it costs about twice the CPU (request/response objects,
pool bookkeeping, several socket calls), and with many sender threads under one GIL that
time is what limits throughput (bench/sender.py: 0.5 ms vs 1.4 ms per 100-message request
on 127.0.0.1). ``http.client`` sends headers and body in one ``send`` and reads the answer
with one buffered ``recv``. httpx is still used when a ``transport`` is passed (tests) or a
proxy from the environment applies to the URL.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
from urllib.parse import urlsplit

import httpx

from segloop.segment.send.answers import Answer, classify

# Errors that mean "the server closed the idle kept-alive connection": the request never
# arrived, so it is sent again at once on a new connection (as urllib3 and httpcore do).
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


class DirectSender:
    """POST to one URL over thread-local keep-alive connections (no pool lock, no proxy)."""

    def __init__(self, url: str, timeout: float):
        parts = urlsplit(url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or "localhost"
        self.port = parts.port or (443 if self.https else 80)
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.timeout = timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: set[http.client.HTTPConnection] = set()
        self._context: ssl.SSLContext | None = None

    def _ssl_context(self) -> ssl.SSLContext:
        if self._context is None:
            try:
                import certifi

                self._context = ssl.create_default_context(cafile=certifi.where())
            except ImportError:  # pragma: no cover - certifi comes with httpx
                self._context = ssl.create_default_context()
        return self._context

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn, True
        if self.https:
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout,
                                               context=self._ssl_context())
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        conn.connect()
        if conn.sock is not None:  # no Nagle delay on the last segment of a body
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._local.conn = conn
        with self._lock:
            self._open.add(conn)
        return conn, False

    def _drop(self, conn: http.client.HTTPConnection) -> None:
        self._local.conn = None
        with self._lock:
            self._open.discard(conn)
        conn.close()

    def post(self, body: bytes, headers: dict[str, str]) -> Answer:
        for _ in range(2):
            try:
                conn, reused = self._connection()
            except OSError as exc:
                return Answer("retry", None, f"network error: cannot connect to {self.host}:{self.port}: {exc}")
            try:
                conn.request("POST", self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as exc:
                self._drop(conn)
                if reused and isinstance(exc, _STALE):
                    continue
                return Answer("retry", None, f"network error: {type(exc).__name__}: {exc}")
            if response.will_close:
                self._drop(conn)
            if 200 <= response.status < 300:
                return Answer("ok", response.status, "")
            # case-insensitive headers for Retry-After, only on the (rare) error path
            answer_headers = httpx.Headers(response.getheaders())
            return classify(response.status, answer_headers, data.decode("utf-8", errors="replace"))
        return Answer("retry", None, "network error: the connection was closed twice in a row")

    def close(self) -> None:
        with self._lock:
            conns, self._open = self._open, set()
        for conn in conns:
            conn.close()
