"""The Segment-node tests' shop, shared by test_segment_node.py, test_segment_holdout.py and
test_lift.py: a `scores` table in schema `src` that a `to_segment` node sends.

``scores_to_segment`` writes that pipeline's text (also for test_segment_node_removed.py,
test_segment_match.py, test_sync_kill.py, test_cli_workspace.py, test_run_interrupted.py,
bench/sync.py and bench/audience.py); ``to_segment_pipeline`` is its `track` call. The write
key is in the environment by the autouse ``write_key`` fixture (import it into the test
module); ``run_shop`` runs the pipeline with the fake Segment
(tests/segment/send/fake_segment.py) as the node's transport.
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


def scores_to_segment(*, name: str = "shop", key_env: str = WRITE_KEY_ENV, before: str = "", **keys: object) -> str:
    """Pipeline ``name``: node `scores` reads ``src.scores``, node `to_segment` sends it to Segment.

    `to_segment`'s write key is ``${key_env}``; ``keys`` are its other keys, in their order, each
    value written as it is (``call="identify", traits="[score]"``). ``before`` is the YAML of nodes
    ahead of `scores` (a `segment_source`). The text ends in `to_segment`'s last key, so a caller
    can append more of its keys.
    """
    settings = "".join(f"    {key}: {value}\n" for key, value in keys.items())
    return f"""\
name: {name}
nodes:
{before}  scores:
    type: sql
    sql: select * from src.scores
  to_segment:
    type: segment
    input: scores
    write_key: ${{{key_env}}}
{settings}"""


def to_segment_pipeline(event: str, properties: str) -> str:
    """Pipeline `shop`: node `scores` reads ``src.scores``, `to_segment` tracks ``event`` with ``properties``."""
    return scores_to_segment(call="track", event=event, customer_id="user_id", properties=properties)


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
