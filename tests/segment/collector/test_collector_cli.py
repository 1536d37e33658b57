"""`segloop collector` as a command: keys from the CLI or segloop.yml, loading on a timer."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest

from segloop.cli import _collector_keys
from segloop.errors import ConfigError, SecretError
from segloop.warehouses import Warehouse


def test_keys_from_cli_and_workspace_file(monkeypatch):
    monkeypatch.setenv("WEB_WRITE_KEY", "secret-web")
    monkeypatch.setenv("APP_WRITE_KEY", "secret-app")
    keys = _collector_keys(["plain=dev", "${APP_WRITE_KEY}=app"], {"${WEB_WRITE_KEY}": "web"})
    assert keys == {"secret-web": "web", "plain": "dev", "secret-app": "app"}
    with pytest.raises(ConfigError, match="WRITE_KEY=SOURCE_SCHEMA"):
        _collector_keys(["no-equals-sign"], {})
    with pytest.raises(SecretError, match="MISSING_KEY"):
        _collector_keys([], {"${MISSING_KEY}": "web"})


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_collector_command_loads_on_a_timer_and_on_exit(tmp_path: Path, stop: signal.Signals):
    target = tmp_path / "wh.duckdb"
    proc = subprocess.Popen(
        [sys.executable, "-m", "segloop.cli", "collector", "--port", "0", "--key", "k1=web",
         "--data", str(tmp_path / "data"), "--load-every", "30s", "--duckdb", str(target)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        body = {"batch": [{"type": "track", "userId": "u", "event": "Signed Up", "messageId": f"m{i}"} for i in range(100)]}
        deadline = time.monotonic() + 20
        while True:
            try:
                res = httpx.post(f"{url}/v1/batch", content=orjson.dumps(body), auth=("k1", ""),
                                 headers={"Content-Type": "application/json"})
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert res.status_code == 200
    finally:
        proc.send_signal(stop)
        _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr
    assert "k1" not in stderr  # write keys are never printed
    assert "100 messages accepted" in " ".join(stderr.split())
    with Warehouse.duckdb(target) as wh:
        assert wh.count(wh.table("signed_up", "web")) == 100


def test_collector_command_without_keys_is_a_clear_error(tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, "-m", "segloop.cli", "collector", "--port", "0", "--data", str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path, timeout=30,
    )
    assert proc.returncode == 1
    assert "--key WRITE_KEY=SOURCE_SCHEMA" in proc.stderr


def test_collector_command_read_timeout_and_a_summary_that_says_why(tmp_path: Path):
    import socket

    proc = subprocess.Popen(
        [sys.executable, "-m", "segloop.cli", "collector", "--port", "0", "--key", "k1=web",
         "--data", str(tmp_path / "data"), "--read-timeout", "1s", "--max-connections", "100"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as idle:
            idle.sendall(b"POST /v1/batch HTTP/1.1\r\nHost: x\r\n")
            assert idle.recv(100) == b""  # closed by the collector after --read-timeout
        over = {"batch": [{"type": "track", "userId": "u", "event": "E"} for _ in range(2501)]}
        invalid = {"batch": [{"type": "track", "userId": "u"}, {"type": "track", "event": "E"}]}
        for body in (over, invalid):
            res = httpx.post(f"{url}/v1/batch", content=orjson.dumps(body), auth=("k1", ""),
                             headers={"Content-Type": "application/json"}, timeout=30)
            assert res.status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    text = " ".join(stderr.split())
    assert "2 invalid messages dropped (1 missing event, 1 missing user id and anonymous id)" in text
    assert "2,501 messages refused in 1 batch over Segment's 2,500-message limit" in text
    assert "2,503" not in text
