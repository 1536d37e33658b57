"""kill -9 mid-stream: every message that got a 200 is in the archive after a restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import orjson

from segloop.segment.archive.files import read_all_messages
from segloop.segment.archive.loader import load_archive
from segloop.warehouses import Warehouse

KEY = "wk_kill"


def start_collector(data_dir: Path, port: int = 0) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "segloop.cli", "collector", "--port", str(port), "--key", f"{KEY}=web",
         "--data", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    assert url.startswith("http://127.0.0.1:"), url
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("collector did not come up")


class Sender(threading.Thread):
    """Streams batches, retrying each until it gets a 200 (as Segment's libraries do)."""

    def __init__(self, name: str, url: str):
        super().__init__(daemon=True)
        self.prefix = name
        self.url = url
        self.acked: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        n = 0
        with httpx.Client(auth=(KEY, ""), timeout=5) as http:
            while not self.stop.is_set():
                ids = [f"{self.prefix}-{n}-{i}" for i in range(20)]
                body = orjson.dumps({"batch": [{"type": "track", "userId": "u", "event": "E", "messageId": m} for m in ids]})
                while not self.stop.is_set():
                    try:
                        res = http.post(f"{self.url}/v1/batch", content=body, headers={"Content-Type": "application/json"})
                    except httpx.HTTPError:
                        time.sleep(0.02)
                        continue
                    if res.status_code == 200:
                        self.acked.extend(ids)
                        break
                n += 1


def wait_for(senders: list[Sender], count: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while sum(len(s.acked) for s in senders) < count:
        assert time.monotonic() < deadline, "senders made no progress"
        time.sleep(0.01)


def test_kill_9_mid_stream_loses_no_acknowledged_message(tmp_path: Path):
    data_dir = tmp_path / "collector"
    proc, url = start_collector(data_dir)
    port = int(url.rsplit(":", 1)[1])
    senders = [Sender(f"s{i}", url) for i in range(3)]
    for sender in senders:
        sender.start()
    try:
        wait_for(senders, 3000)
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: batches are in flight right now
        proc.wait(timeout=10)
        acked_before_kill = sum(len(s.acked) for s in senders)
        proc, _ = start_collector(data_dir, port)
        wait_for(senders, acked_before_kill + 3000)
    finally:
        for sender in senders:
            sender.stop.set()
        for sender in senders:
            sender.join(timeout=10)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
    acked = {m for s in senders for m in s.acked}
    archived = [m["messageId"] for m in read_all_messages(data_dir / "segment-logs")]
    missing = acked - set(archived)
    assert not missing, f"{len(missing)} acknowledged messages are not in the archive"
    # The restarted collector wrote new files; the killed one's files still load.
    with Warehouse.duckdb(tmp_path / "wh.duckdb") as wh:
        load_archive(wh, data_dir)
        ids = set(wh.to_arrow(wh.table("tracks", "web").select("id"))["id"].to_pylist())
        assert acked <= ids
        assert len(ids) == len(set(archived))  # each message once, even if archived twice
