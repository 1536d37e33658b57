"""Segment's own library and segloop's client send the same rows to a local endpoint:
the messages must carry the same content (ids, timestamps and library context aside)."""

from __future__ import annotations

import datetime as dt
import gzip
import threading
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest

from segloop.segment import Client
from tests.requirements import require_module

analytics = require_module("segment.analytics", "pip install -e '.[dev]' (segment-analytics-python)")

ROWS = [
    {"user_id": "162514333", "iphone": 0.734, "apple_watch": 0.812},
    {"user_id": "99", "iphone": 0.1, "apple_watch": 0.0},
    {"user_id": "7", "iphone": 1, "apple_watch": None},
]
EXTRA = {
    "flag": True,
    "tier": "gold",
    "nested": {"a": [1, 2, {"b": "c"}]},
    "when": dt.datetime(2024, 3, 4, 5, 6, 7, tzinfo=dt.UTC),
    "price": Decimal("19.5"),
}


class _Recorder(BaseHTTPRequestHandler):
    batches: list[dict[str, Any]]

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        raw = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
        body = orjson.loads(raw)
        body["_auth"] = self.headers.get("Authorization")
        body["_path"] = self.path
        self.server.batches.append(body)  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "16")
        self.end_headers()
        self.wfile.write(b'{"success":true}')

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.batches = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", server.batches  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()
    thread.join(5)


def _send_all(client: Any) -> None:
    for row in ROWS:
        props = {"iphone": row["iphone"], "apple_watch": row["apple_watch"], **EXTRA}
        client.track(row["user_id"], "Sales Prediction", props, context={"source": "ml"})
        client.identify(row["user_id"], {"predicted_ltv": row["iphone"], **EXTRA})
        client.group(row["user_id"], "acme", {"plan": "pro"})
        client.page(row["user_id"], "Docs", "Install", {"path": "/install"})
        client.screen(anonymous_id="anon-" + row["user_id"], name="Home")
        client.alias("anon-" + row["user_id"], row["user_id"])


def _content(batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for body in batches:
        for msg in body["batch"]:
            # a copy without the nulls Segment's library sends for unset fields
            msg = {k: v for k, v in orjson.loads(orjson.dumps(msg)).items() if v is not None}
            for volatile in ("messageId", "timestamp"):
                assert msg.pop(volatile)
            assert msg["context"].pop("library")["name"] in ("segloop", "analytics-python")
            out.append(msg)
    return sorted(out, key=lambda m: orjson.dumps(m, option=orjson.OPT_SORT_KEYS))


def test_same_rows_give_the_same_messages(endpoint: tuple[str, list[dict[str, Any]]]) -> None:
    url, batches = endpoint
    theirs = analytics.Client("KEY", host=url, upload_interval=0.05)
    _send_all(theirs)
    theirs.flush()
    theirs.join()
    their_batches = list(batches)
    batches.clear()

    ours = Client("KEY", host=url, upload_interval=0.05)
    _send_all(ours)
    report = ours.shutdown()
    assert report.sent == 18 and report.lost == 0

    assert len(_content(their_batches)) == 18
    assert _content(batches) == _content(their_batches)
    # the same endpoint, credentials and envelope
    for body in batches + their_batches:
        assert body["_path"] == "/v1/batch" and body["writeKey"] == "KEY"
        assert body["_auth"] == their_batches[0]["_auth"]
