"""The Client over real sockets on 127.0.0.1: connection resets and stalled responses."""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from segloop.segment import Client


class _FlakyServer:
    """A raw HTTP/1.1 server whose first answers are: a reset, a stall, then 200s."""

    def __init__(self, plan: list[str]):
        self.plan = list(plan)
        self.accepted: Counter[str] = Counter()  # messageIds answered with 200
        self.attempts = 0
        self.retry_counts: list[int] = []
        self.connections = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        buf = b""
        with conn:
            while not self.stop.is_set():
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length"))
                while len(buf) < length:
                    buf += conn.recv(65536)
                body, buf = buf[:length], buf[length:]
                with self.lock:
                    self.attempts += 1
                    action = self.plan.pop(0) if self.plan else "ok"
                if action == "reset":
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    return  # close with RST
                if action == "stall":
                    self.stop.wait(2.0)  # longer than the client's timeout; never answers
                    return
                if action == "429":
                    conn.sendall(b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 0.4\r\n"
                                 b"Content-Length: 4\r\n\r\nslow")
                    continue
                ids = [m["messageId"] for m in orjson.loads(body)["batch"]]
                with self.lock:
                    self.accepted.update(ids)
                    self.retry_counts.append(head.count(b"X-Retry-Count"))
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 16\r\n\r\n{\"success\":true}")
                if action == "close_after":  # keep-alive promised, then the idle socket closes
                    return

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def flaky() -> Iterator[Any]:
    servers: list[_FlakyServer] = []

    def make(plan: list[str]) -> _FlakyServer:
        server = _FlakyServer(plan)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


def test_resets_and_stalls_on_real_sockets_are_retried_and_nothing_is_lost(flaky: Any) -> None:
    server = flaky(["reset", "stall", "reset"])
    client = Client("KEY", host=f"http://127.0.0.1:{server.port}", timeout=0.3,
                    retry_base_delay=0.01, max_in_flight=2, upload_size=10)
    ids = [client.track("u", "E", {"i": i})[1]["messageId"] for i in range(40)]
    report = client.shutdown()
    assert report.sent == 40 and report.lost == 0
    assert set(server.accepted) == set(ids) and max(server.accepted.values()) == 1
    assert server.attempts >= 4 + 3  # four batches plus the three failed tries


def test_unreachable_endpoint_fails_the_batch_after_the_retries() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = Client("KEY", host=f"http://127.0.0.1:{port}", max_retries=2, retry_base_delay=0.01)
    client.track("u", "E")
    report = client.shutdown()
    assert report.failed == 1 and report.sent == 0


def test_a_closed_idle_connection_is_replaced_without_a_retry_or_delay(flaky: Any) -> None:
    server = flaky(["close_after", "close_after"])
    client = Client("KEY", host=f"http://127.0.0.1:{server.port}", max_in_flight=1,
                    retry_base_delay=3600.0)  # a real retry would wait an hour: flush times out
    for i in range(3):
        client.track("u", "E", {"i": i})
        assert client.flush(timeout=120).sent == i + 1
    client.shutdown()
    assert server.connections == 3 and server.retry_counts == [0, 0, 0]


def test_429_over_real_sockets_waits_for_retry_after(flaky: Any) -> None:
    server = flaky(["429"])
    client = Client("KEY", host=f"http://127.0.0.1:{server.port}", max_in_flight=1)
    start = time.monotonic()
    client.track("u", "E")
    report = client.flush()
    assert report.sent == 1 and time.monotonic() - start >= 0.35
    client.shutdown()


def test_a_proxy_from_the_environment_is_honoured_through_httpx(monkeypatch: pytest.MonkeyPatch) -> None:
    from segloop.segment.send.direct import DirectSender
    from segloop.segment.send.transport import HttpxSender, make_sender

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert isinstance(make_sender("https://api.segment.io/v1/batch", None, 15, 4), HttpxSender)
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.delenv("https_proxy", raising=False)
    assert isinstance(make_sender("https://api.segment.io/v1/batch", None, 15, 4), DirectSender)
