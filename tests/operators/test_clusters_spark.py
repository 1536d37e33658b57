"""Node `clusters` on Apache Spark (local mode): MLlib k-means, every customer assigned by Spark.

The demo shop's customers (RFM and activity counts, ~1,000) clustered on local Spark and on
DuckDB: MLlib's k-means (k-means|| start) and scikit-learn's (k-means++, ten starts) find
the same groups (adjusted Rand index >= 0.9), named the same way; `k: auto` picks the same
k. Nothing but a bounded sample and k-row summaries reaches the driver. Marked slow: a
local Spark takes ~20 s to start on two cores; skipped without pyspark or Java 17+.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from sklearn.metrics import adjusted_rand_score

from segloop.demo import write_demo_data
from segloop.operators.base import NodeOutput, RunContext, RunScope
from segloop.operators.clusters import ClustersConfig, ClustersOperator
from segloop.warehouses import Warehouse
from tests.operators.spark_driver import DriverTraffic, driver_traffic
from tests.requirements import require_java, require_module

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # a hang guard: minutes on two busy cores

ACTIVITY = """
with o as (select user_id, max("timestamp") as last, count(*) as frequency, sum(revenue) as monetary
           from demo_shop.order_completed where user_id is not null group by 1)
select o.user_id, date_diff('day', o.last, timestamp '2026-07-01') as recency_days, o.frequency,
       case when o.user_id in ('u100003', 'u100004') then null else o.monetary end as monetary,
       coalesce(v.n, 0) as product_viewed_count, coalesce(a.n, 0) as product_added_count
from o
left join (select user_id, count(*) as n from demo_shop.product_viewed group by 1) v using (user_id)
left join (select user_id, count(*) as n from demo_shop.product_added group by 1) a using (user_id)
"""
SAMPLE = 300  # silhouette_sample of the guarded run: well below the customers


@pytest.fixture(scope="module")
def activity() -> pa.Table:
    duck = Warehouse.duckdb()
    write_demo_data(duck, customers=1000, days=365)
    return duck.to_arrow(duck.sql(ACTIVITY))


@pytest.fixture(scope="module")
def spark(tmp_path_factory: pytest.TempPathFactory, activity: pa.Table) -> Iterator[Warehouse]:
    require_module("pyspark", "pip install 'segloop[pyspark]'")
    require_java(17)
    from segloop.warehouses.pyspark import PySparkConfig

    root = tmp_path_factory.mktemp("spark-clusters")
    config = PySparkConfig(master="local[2]", metastore="in-memory", warehouse_dir=str(root / "warehouse"),
                           conf={"spark.sql.shuffle.partitions": "2"})
    wh = Warehouse.connect(config, Path(root))
    wh.con._session.sparkContext.setLogLevel("ERROR")  # type: ignore[attr-defined]
    wh.create_table("activity", activity)
    yield wh


@pytest.fixture(scope="module")
def duck(activity: pa.Table) -> Warehouse:
    wh = Warehouse.duckdb()
    wh.create_table("activity", activity)
    return wh


def run(wh: Warehouse, config: ClustersConfig, during: Any = nullcontext
        ) -> tuple[NodeOutput, dict, list[dict], list[str]]:
    """The node's output, its assignments by customer, its profiles, and the warnings;
    ``during()`` is around the node's run and the writing of its outputs."""
    with during(), RunScope() as scope:
        ctx = RunContext(warehouse=wh, pipeline="p", node="clusters", run_id="r", shared=scope)
        out = ClustersOperator(config).run({"activity": wh.table("activity")}, ctx)
        wh.replace_table("p__clusters", out.table)
        wh.replace_table("p__clusters__profiles", out.extra["profiles"])
    rows = wh.table("p__clusters").to_pyarrow().to_pylist()
    profiles = sorted(wh.table("p__clusters__profiles").to_pyarrow().to_pylist(), key=lambda r: r["cluster"])
    return out, {r["user_id"]: r for r in rows}, profiles, ctx.warnings


def ari(a: dict, b: dict) -> float:
    ids = sorted(a)
    assert ids == sorted(b)
    return float(adjusted_rand_score([a[i]["cluster"] for i in ids], [b[i]["cluster"] for i in ids]))


def test_mllib_kmeans_finds_the_same_named_groups_without_customers_on_the_driver(
        spark: Warehouse, duck: Warehouse, monkeypatch: pytest.MonkeyPatch) -> None:
    config = ClustersConfig(k=4, silhouette_sample=SAMPLE)
    local, local_rows, local_profiles, local_warnings = run(duck, config)
    traffic = DriverTraffic()
    out, rows, profiles, warnings = run(spark, config, lambda: driver_traffic(monkeypatch, traffic))
    customers = len(rows)
    # The driver saw the bounded sample and k-row summaries; the output went through no
    # Python (today's main fetched every customer's row and uploaded every assignment).
    assert traffic.largest <= SAMPLE and sum(traffic.uploaded) == 0, (traffic.collected, traffic.uploaded)
    assert traffic.total < customers
    assert out.metrics["engine"] == "spark" and out.metrics["k_chosen_on"] == SAMPLE
    # The same groups, the same names, the same profiles within k-means noise.
    assert ari(rows, local_rows) >= 0.9
    names = out.metrics["cluster_names"]
    assert len(set(names) & set(local.metrics["cluster_names"])) >= len(names) - 1
    assert warnings == local_warnings and "`monetary` in 2 rows" in warnings[0]  # same median imputation
    assert out.metrics["inertia"] == pytest.approx(local.metrics["inertia"], rel=0.02)
    assert 0 < out.metrics["stability_ari"] <= 1  # refits on the 300-row sample: see the auto test
    assert list(profiles[0]) == list(local_profiles[0]) and len(profiles) == 4
    assert sum(p["size"] for p in profiles) == customers
    assert [p["size"] for p in profiles] == sorted((p["size"] for p in profiles), reverse=True)
    for ours, theirs in zip(profiles, local_profiles, strict=True):
        assert ours["size"] == pytest.approx(theirs["size"], rel=0.05, abs=3)
        assert ours["mean_frequency"] == pytest.approx(theirs["mean_frequency"], rel=0.05)
    one = next(iter(rows))
    assert list(rows[one]) == list(local_rows[one])  # the same columns, in the same order
    assert rows["u100003"]["monetary"] == local_rows["u100003"]["monetary"]  # the median, not NULL


def test_auto_k_by_silhouette_picks_the_local_k(spark: Warehouse, duck: Warehouse) -> None:
    config = ClustersConfig(k="auto")  # silhouette_sample 5,000: every customer here
    local, local_rows, _, _ = run(duck, config)
    out, rows, profiles, _ = run(spark, config)
    assert out.metrics["k"] == local.metrics["k"]
    assert out.metrics["silhouette_by_k"] == local.metrics["silhouette_by_k"]
    assert out.metrics["silhouette"] == pytest.approx(local.metrics["silhouette"], abs=0.02)
    assert ari(rows, local_rows) >= 0.9
    # The sample is every customer here: the stability refits see what the local path's see.
    assert abs(out.metrics["stability_ari"] - local.metrics["stability_ari"]) <= 0.1
    assert len({p["cluster_name"] for p in profiles}) == len(profiles) == out.metrics["k"]
