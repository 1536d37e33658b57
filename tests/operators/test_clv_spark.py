"""Node `clv` on Spark (local mode): summary in Spark SQL, fit on collapsed rows, scored in the executors.

The same CDNOW transactions on DuckDB and on Spark give the same predictions and intervals
(within 1e-6) and the same holdout card, while on Spark no per-customer row of the output
reaches the driver. Marked slow: a local Spark takes ~20 s to start on two cores; skipped
without pyspark or Java 17+.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from segloop.operators.base import NodeOutput, RunContext, RunScope
from segloop.operators.clv import INTERVAL_COLUMNS, ClvConfig, ClvOperator
from segloop.warehouses import Warehouse
from tests.operators.test_clv import CDNOW_KEYS, cdnow_transactions
from tests.requirements import require_java, require_module

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # Spark local: minutes on 2 busy cores

PREDICTIONS = ("recency", "tenure", "monetary_value", "p_alive", "expected_purchases", "expected_spend",
               "predicted_clv", "clv_percentile", *INTERVAL_COLUMNS)


@pytest.fixture(scope="module")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Warehouse]:
    require_module("pyspark", "pip install 'segloop[pyspark]'")
    require_java(17)
    from segloop.warehouses.pyspark import PySparkConfig

    folder = tmp_path_factory.mktemp("clv-spark")
    config = PySparkConfig(master="local[2]", metastore="in-memory", warehouse_dir=str(folder / "spark-warehouse"),
                           conf={"spark.sql.shuffle.partitions": "2"})
    with Warehouse.connect(config, folder, "spark") as wh:
        wh.create_table("cdnow", cdnow_transactions())
        yield wh


def run(wh: Warehouse, **keys: Any) -> tuple[NodeOutput, dict[str, list[Any]], int]:
    """The node's output as the engine writes it (``replace_table``), read back by customer,
    and the rows the node itself pulled into Python."""
    config = ClvConfig.model_validate({"type": "clv", "input": "tx", **CDNOW_KEYS, **keys})
    before = wh.rows_fetched
    with RunScope() as shared:
        ctx = RunContext(warehouse=wh, pipeline="p", node="ltv", run_id="r1", shared=shared)
        output = ClvOperator(config).run({"tx": wh.table("cdnow")}, ctx)
        pulled = wh.rows_fetched - before
        wh.replace_table("p__ltv", output.table)
        for suffix, extra in output.extra.items():
            wh.replace_table(f"p__ltv__{suffix}", extra, count=False)
    table = wh.to_arrow(wh.table("p__ltv")).sort_by("customer")
    return output, table.to_pydict(), pulled


def test_same_predictions_intervals_and_holdout_card_as_duckdb(spark: Warehouse) -> None:
    duck = Warehouse.duckdb()
    duck.create_table("cdnow", cdnow_transactions())
    # Fitted up to the data's last day; the card refits 39 weeks earlier (1997-09-30).
    on_duck, duck_rows, _ = run(duck, validate=True, as_of="1998-06-30")
    on_spark, spark_rows, _ = run(spark, validate=True, as_of="1998-06-30")

    assert on_spark.metrics["scoring"] == "spark"
    assert spark_rows["customer"] == duck_rows["customer"] and len(duck_rows["customer"]) == 2357
    assert spark_rows["frequency"] == duck_rows["frequency"]
    assert list(spark_rows) == list(duck_rows)  # the same columns, in the same order
    for column in PREDICTIONS:
        a = np.array(spark_rows[column], dtype=np.float64)
        b = np.array(duck_rows[column], dtype=np.float64)
        assert np.array_equal(np.isnan(a), np.isnan(b)), column
        assert np.nanmax(np.abs(a - b)) <= 1e-6, column
    assert np.nanmax(duck_rows["value_p90"]) > 100  # the intervals are there, not all zero
    # The same fit (collapsed in Spark SQL vs DuckDB) and the same card on the holdout.
    m, d = on_spark.metrics, on_duck.metrics
    assert m["bgnbd"] == pytest.approx(d["bgnbd"], rel=1e-9)
    assert m["predicted_clv_total"] == pytest.approx(d["predicted_clv_total"], rel=1e-9)
    for key in ("holdout_customers", "holdout_purchases", "purchases_total_p10", "purchases_total_p90"):
        assert m[key] == d[key], key
    for key in ("holdout_spearman", "holdout_baseline_spearman", "holdout_gini", "holdout_decile_error",
                "holdout_interval_coverage", "holdout_predicted_spend"):
        assert m[key] == pytest.approx(d[key], rel=1e-9, abs=1e-12), key
    deciles = spark.to_arrow(spark.table("p__ltv__holdout")).sort_by("band").to_pydict()
    assert deciles["customers"] == on_duck.extra["holdout"]["customers"].to_pylist()
    assert deciles["predicted_spend"] == pytest.approx(on_duck.extra["holdout"]["predicted_spend"].to_pylist())
    assert not [t for t in spark.list_tables() if t.startswith("_segloop_")]  # scratch dropped with the run


def test_scores_stay_in_spark(spark: Warehouse) -> None:
    """Only the collapsed (x, t_x, T) and (x, m) rows reach the driver, never the customers."""
    output, rows, pulled = run(spark, validate=False)
    m = output.metrics
    assert len(rows["customer"]) == m["customers"] == 2357
    collapsed = m["bgnbd_unique_rows"] + m["gamma_gamma_customers"]  # at most that many (x, m) rows
    assert collapsed < m["customers"]
    assert pulled <= collapsed + 5  # + the totals and counts, one row each


def test_holdout_card_on_a_bounded_sample(spark: Warehouse, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past ``HOLDOUT_CUSTOMERS`` the card's rows come back as a sample of that size."""
    from segloop.operators import clv_spark

    monkeypatch.setattr(clv_spark, "HOLDOUT_CUSTOMERS", 500)
    output, _, _ = run(spark, validate=True, intervals=False, as_of="1998-06-30")
    m = output.metrics
    assert 350 <= m["holdout_sample"] <= 650  # Spark's sample: about the share asked for
    assert m["holdout_customers"] > 2000
    assert m["holdout_spearman"] > 0.3  # still the card of a model that ranks customers
