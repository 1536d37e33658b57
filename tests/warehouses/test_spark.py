"""What Spark does its own way, on local Spark (Ibis's pyspark backend), next to DuckDB.

The whole demo on Spark is in test_demo_engines.py; here: the demo's SQL as written (its
`"timestamp"` is a column, not a string), the products view from awkward JSON, and the
Segment sync state, whose DELETE and UPDATE Spark's Parquet tables do not have, over
several runs. Marked slow: local Spark starts once per test run (tests/warehouses/engines.py).
Needs the [pyspark] extra and Java 17+; without them the tests are skipped and say why.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml

from segloop.demo import generate
from segloop.pipeline import Pipeline
from segloop.warehouses import Warehouse
from tests.segment.send.fake_segment import FakeSegment
from tests.warehouses.engines import NewWarehouse
from tests.warehouses.test_segment_source import (
    EXPECTED_ITEMS,
    ORDERS,
    PRODUCTS_PIPELINE,
    item_rows,
)

pytestmark = pytest.mark.slow

DEMO_PIPELINE = Path(__file__).resolve().parents[2] / "examples" / "demo" / "pipelines" / "demo.yml"
RFM_COLUMNS = ["user_id", "recency_days", "frequency", "monetary", "last_purchase_at",
               "r_score", "f_score", "m_score", "rfm_score", "segment"]


def demo_rfm_pipeline() -> str:
    """The demo pipeline's rfm node and the nodes upstream of it, as they are written."""
    from segloop.config import parse_pipeline

    config = parse_pipeline(DEMO_PIPELINE.read_text(), DEMO_PIPELINE)
    needed: set[str] = set()
    frontier = ["rfm"]
    while frontier:
        name = frontier.pop()
        needed.add(name)
        frontier.extend(up for up in config.upstream_of(name) if up not in needed)
    data = yaml.safe_load(DEMO_PIPELINE.read_text())
    nodes = {k: v for k, v in data["nodes"].items() if k in needed}
    assert {v["type"] for v in nodes.values()} <= {"sql", "rfm", "segment_source"}, nodes
    for node in nodes.values():
        if node["type"] == "segment_source":  # the demo's stitching runs on Spark too
            node["tables"] = ["order_completed"]
    data["nodes"] = nodes
    assert '"timestamp"' in nodes["orders"]["sql"]  # what Spark alone read as a string
    return yaml.safe_dump(data, sort_keys=False)


def workspace(root: Path, warehouse: str, pipelines: dict[str, str]) -> Path:
    (root / "pipelines").mkdir(parents=True)
    (root / "segloop.yml").write_text("warehouses:\n  default:\n" + warehouse)
    for name, text in pipelines.items():
        (root / "pipelines" / f"{name}.yml").write_text(text)
    return root


def engines(tmp_path: Path, spark_engine: NewWarehouse, duckdb_engine: NewWarehouse,
            pipelines: dict[str, str]) -> dict[str, Path]:
    return {label: workspace(tmp_path / label, new(label), pipelines)
            for label, new in (("duckdb", duckdb_engine), ("pyspark", spark_engine))}


def rfm_rows(pipeline: Pipeline) -> list[dict[str, Any]]:
    with pipeline.connect() as wh:
        table = wh.table("demo__rfm").select(*RFM_COLUMNS).order_by("user_id")
        rows = wh.to_arrow(table).to_pylist()
    for row in rows:
        row["monetary"] = round(row["monetary"], 6)
    return rows


def test_demo_sql_and_rfm_as_written_give_the_same_segments_on_spark_and_duckdb(
    tmp_path: Path, spark_engine: NewWarehouse, duckdb_engine: NewWarehouse
) -> None:
    # Spark writes each table as a job (seconds each), so only the tables the demo reads:
    # orders, and what the `shop` node stitches their ids with (identity: stitch).
    tables, _ = generate(customers=250, days=200, seed=21, split_ids=True)
    results = {}
    for label, root in engines(tmp_path, spark_engine, duckdb_engine, {"demo": demo_rfm_pipeline()}).items():
        pipeline = Pipeline.load(root / "pipelines" / "demo.yml")
        with pipeline.connect() as wh:
            assert wh.backend == label
            for name in ("order_completed", "tracks", "identifies", "aliases"):
                wh.create_table(name, tables[name], schema="demo_shop")
        run = pipeline.run()
        assert run.ok, [n.error for n in run.nodes]
        assert "`timestamp`" in run.node("orders").metrics["query"] or label == "duckdb"
        results[label] = rfm_rows(pipeline)
    assert len(results["duckdb"]) > 200
    assert results["pyspark"] == results["duckdb"]
    assert len({row["segment"] for row in results["pyspark"]}) >= 7


