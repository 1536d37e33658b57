"""How node outputs get into Spark: a DataFrame written by Spark, Arrow batches appended.

``PySparkWarehouse.write_dataframe`` (and ``replace_table`` given a DataFrame) has Spark
write what a node computed in Spark, with no row through the driver; a streamed output
(Arrow batches) is appended batch by batch straight from Arrow, columns matched by name.
Marked slow (local Spark); skipped without pyspark or Java 17+.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pytest

from segloop.warehouses import Warehouse
from tests.requirements import require_java, require_module

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Warehouse]:
    require_module("pyspark", "pip install 'segloop[pyspark]'")
    require_java(17)
    from segloop.warehouses.pyspark import PySparkConfig

    folder = tmp_path_factory.mktemp("spark-write")
    config = PySparkConfig(master="local[2]", metastore="in-memory", warehouse_dir=str(folder / "spark-warehouse"),
                           conf={"spark.sql.shuffle.partitions": "2"}, schema="spark_write")
    with Warehouse.connect(config, folder, "spark") as wh:
        yield wh


def test_a_dataframe_is_written_by_spark_over_a_view(spark: Warehouse) -> None:
    from segloop.warehouses.pyspark import PySparkWarehouse

    assert isinstance(spark, PySparkWarehouse)
    spark.create_table("src", pa.table({"id": list(range(1000)), "v": [i * 0.5 for i in range(1000)]}))
    spark.replace_view("out", spark.table("src").limit(3))  # a view of that name is in the way
    before = spark.rows_fetched
    frame = spark.dataframe(spark.table("src")).selectExpr("id", "v * 2 AS w")
    assert spark.write_dataframe(frame, "out", count=True) == 1000
    assert spark.rows_fetched == before  # nothing came to the driver
    assert spark.relations()["out"] == "table"
    # replace_table takes a DataFrame too (a node's extra tables)
    assert spark.replace_table("out", frame.filter("id < 10")) == 10
    rows = spark.to_arrow(spark.table("out").order_by("id"))
    assert rows.column_names == ["id", "w"] and rows["w"].to_pylist() == [i * 1.0 for i in range(10)]


def test_streamed_batches_are_appended_by_column_name(spark: Warehouse) -> None:
    schema = pa.schema([("user_id", pa.string()), ("score", pa.float64())])
    swapped = pa.schema([("score", pa.float64()), ("user_id", pa.string())])

    def batches() -> Iterator[pa.RecordBatch]:
        for b in range(3):
            yield pa.record_batch([pa.array([f"u{b}_{i}" for i in range(50)]), pa.array([b + i / 100 for i in range(50)])],
                                  schema=schema)

    assert spark.replace_table("streamed", pa.RecordBatchReader.from_batches(schema, batches())) == 150
    # an append whose columns come in another order lands in the right columns
    spark.insert("streamed", pa.table([pa.array([9.5]), pa.array(["z_late"])], schema=swapped))
    rows = spark.to_arrow(spark.table("streamed").order_by("user_id")).to_pylist()
    assert len(rows) == 151
    assert rows[0] == {"user_id": "u0_0", "score": 0.0}
    assert rows[-1] == {"user_id": "z_late", "score": 9.5}
