"""Node `recommend` on Apache Spark (local mode): the same recommendations as on DuckDB.

The node codes customers and items, writes its scratch tables and streams its output with
Spark SQL exactly as elsewhere (Spark-native ALS is issue 20's later step). Marked slow:
starting a local Spark takes ~20 s on two cores; skipped without pyspark or Java 17+.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from segloop.warehouses import Warehouse
from segloop.warehouses.pyspark import PySparkConfig
from tests.operators.test_recommend_postgres import run_on
from tests.requirements import require_java, require_module

# Slow: ~25 Spark jobs (scratch tables, chunks, the streamed output), seconds each on a
# shared two-core machine; the timeout is a hang guard, above the suite's 300 s default.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def test_same_recommendations_on_spark(tmp_path: Path) -> None:
    require_module("pyspark", "pip install 'segloop[pyspark]'")
    require_java(17)
    config = PySparkConfig(master="local[2]", metastore="in-memory", warehouse_dir=str(tmp_path / "spark-warehouse"),
                           conf={"spark.sql.shuffle.partitions": "2"})
    with Warehouse.connect(config, tmp_path, "spark") as spark:
        spark_metrics, spark_main, spark_long = run_on(spark)
        assert not [t for t in spark.con.list_tables(database=spark.schema) if "scratch" in t]
    duck_metrics, duck_main, duck_long = run_on(Warehouse.duckdb())
    assert spark_metrics["pairs"] == duck_metrics["pairs"] and spark_metrics["customers"] == duck_metrics["customers"]
    assert spark_metrics["ndcg_at_10"] == pytest.approx(duck_metrics["ndcg_at_10"], abs=1e-3)
    assert [r["recommended"] for r in spark_main] == [r["recommended"] for r in duck_main]
    for a, b in zip(spark_main, duck_main, strict=True):
        assert orjson.loads(a["scores"]) == pytest.approx(orjson.loads(b["scores"]), abs=1e-3)
    assert len(spark_long) == len(duck_long)
