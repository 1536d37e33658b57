"""The demo's SQL and RFM nodes on Apache Spark (local mode, Ibis's pyspark backend).

Marked slow: starting a local Spark takes ~20 s on two cores. Needs the [pyspark] extra and
Java 17+; without them the test is skipped and says why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from segloop.demo import generate
from segloop.pipeline import Pipeline
from tests.requirements import require_java, require_module

pytestmark = pytest.mark.slow

DEMO_PIPELINE = Path(__file__).resolve().parents[2] / "examples" / "demo" / "pipelines" / "demo.yml"
RFM_COLUMNS = ["user_id", "recency_days", "frequency", "monetary", "last_purchase_at",
               "r_score", "f_score", "m_score", "rfm_score", "segment"]


def portable_demo_pipeline() -> str:
    """The demo pipeline's rfm node and its upstream nodes, their SQL marked as DuckDB's dialect.

    Spark reads "timestamp" as a string literal; `dialect: duckdb` lets segloop translate
    the query to Spark SQL, which is what a user moving the demo to Spark would write.
    """
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
        if node["type"] == "sql":
            node["dialect"] = "duckdb"
        if node["type"] == "segment_source":  # the demo's stitching runs on Spark too
            node["tables"] = ["order_completed"]
    data["nodes"] = nodes
    return yaml.safe_dump(data, sort_keys=False)


def workspace(root: Path, warehouse_yml: str) -> Path:
    (root / "pipelines").mkdir(parents=True)
    (root / "segloop.yml").write_text("warehouses:\n  default:\n" + warehouse_yml)
    (root / "pipelines" / "demo.yml").write_text(portable_demo_pipeline())
    return root


def rfm_rows(pipeline: Pipeline) -> list[dict[str, Any]]:
    with pipeline.connect() as wh:
        table = wh.table("demo__rfm").select(*RFM_COLUMNS).order_by("user_id")
        rows = wh.to_arrow(table).to_pylist()
    for row in rows:
        row["monetary"] = round(row["monetary"], 6)
        row["last_purchase_at"] = row["last_purchase_at"].replace(tzinfo=None)
    return rows


def test_demo_sql_and_rfm_give_the_same_segments_on_spark_and_duckdb(tmp_path: Path) -> None:
    require_module("pyspark", "pip install 'segloop[pyspark]'")
    require_java(17)
    spark_yml = (f"    type: pyspark\n    master: local[2]\n    metastore: in-memory\n"
                 f"    warehouse_dir: {tmp_path / 'spark-warehouse'}\n"
                 "    conf:\n      spark.sql.shuffle.partitions: '2'\n")
    # Spark writes each table as a job (seconds each), so only the tables the demo reads:
    # orders, and what the `shop` node stitches their ids with (identity: stitch).
    tables, _ = generate(customers=250, days=200, seed=21, split_ids=True)
    results = {}
    for label, yml in (("duckdb", "    type: duckdb\n"), ("pyspark", spark_yml)):
        pipeline = Pipeline.load(workspace(tmp_path / label, yml) / "pipelines" / "demo.yml")
        with pipeline.connect() as wh:
            assert wh.backend == label
            for name in ("order_completed", "tracks", "identifies", "aliases"):
                wh.create_table(name, tables[name], schema="demo_shop")
        run = pipeline.run()
        assert run.ok, [n.error for n in run.nodes]
        results[label] = rfm_rows(pipeline)
    assert len(results["duckdb"]) > 200
    assert results["pyspark"] == results["duckdb"]
    assert len({row["segment"] for row in results["pyspark"]}) >= 7
