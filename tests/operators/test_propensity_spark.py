"""Node `propensity` on Spark (local mode): features in Spark SQL, the model applied in the executors.

Marked slow: a local Spark takes ~20 s to start on two cores. Needs the [pyspark] extra and
Java 17+; without them the test is skipped and says why.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segloop.errors import NodeError
from segloop.models.scoring import spearman
from segloop.operators.base import NodeOutput, RunContext, RunScope
from segloop.operators.propensity import PropensityConfig, PropensityOperator
from segloop.warehouses import Warehouse
from tests.operators.spark_driver import bare_python
from tests.operators.test_propensity import synthetic_events
from tests.requirements import require_java, require_module

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # Spark local: minutes on 2 busy cores
# Spark's Python workers run the model: in local mode segloop gives them this Python (with
# segloop and scikit-learn) unless PYSPARK_PYTHON says otherwise (warehouses/pyspark.py).


def run(wh: Warehouse, shared: RunScope) -> NodeOutput:
    config = PropensityConfig.model_validate({"type": "propensity", "input": "ev"})
    ctx = RunContext(warehouse=wh, pipeline="p", node="buyers", run_id="r1", shared=shared)
    return PropensityOperator(config).run({"ev": wh.table("events")}, ctx)


def test_spark_scores_in_its_executors_and_agrees_with_duckdb(tmp_path: Path) -> None:
    require_module("pyspark", "pip install 'segloop[pyspark]'")
    require_java(17)
    from segloop.warehouses.pyspark import PySparkConfig

    events = synthetic_events(1500)
    duck = Warehouse.duckdb()
    duck.create_table("events", events)
    config = PySparkConfig(type="pyspark", master="local[2]", metastore="in-memory",
                           warehouse_dir=str(tmp_path / "spark-warehouse"),
                           conf={"spark.sql.shuffle.partitions": "2"})
    spark = Warehouse.connect(config, tmp_path)
    spark.create_table("events", events)

    with RunScope() as duck_scope:
        on_duck = run(duck, duck_scope)
        duck_rows = duck.to_arrow(on_duck.table)
    fetched = spark.rows_fetched
    with RunScope() as spark_scope:
        on_spark = run(spark, spark_scope)
        pulled = spark.rows_fetched - fetched
        spark_rows = spark.to_arrow(on_spark.table)
    m = on_spark.metrics
    # Only the training and validation rows came to the driver, and the distinct purchase
    # summaries BG/NBD sets the level from; the scores were computed and written by Spark
    # (every customer, none fetched).
    assert m["scoring"] == "spark" and on_duck.metrics["scoring"] == "chunks"
    assert m["clv_summary_rows"] == on_duck.metrics["clv_summary_rows"]
    assert pulled <= (m["training_sample"] + m["validation_sample"] + m["features"] + 10
                      + m["clv_summary_rows"])
    assert m["scored_customers"] == on_duck.metrics["scored_customers"] == spark_rows.num_rows
    # The same features (Spark SQL vs DuckDB) and the same model: the same quality.
    for key in ("training_positives", "validation_positives", "features"):
        assert m[key] == on_duck.metrics[key]
    assert abs(m["auc"] - on_duck.metrics["auc"]) <= 0.02
    assert abs(m["mean_probability"] - on_duck.metrics["mean_probability"]) <= 0.01
    duck_by_id = dict(zip(duck_rows["user_id"].to_pylist(), duck_rows["percentile"].to_pylist(), strict=True))
    ids = spark_rows["user_id"].to_pylist()
    assert set(ids) == set(duck_by_id)
    rho = spearman(spark_rows["percentile"].to_numpy(), np.array([duck_by_id[i] for i in ids]))
    assert rho > 0.99
    assert not [t for t in spark.list_tables() if t.startswith("_segloop_")]  # dropped with the run


def test_executors_without_segloop_get_a_message_naming_pyspark_python(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The executors apply the model in Python: when theirs cannot (segloop and scikit-learn
    missing), the node's error says so and names PYSPARK_PYTHON."""
    require_module("pyspark", "pip install 'segloop[pyspark]'")
    require_java(17)
    from segloop.warehouses.pyspark import PySparkConfig

    config = PySparkConfig(type="pyspark", master="local[2]", metastore="in-memory",
                           warehouse_dir=str(tmp_path / "spark-warehouse"),
                           conf={"spark.sql.shuffle.partitions": "2"})
    spark = Warehouse.connect(config, tmp_path)
    spark.create_table("events", synthetic_events(300))
    monkeypatch.setattr(spark.session.sparkContext, "pythonExec", bare_python(tmp_path))  # type: ignore[attr-defined]
    with RunScope() as scope, pytest.raises(NodeError, match="scoring in Spark failed") as failure:
        run(spark, scope)
    assert "PYSPARK_PYTHON" in str(failure.value) and "`buyers`" in str(failure.value)
    assert not [t for t in spark.list_tables() if t.startswith("_segloop_")]  # dropped with the run
