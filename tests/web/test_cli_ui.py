"""`segloop ui` / `segloop serve` on the command line: what they print and what they start."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from segloop.cli import app


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[dict[str, Any]]:
    """Replace the blocking server with a recorder that announces its URL like the real one."""
    calls: list[dict[str, Any]] = []

    def fake_serve(workspace: Any, host: str, port: int, token: str | None, with_scheduler: bool = False,
                   on_ready: Any = None) -> None:
        calls.append({"host": host, "port": port, "token": token, "scheduler": with_scheduler})
        on_ready(f"http://{host}:{port}/" + (f"?token={token}" if token else ""))

    monkeypatch.setattr("segloop.web.app.serve", fake_serve)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SEGLOOP_UI_TOKEN", raising=False)
    return calls


def test_ui_on_loopback_needs_no_token(started: list[dict[str, Any]]) -> None:
    result = CliRunner().invoke(app, ["ui"])
    assert result.exit_code == 0, result.output
    assert started == [{"host": "127.0.0.1", "port": 8765, "token": None, "scheduler": False}]
    assert "http://127.0.0.1:8765/" in result.output and "token" not in result.output


def test_serve_elsewhere_prints_a_fresh_token_or_uses_the_env_one(started: list[dict[str, Any]],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--port", "9000"])
    assert result.exit_code == 0, result.output
    token = started[0]["token"]
    assert started[0]["scheduler"] and token and len(token) >= 24
    assert f"?token={token}" in result.output.replace("\n", "")
    monkeypatch.setenv("SEGLOOP_UI_TOKEN", "from-the-environment")
    CliRunner().invoke(app, ["ui", "--host", "0.0.0.0"])
    assert started[1]["token"] == "from-the-environment"