def test_products_json_becomes_the_same_rows_on_spark(tmp_path: Path, spark_engine: NewWarehouse) -> None:
    # Numbers as ids and prices, an empty array, NULL, a product without an id: as on DuckDB.
    root = workspace(tmp_path, spark_engine("products"), {"shop": PRODUCTS_PIPELINE})
    pipeline = Pipeline.load(root / "pipelines" / "shop.yml")
    with pipeline.connect() as wh:
        wh.create_table("order_completed", ORDERS, schema="web")
    result = pipeline.run()
    assert result.ok, [n.error for n in result.nodes]
    assert result.node("src").metrics["tables"] == ["order_completed", "order_completed_products"]
    with pipeline.connect() as wh:
        assert item_rows(wh, "shop__items") == EXPECTED_ITEMS
        assert wh.relation_kind("shop__src__order_completed_products") == "view"


SYNC_PIPELINE = """\
name: sync
nodes:
  people:
    type: sql
    sql: select id as user_id, plan, "seats" from crm.accounts
  to_segment:
    type: segment
    input: people
    write_key: ${SEGMENT_WRITE_KEY}
    call: identify
    customer_id: user_id
    traits: [plan, seats]
"""


def accounts(changed: int = 0) -> pa.Table:
    plans = ["pro" if i < changed else "free" for i in range(40)]
    return pa.table({"id": [f"u{i:02d}" for i in range(40)], "plan": plans,
                     "seats": pa.array([i % 7 for i in range(40)], pa.int64()),
                     "updated_at": [datetime(2026, 5, 1)] * 40})


def test_sync_state_sends_only_changes_run_after_run_as_on_duckdb(
    tmp_path: Path, spark_engine: NewWarehouse, duckdb_engine: NewWarehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Spark's Parquet tables have no DELETE or UPDATE; the state is folded run after run anyway.
    monkeypatch.setenv("SEGMENT_WRITE_KEY", "wk-sync")
    sent: dict[str, list[list[dict[str, Any]]]] = {}
    for label, root in engines(tmp_path, spark_engine, duckdb_engine, {"sync": SYNC_PIPELINE}).items():
        pipeline = Pipeline.load(root / "pipelines" / "sync.yml")
        sent[label] = []
        for step in ("first", "unchanged", "3 changed", "reset"):
            with pipeline.connect() as wh:
                wh.create_table("accounts", accounts(changed=3 if step in ("3 changed", "reset") else 0),
                                schema="crm")
            if step == "reset":
                pipeline.reset("to_segment")
            fake = FakeSegment()
            result = pipeline.run(options={"segment_transport": fake})
            assert result.ok, (label, step, [n.error for n in result.nodes])
            sent[label].append(sorted(({k: m[k] for k in ("messageId", "userId", "traits")}
                                       for m in fake.delivered()), key=lambda m: m["userId"]))
    assert [len(run) for run in sent["pyspark"]] == [40, 0, 3, 40]
    assert sent["pyspark"] == sent["duckdb"]
    first, _, changed, after_reset = sent["pyspark"]
    assert {m["userId"]: m["traits"]["plan"] for m in changed} == {"u00": "pro", "u01": "pro", "u02": "pro"}
    assert {m["messageId"] for m in after_reset}.isdisjoint(m["messageId"] for m in first + changed)


def test_delete_and_update_rewrite_a_parquet_table_like_sql_says(spark_engine: NewWarehouse, tmp_path: Path) -> None:
    from segloop.warehouses import PySparkConfig

    block = yaml.safe_load("x:\n" + spark_engine("dml"))["x"]
    rows = pa.table({"k": ["a", "b", None, "a", "c"], "n": pa.array([1, 2, 3, 1, None], pa.int64())})
    with Warehouse.connect(PySparkConfig(**block), tmp_path) as wh:
        wh.create_table("t", rows)
        q = wh.qualified("t")

        def table() -> list[tuple[Any, ...]]:
            return sorted(((r["k"], r["n"]) for r in wh.table("t").to_pyarrow().to_pylist()), key=str)

        wh.raw_sql(f"UPDATE {q} SET n = n * 10 WHERE k = 'a'")  # NULL k: not matched, kept as it is
        assert table() == sorted([("a", 10), ("b", 2), (None, 3), ("a", 10), ("c", None)], key=str)
        wh.raw_sql(f"DELETE FROM {q} WHERE n > 5")  # NULL n: not matched, kept
        assert table() == sorted([("b", 2), (None, 3), ("c", None)], key=str)
        wh.raw_sql(f"DELETE FROM {q}")
        assert table() == []
        assert "t__segloop_rewrite" not in wh.list_tables()


def test_the_sessions_temporary_views_are_not_tables_of_a_schema(spark_engine: NewWarehouse, tmp_path: Path) -> None:
    """Spark lists a session's temporary views (Ibis's uploads) under every schema; a source
    schema listed with them made `segment_source` read tables that are not there."""
    from segloop.warehouses import PySparkConfig

    block = yaml.safe_load("x:\n" + spark_engine("temp_views"))["x"]
    with Warehouse.connect(PySparkConfig(**block), tmp_path) as wh:
        wh.create_table("kept", pa.table({"k": ["a"]}))
        wh.con._session.createDataFrame([("a",)], ["k"]).createOrReplaceTempView("segloop_test_temp")  # type: ignore[attr-defined]
        listed = wh.list_tables()
        assert "kept" in listed and "segloop_test_temp" not in listed
        assert not any(name.startswith("ibis_pyarrow_memtable") for name in listed)
