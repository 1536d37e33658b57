"""The collector holds under abuse: half-open connections, slow bodies, a full house, no fds.

Every client is on 127.0.0.1, every loop is bounded. Timeouts are set short through
CollectorSettings (the defaults are 30 s), and the tests wait for events (a socket
closed by the server, a counter in /stats) with generous deadlines, never on speed.
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import orjson
import pytest

from segloop.segment.archive.files import read_all_messages
from segloop.segment.collector.app import serve_in_thread

KEY = "wk_abuse"
HALF_OPEN = 300
PARTIAL_HEAD = b"POST /v1/track HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@contextmanager
def half_open(port: int, count: int, data: bytes = PARTIAL_HEAD) -> Iterator[list[socket.socket]]:
    """``count`` connections that send ``data`` and then nothing more."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock.sendall(data)
            socks.append(sock)
        yield socks
    finally:
        for sock in socks:
            sock.close()


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server closed it (reads EOF or a reset); blocks up to the socket timeout."""
    try:
        while sock.recv(65536):
            pass  # an answer (408, 503), then EOF
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def track_batch(tag: str, n: int = 3) -> bytes:
    return orjson.dumps({"batch": [{"type": "track", "userId": "u", "event": "E", "messageId": f"{tag}-{i}"}
                                   for i in range(n)]})


def post(http: httpx.Client, tag: str) -> httpx.Response:
    return http.post("/v1/batch", content=track_batch(tag), headers={"Content-Type": "application/json"})


def test_300_half_open_connections_are_closed_and_others_are_answered_meanwhile(tmp_path: Path):
    with serve_in_thread({KEY: "web"}, tmp_path / "c", header_timeout_s=10) as running, half_open(
        running.port, HALF_OPEN
    ) as socks, httpx.Client(base_url=running.url, auth=(KEY, ""), timeout=30) as http:
        wait_for(lambda: running.stats["connections"]["open"] >= HALF_OPEN, "300 open connections")
        # A sender gets its 200 while the 300 are still connected.
        assert post(http, "during").status_code == 200
        during = http.get("/stats").json()["connections"]
        assert during["open"] >= HALF_OPEN + 1 and during["header_timeouts"] == 0
        # Then the server closes every one of them (without a request they never get one).
        assert all(closed_by_server(sock) for sock in socks)
        wait_for(lambda: running.stats["connections"]["header_timeouts"] >= HALF_OPEN, "300 timeouts")
        assert post(http, "after").status_code == 200
        assert running.stats["accepted"] == 6
    assert len(read_all_messages(tmp_path / "c" / "segment-logs")) == 6


def test_a_full_house_of_half_open_connections_makes_room_for_a_sender(tmp_path: Path):
    with serve_in_thread({KEY: "web"}, tmp_path / "c", max_connections=50) as running, half_open(
        running.port, 80
    ) as socks, httpx.Client(base_url=running.url, auth=(KEY, ""), timeout=30) as http:
        # The oldest connections that never sent a request were closed to make room.
        wait_for(lambda: running.stats["connections"]["evicted"] >= 30, "30 evictions")
        assert post(http, "sender").status_code == 200
        assert running.stats["connections"]["open"] <= 50
        assert closed_by_server(socks[0])
        assert running.stats["accepted"] == 3


def test_slow_bodies_get_408_and_a_full_house_of_busy_ones_gets_503(tmp_path: Path):
    body = track_batch("slow")
    head = (f"POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: Basic {base64.b64encode(f'{KEY}:'.encode()).decode()}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with serve_in_thread({KEY: "web"}, tmp_path / "c", max_connections=5, body_timeout_s=3) as running, \
            half_open(running.port, 5, head + body[:10]) as socks:
        # Every slot is in the middle of a request: nothing to evict, so a newcomer is told to retry.
        wait_for(lambda: running.stats["connections"]["open"] >= 5, "5 busy connections")
        with socket.create_connection(("127.0.0.1", running.port), timeout=30) as extra:
            extra.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = extra.recv(4096)
        assert answer.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in answer
        # The slow bodies time out with 408 and the connections close.
        for sock in socks:
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 408 "), reply[:80]
        assert running.stats["rejected_requests"] == {"body_timeout": 5}
        assert running.stats["connections"]["refused_busy"] == 1
        with httpx.Client(base_url=running.url, auth=(KEY, ""), timeout=30) as http:
            assert post(http, "after").status_code == 200
    assert [m["messageId"] for m in read_all_messages(tmp_path / "c" / "segment-logs")] == [
        "after-0", "after-1", "after-2"]


SERVE_WITH_LOW_ULIMIT = """
import resource, sys
from pathlib import Path
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
from segloop.segment.collector.app import CollectorSettings, run_forever
settings = CollectorSettings(keys={sys.argv[3]: "web"}, data_dir=Path(sys.argv[1]), header_timeout_s=5)
run_forever(settings, "127.0.0.1", 0, lambda url: print(url, flush=True))
"""


@pytest.mark.slow
@pytest.mark.parametrize("limit", [64, 256])
def test_out_of_file_descriptors_logs_a_line_not_a_flood_and_keeps_answering(tmp_path: Path, limit: int):
    log_path = tmp_path / "stderr.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVE_WITH_LOW_ULIMIT, str(tmp_path / "c"), str(limit), KEY],
            stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        port = int(url.rsplit(":", 1)[1])
        # Four times the descriptor limit, all at once, none finishing its request.
        with half_open(port, limit * 4), httpx.Client(base_url=url, auth=(KEY, ""), timeout=30) as http:
            statuses = [post(http, f"during-{i}").status_code for i in range(5)]
            stats = http.get("/stats").json()
            assert statuses == [200] * 5
            assert stats["accepted"] == 15
            assert stats["connections"]["cap"] < limit
    finally:
        proc.terminate()
        proc.wait(30)
    text = log_path.read_text()
    assert "Traceback" not in text
    assert len(text) < 5000, text[:2000]
    assert text.count("out of file descriptors") <= 3


def test_stats_are_not_readable_by_other_origins(tmp_path: Path):
    with serve_in_thread({KEY: "web"}, tmp_path / "c") as running, httpx.Client(base_url=running.url) as http:
        origin = {"Origin": "https://evil.example"}
        assert "access-control-allow-origin" not in http.get("/stats", headers=origin).headers
        preflight = http.options("/stats", headers={**origin, "Access-Control-Request-Method": "GET"})
        assert "access-control-allow-origin" not in preflight.headers
        assert "access-control-allow-origin" not in http.get("/health", headers=origin).headers
        # The ingestion paths still answer browsers on any site.
        ingest = http.options("/v1/t", headers={**origin, "Access-Control-Request-Method": "POST",
                                                "Access-Control-Request-Headers": "content-type"})
        assert ingest.headers["access-control-allow-origin"] in ("*", "https://evil.example")
