"""The report of the shipped demo pipeline (examples/demo) with the real Segment node.

The Segment node sends to a local receiver on 127.0.0.1 standing in for Segment; the
write key really goes out (in the Authorization header) and must still never be in the
report.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
from base64 import b64encode
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from segloop.config import Workspace
from segloop.pipeline import Pipeline
from tests.web.helpers import WRITE_KEY, demo_template  # noqa: F401 - fixture

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo"


class SegmentStandIn:
    """Answers 200 to /v1/batch like Segment, recording the messages and the auth header."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.auth: set[str] = set()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.headers.get("content-encoding") == "gzip":
                    import gzip

                    body = gzip.decompress(body)
                owner.messages.extend(json.loads(body).get("batch", []))
                owner.auth.add(self.headers.get("authorization", ""))
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"success": true}')

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def segment(monkeypatch: pytest.MonkeyPatch) -> Iterator[SegmentStandIn]:
    stand_in = SegmentStandIn()
    monkeypatch.setenv("SEGMENT_WRITE_KEY", WRITE_KEY)
    monkeypatch.setenv("SEGLOOP_ENDPOINT", stand_in.url)
    yield stand_in
    stand_in.close()


def test_demo_run_report_has_grid_and_send_results_and_no_write_key(
    demo_template: Path, tmp_path: Path, segment: SegmentStandIn, artifacts: Path,  # noqa: F811
) -> None:
    root = tmp_path / "ws"
    shutil.copytree(demo_template, root)
    shutil.copy(DEMO / "segloop.yml", root / "segloop.yml")
    shutil.copytree(DEMO / "pipelines", root / "pipelines", dirs_exist_ok=True)
    pipeline = Pipeline.load("demo", Workspace.load(root))
    result = pipeline.run()
    assert result.ok, [n.error for n in result.nodes]
    segment_nodes = [n for n in result.nodes if n.type == "segment"]
    assert segment_nodes and segment.messages
    assert sum(int(n.metrics.get("sent", 0)) for n in segment_nodes) == len(segment.messages)
    basic = b64encode(f"{WRITE_KEY}:".encode()).decode()
    assert f"Basic {basic}" in segment.auth  # the key really was used ...

    assert result.report is not None
    html = result.report.read_text()
    (artifacts / "demo-report.html").write_text(html)  # for people to look at
    assert WRITE_KEY not in html and basic not in html  # ... and is not in the report
    types = {n.type for n in result.nodes}
    assert {"rfm", "clv", "propensity", "clusters", "recommend", "segment"} <= types
    for kind in ("dag", "rfm-grid", "segment-sizes", "segment-send", "clv-distribution", "clv-holdout",
                 "propensity-distribution", "propensity-deciles", "propensity-reliability", "cluster-sizes", "recommend-metrics"):
        assert f'data-chart="{kind}"' in html, kind

    def section(node: str) -> str:
        return html.split(f'id="node-{node}"', 1)[1].split('id="node-', 1)[0]

    clusters = result.node("clusters")
    names = clusters.metrics["cluster_names"]
    assert len(names) == 4 and all(name in section("clusters") for name in names)
    assert "cluster profiles" in section("clusters") and 'data-chart="cluster-sizes"' in section("clusters")
    recommend = result.node("recommend").metrics
    for measure in ("precision@10", "recall@10", "ndcg@10", "coverage@10"):
        model, popular = (recommend[f"{measure.replace('@', '_at_')}"],
                          recommend[f"popular_{measure.replace('@', '_at_')}"])
        assert f"{measure}: model / baseline = {model / popular:.2f}x" in section("recommend"), measure
    for node in segment_nodes:
        sent = node.metrics["sent"]
        assert re.search(rf'data-label="sent" data-value="{sent}"', html)
        section = html.split(f'id="node-{node.name}"', 1)[1]
        assert '<pre class="payload">' in section
