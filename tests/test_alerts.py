"""Alerts posted to a local Slack-style webhook receiver on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from segloop.config import Workspace, parse_pipeline
from segloop.errors import ConfigErrors
from segloop.pipeline import Pipeline
from tests.web.helpers import (
    DEMO_PIPELINE,
    RFM_PIPELINE,
    copy_workspace,
    demo_template,  # noqa: F401 - fixture
    fakes,  # noqa: F401 - fixture
)

WEBHOOK_ENV = "SEGLOOP_TEST_WEBHOOK"


class Receiver:
    """A webhook endpoint that records what it gets and answers with ``status``."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.requests.append({"path": self.path, "type": self.headers.get("content-type"),
                                          "json": json.loads(body)})
                self.send_response(receiver.status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/T000/B000/XXXX"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def texts(self) -> list[str]:
        return [r["json"]["text"] for r in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    rec = Receiver()
    monkeypatch.setenv(WEBHOOK_ENV, rec.url)
    yield rec
    rec.close()


def alerts_block(**settings: Any) -> str:
    lines = ["alerts:", f"  webhook: ${{{WEBHOOK_ENV}}}"]
    lines += [f"  {key}: {value}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def load(template: Path, tmp_path: Path, text: str, name: str = "shop") -> Pipeline:
    root = copy_workspace(template, tmp_path / "ws", {name: text})
    return Pipeline.load(name, Workspace.load(root))


def test_failure_posts_slack_json_naming_the_node(demo_template: Path, tmp_path: Path, receiver: Receiver) -> None:  # noqa: F811
    broken = RFM_PIPELINE.replace("demo_shop.order_completed", "demo_shop.no_such_table")
    result = load(demo_template, tmp_path, broken + alerts_block()).run()
    assert not result.ok
    (request,) = receiver.requests
    assert request["type"] == "application/json" and set(request["json"]) == {"text"}
    text = request["json"]["text"]
    assert f"pipeline `shop` run {result.run_id} failed: node `orders`" in text
    assert "no_such_table" in text and "report.html" in text


def test_successful_run_and_dry_run_send_nothing(demo_template: Path, tmp_path: Path, receiver: Receiver) -> None:  # noqa: F811
    pipeline = load(demo_template, tmp_path, RFM_PIPELINE + alerts_block(rejected_share=0.01, input_drop=0.1))
    assert pipeline.run().ok
    broken = RFM_PIPELINE.replace("demo_shop.order_completed", "demo_shop.no_such_table")
    (pipeline.file).write_text(broken + alerts_block())  # type: ignore[union-attr]
    assert not Pipeline.load("shop", pipeline.workspace).run(dry_run=True).ok
    assert receiver.requests == []


def test_drop_of_input_rows_vs_previous_run(demo_template: Path, tmp_path: Path, receiver: Receiver) -> None:  # noqa: F811
    pipeline = load(demo_template, tmp_path, RFM_PIPELINE + alerts_block(input_drop=0.5))
    first = pipeline.run()
    full = first.node("orders").rows or 0
    smaller = RFM_PIPELINE.replace("order_completed", "order_completed where revenue > 400")
    pipeline.file.write_text(smaller + alerts_block(input_drop=0.5))  # type: ignore[union-attr]
    second = Pipeline.load("shop", pipeline.workspace).run()
    kept = second.node("orders").rows or 0
    assert 0 < kept < full * 0.5  # the data really dropped by more than the threshold
    (text,) = receiver.texts()
    assert f"input node `orders` has {kept:,} rows" in text
    assert f"fewer than the {full:,} of run {first.run_id}" in text
    assert "rfm" not in text.split("input node")[1].split("rows")[0]  # only input nodes are compared


def test_rejected_share_over_threshold(demo_template: Path, tmp_path: Path, receiver: Receiver, fakes: None) -> None:  # noqa: F811
    quiet = load(demo_template, tmp_path / "a", DEMO_PIPELINE + alerts_block(rejected_share=0.5), "demo")
    assert quiet.run().ok and receiver.requests == []
    loud = load(demo_template, tmp_path / "b", DEMO_PIPELINE + alerts_block(rejected_share=0.05), "demo")
    result = loud.run()
    metrics = result.node("to_segment").metrics
    share = metrics["rejected"] / metrics["rows"]
    assert 0.05 < share < 0.5
    (text,) = receiver.texts()
    assert f"node `to_segment` rejected {metrics['rejected']:,} of {metrics['rows']:,} rows ({share:.1%}" in text


def test_webhook_down_is_retried_once_logged_without_url_and_never_fails_the_run(
    demo_template: Path, tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture,  # noqa: F811
) -> None:
    receiver.status = 500
    broken = RFM_PIPELINE.replace("demo_shop.order_completed", "demo_shop.no_such_table")
    with caplog.at_level(logging.WARNING, logger="segloop"):
        result = load(demo_template, tmp_path, broken + alerts_block()).run()
    assert result.status == "failed" and result.report is not None  # the run's own outcome
    assert len(receiver.requests) == 2
    logged = caplog.text
    assert "did not accept the alert (HTTP 500)" in logged and WEBHOOK_ENV in logged
    assert receiver.url not in logged and "B000" not in logged


def test_webhook_must_be_a_secret_reference() -> None:
    with pytest.raises(ConfigErrors) as bad:
        parse_pipeline(RFM_PIPELINE + "alerts:\n  webhook: https://hooks.slack.com/services/T/B/X\n  bogus: 1\n", "p.yml")
    text = str(bad.value)
    assert "p.yml:14:" in text and "name an environment variable instead" in text
    assert "p.yml:15:" in text and "unknown key `bogus`" in text
