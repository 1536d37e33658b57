"""The propensity feature table under a small DuckDB `memory_limit`: built in parts, not failed.

DuckDB spills a GROUP BY's groups to disk, but not wide aggregate states: the feature query
(~40 aggregates per snapshot per customer) failed with "Out of Memory Error" once customers
x aggregates outgrew the warehouse's `memory_limit` (at 300,000 demo customers under 512 MiB).
The node now builds the table a share of the customers at a time when it would not fit.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from segloop.operators.base import NodeOutput, RunContext, RunScope
from segloop.operators.propensity import PropensityConfig, PropensityOperator
from segloop.warehouses import DuckDBConfig, Warehouse

CUSTOMERS = 70_000
SMALL_POOL = "48MiB"  # DuckDB's memory_limit: the unsplit feature query needs more


def shop(root: Path, memory_limit: str | None) -> Warehouse:
    """A DuckDB file of CUSTOMERS customers with 4 events each (orders, views, adds to cart over 200 days)."""
    config = DuckDBConfig(path=str(root / "shop.duckdb"), threads=2,
                          **({"memory_limit": memory_limit} if memory_limit else {}))
    wh = Warehouse.connect(config, root)
    if "events" not in wh.list_tables():
        wh.raw_sql(f"""
            CREATE TABLE events AS
            SELECT 'c' || c AS user_id,
                   TIMESTAMP '2026-06-01' - to_seconds((hash(c, e) % 17280000)::BIGINT) AS "timestamp",
                   ['Order Completed', 'Product Viewed', 'Product Added'][1 + (hash(e, c) % 3)::BIGINT] AS event,
                   CASE WHEN hash(e, c) % 3 = 0 THEN round((hash(c) % 9000) / 100.0 + 5, 2) END AS revenue
            FROM range({CUSTOMERS}) r(c), range(4) s(e)""")
    return wh


def run(wh: Warehouse) -> NodeOutput:
    config = PropensityConfig.model_validate({"type": "propensity", "input": "ev", "max_event_types": 0})  # 65 aggregates
    ctx = RunContext(warehouse=wh, pipeline="p", node="buyers", run_id="r1", shared=RunScope(),
                     memory_limit=50_000_000)  # Python: train on a sample, so the test stays fast
    return PropensityOperator(config).run({"ev": wh.table("events")}, ctx)


def scores(out: NodeOutput, wh: Warehouse) -> dict[str, float]:
    assert out.table is not None
    table: pa.Table = wh.to_arrow(out.table)
    return dict(zip(table["user_id"].to_pylist(), table["probability"].to_pylist(), strict=True))


@pytest.fixture(scope="module")
def unsplit(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float], dict]:
    """The node with DuckDB's default memory: one query, the reference scores."""
    root = tmp_path_factory.mktemp("parts")
    wh = shop(root, None)
    try:
        out = run(wh)
        return root, scores(out, wh), out.metrics
    finally:
        wh.close()


def test_a_small_duckdb_memory_limit_builds_the_features_in_parts_with_the_same_scores(
    unsplit: tuple[Path, dict[str, float], dict],
) -> None:
    root, reference, metrics = unsplit
    assert metrics["feature_queries"] == 1
    wh = shop(root, SMALL_POOL)
    try:
        out = run(wh)  # in one query: "Out of Memory Error ... (47.9 MiB/48.0 MiB used)"
        got = scores(out, wh)
    finally:
        wh.close()
    m = out.metrics
    assert m["feature_queries"] > 1
    # The same features, so the same customers, model and scores as the query in one piece.
    assert len(got) == len(reference) == m["scored_customers"] == CUSTOMERS
    assert got == pytest.approx(reference, abs=1e-12)
    assert m["auc"] == metrics["auc"] and m["training_sample"] == metrics["training_sample"]
