"""Client lifecycle: fork safety, delivery at interpreter exit, and send_messages results."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from segloop.segment import Client, Outcome, QueuedMessage, send_messages
from segloop.segment.messages import MISSING_CUSTOMER_ID, Rejection
from tests.segment.send.fake_segment import FakeSegment


def _wait_child(pid: int, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"forked child did not finish within {seconds} s (hung after fork)")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_forked_child_gets_its_own_sender_and_does_not_hang() -> None:
    gate = threading.Event()
    fake = FakeSegment(gate=gate)
    client = Client("KEY", host="http://segment.test", transport=fake, max_in_flight=2, upload_size=1)
    for i in range(5):  # the parent has threads running and a request stuck in flight
        client.track("parent", "E", {"i": i})
    time.sleep(0.1)
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            gate.set()  # the child's copy of the event: lets the child's own requests through
            fake.requests.clear()
            client.track("child", "E", {"i": 99})
            report = client.flush(timeout=5)
            users = {m["userId"] for m in fake.delivered()}
            code = 0 if report.sent == 1 and users == {"child"} else 3
            client.shutdown(timeout=5)
        finally:
            os._exit(code)
    assert _wait_child(pid, 15) == 0
    gate.set()
    report = client.shutdown()
    assert report.sent == 5
    assert {m["userId"] for m in fake.delivered()} == {"parent"}


def test_messages_left_in_the_queue_are_delivered_at_interpreter_exit(tmp_path: Path) -> None:
    out = tmp_path / "delivered.txt"
    script = textwrap.dedent(f"""
        import httpx, orjson
        from segloop.segment import Client

        def transport(request):
            with open({str(out)!r}, "ab") as f:
                for m in orjson.loads(request.content)["batch"]:
                    f.write(m["messageId"].encode() + b"\\n")
            return httpx.Response(200)

        client = Client("KEY", host="http://segment.test", transport=transport, upload_interval=30)
        for i in range(25):
            client.track("u", "E", {{"i": i}})
        # no flush, no shutdown: the atexit hook must deliver and join the threads
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert len(out.read_text().split()) == 25


def test_send_messages_reports_each_message_once_with_its_ref() -> None:
    fake = FakeSegment(poison="poison")
    client = Client("KEY", host="http://segment.test", transport=fake, on_full="block",
                    max_queue_size=50, upload_size=20)
    results: dict[Any, str] = {}
    lock = threading.Lock()

    def on_result(items: list[QueuedMessage], outcome: Outcome) -> None:
        with lock:
            for item in items:
                assert item.ref not in results, "a message was reported twice"
                results[item.ref] = outcome.reason or outcome.status

    def items() -> Any:
        for i in range(1000):
            if i % 100 == 5:
                yield i, Rejection(MISSING_CUSTOMER_ID, "column `user_id` is empty in this row")
            else:
                props = {"poison": 1} if i == 500 else {"i": i}
                yield i, {"type": "track", "userId": f"u{i}", "event": "E", "properties": props,
                          "messageId": f"m{i}"}

    progress: list[int] = []
    summary = send_messages(items(), client, on_result=on_result, progress=progress.append)
    client.shutdown()
    assert summary.read == 1000 and summary.sent == 989 and summary.failed == 0
    assert summary.rejected == 11
    assert summary.rejected_by_reason == {MISSING_CUSTOMER_ID: 10, "http_400": 1}
    assert len(results) == 1000 and results[500] == "http_400" and results[5] == MISSING_CUSTOMER_ID
    assert sum(progress) == 1000
    assert len(fake.delivered()) == 989
