"""The Segment-node tests' shop, shared by test_segment_node.py, test_segment_holdout.py and
test_lift.py: a `scores` table in schema `src` that a `to_segment` node sends.

``to_segment_pipeline`` writes the pipeline's first two nodes (tests add keys to
`to_segment` and more nodes below it); the write key is in the environment by the autouse
``write_key`` fixture (import it into the test module); ``run_shop`` runs the pipeline with
the fake Segment (tests/segment/send/fake_segment.py) as the node's transport.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from segloop.pipeline import Pipeline, RunResult
from segloop.warehouses import DuckDBConfig, Warehouse
from tests.segment.send.fake_segment import FakeSegment

WRITE_KEY_ENV = "SEGLOOP_TEST_WRITE_KEY"
WRITE_KEY = "wk-test-123"


def to_segment_pipeline(event: str, properties: str) -> str:
    """Pipeline `shop`: node `scores` reads ``src.scores``, `to_segment` tracks ``event`` with ``properties``."""
    return f"""\
name: shop
nodes:
  scores:
    type: sql
    sql: select * from src.scores
  to_segment:
    type: segment
    input: scores
    write_key: ${{{WRITE_KEY_ENV}}}
    call: track
    event: {event}
    customer_id: user_id
    properties: {properties}
"""


@pytest.fixture(autouse=True)
def write_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(WRITE_KEY_ENV, WRITE_KEY)
    return WRITE_KEY


def write_source(root: Path, scores: pa.Table, **more: pa.Table) -> None:
    """``src.scores`` (and any ``more`` tables into `src`, such as the lift's `tracks`)."""
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        for name, table in {"scores": scores, **more}.items():
            wh.create_table(name, table, schema="src")


def run_shop(root: Path, fake: FakeSegment, *, report: bool = True, **kwargs: Any) -> RunResult:
    """Run pipeline `shop`, its Segment nodes sending to ``fake`` (``report=False``: no report file)."""
    options: dict[str, Any] = {"segment_transport": fake}
    if not report:
        options["report"] = False
    return Pipeline.load(root / "pipelines" / "shop.yml").run(options=options, **kwargs)
