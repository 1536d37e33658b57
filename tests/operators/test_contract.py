"""The operator contract: every registered node type, on edge-case inputs, fails clearly or succeeds.

Each node type in ``NODE_TYPES`` (not a hand-written list: a new type must be added to
``CASES`` or this file fails) runs in a real pipeline on a DuckDB file, reading a source
table with 0 rows, 1 row, and 1 row without a column the node needs. What a user notices:

* 0 rows: the run succeeds with an empty output, or the node fails with a sentence that
  names it (a ``SegloopError``), never a crash;
* 1 row: the same;
* a missing column: the node fails with an error that names the node and the column.

The pipeline runs with ``debug`` on, so an exception that is not a ``SegloopError`` (an
operator bug: KeyError, ValueError, a raw database error) propagates and fails the test
instead of becoming a "run with --debug" message. The Segment node sends to a fake
transport (Segment's cloud is the only fake).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pytest

from segloop.operators import NODE_TYPES
from segloop.pipeline import Pipeline, RunResult
from segloop.warehouses import DuckDBConfig, Warehouse
from tests.segment.send.fake_segment import FakeSegment

ROW = {
    "user_id": "u1",
    "timestamp": datetime(2024, 3, 1, 12, 0),
    "received_at": datetime(2024, 3, 1, 12, 0, 5),
    "revenue": 25.0,
    "event": "Order Completed",
    "product_id": "p1",
    "score": 0.5,
}
TYPES = {
    "user_id": pa.string(), "timestamp": pa.timestamp("us"),
    "received_at": pa.timestamp("us"), "revenue": pa.float64(),
    "event": pa.string(), "product_id": pa.string(), "score": pa.float64(),
}


@dataclass(frozen=True)
class Case:
    """A minimal valid node of one type, and the column to take away from its input."""

    node: str  # YAML of the node's own keys (indented four spaces)
    required: str  # a column the node cannot do without
    source_table: str = "data"  # segment_source reads a Segment-shaped schema: `tracks`
    reads_input: bool = True
    output: str = "contract__node"  # the table whose rows follow the input's
    # Without the column the node still does its job, less well, and says so in a warning
    # naming the column (segment_source exposes a table without its time window).
    missing_warns: bool = False


CASES: dict[str, Case] = {
    "sql": Case("    sql: select user_id, revenue from data\n", "revenue"),
    "rfm": Case("    customer_id: user_id\n    amount: revenue\n    as_of: 2024-03-31\n", "revenue"),
    "clusters": Case("    columns: [revenue, score]\n    k: 2\n", "score"),
    "clv": Case("    as_of: 2024-03-31\n", "revenue"),
    "propensity": Case("    cutoff: 2024-02-15\n", "event"),
    "recommend": Case("    event: event\n", "product_id"),
    "segment": Case("    write_key: ${SEGLOOP_TEST_WRITE_KEY}\n    call: track\n    event: Scored\n"
                    "    customer_id: user_id\n    properties: [score]\n", "score"),
    # `data` is not a Segment node with a holdout: a clear failure (after the columns).
    "lift": Case("    holdout_of: data\n    customer_id: user_id\n    timestamp: timestamp\n", "timestamp"),
    "segment_source": Case("    schema: src\n    since: 3650d\n", "received_at", source_table="tracks",
                           reads_input=False, output="contract__node__tracks", missing_warns=True),
}


@pytest.fixture(autouse=True)
def write_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGLOOP_TEST_WRITE_KEY", "wk-contract")


def pipeline_yaml(node_type: str, case: Case) -> str:
    head = "name: contract\nnodes:\n"
    if not case.reads_input:
        return head + f"  node:\n    type: {node_type}\n" + case.node
    return (head + "  data:\n    type: sql\n    sql: select * from src.data\n"
            + f"  node:\n    type: {node_type}\n    input: data\n" + case.node)


def source(rows: int, drop: str | None = None) -> pa.Table:
    columns = {name: pa.array([ROW[name]] * rows, type=kind) for name, kind in TYPES.items() if name != drop}
    return pa.table(columns)


def run(make_workspace, node_type: str, table: pa.Table) -> tuple[Path, RunResult]:
    case = CASES[node_type]
    root = make_workspace({"contract": pipeline_yaml(node_type, case)})
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        wh.create_table(case.source_table, table, schema="src")
    pipeline = Pipeline.load(root / "pipelines" / "contract.yml")
    # `debug`: an unexpected exception type propagates out of run() and fails the test.
    result = pipeline.run(options={"debug": True, "segment_transport": FakeSegment()})
    return root, result


def output_rows(root: Path, table: str) -> int | None:
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        if table not in wh.list_tables():
            return None
        return int(wh.sql(f"select count(*) as n from {table}").to_pyarrow()["n"][0].as_py())


def assert_clear_failure(result: RunResult) -> str:
    node = result.node("node")
    assert node.status == "failed" and node.error, node
    assert node.error.startswith("node `node`: "), node.error
    assert "Traceback" not in node.error and "--debug" not in node.error, node.error
    return node.error


def test_every_registered_type_has_a_case() -> None:
    assert set(CASES) == set(NODE_TYPES), "add the new node type to CASES"


@pytest.mark.parametrize("node_type", sorted(NODE_TYPES))
@pytest.mark.parametrize("rows", [0, 1])
def test_few_rows_succeed_or_fail_clearly(make_workspace, node_type: str, rows: int) -> None:
    root, result = run(make_workspace, node_type, source(rows))
    node = result.node("node")
    if node.status != "success":
        assert_clear_failure(result)
        return
    kept = output_rows(root, CASES[node_type].output)
    if kept is None:  # no output table: the Segment action, which reports what it sent
        assert node.metrics.get("sent") == rows, node.metrics
        return
    if rows == 0:
        assert kept == 0


@pytest.mark.parametrize("node_type", sorted(NODE_TYPES))
def test_a_missing_column_is_named(make_workspace, node_type: str) -> None:
    case = CASES[node_type]
    _, result = run(make_workspace, node_type, source(1, drop=case.required))
    if case.missing_warns:
        node = result.node("node")
        assert node.status == "success", node.error
        assert any(f"`{case.required}`" in w for w in node.warnings), node.warnings
        return
    error = assert_clear_failure(result)
    assert case.required in error, error
