"""Node `clusters` on the demo shop: does it find the generator's hidden personas?"""

from __future__ import annotations

from pathlib import Path

import pytest
from sklearn.metrics import adjusted_rand_score

from segloop.demo import write_demo_data
from segloop.pipeline import Pipeline
from segloop.warehouses import DuckDBConfig, Warehouse
from tests.pipeline_fixtures import SQL_RFM_KNOWN

# RFM from orders, plus event counts per customer: the features a user would start from.
PIPELINE = "name: demo\nnodes:\n" + SQL_RFM_KNOWN + """\
  activity:
    type: sql
    input: rfm
    sql: |
      select r.user_id, r.recency_days, r.frequency, r.monetary,
             coalesce(v.n, 0) as product_viewed_count, coalesce(a.n, 0) as product_added_count
      from rfm r
      left join (select user_id, count(*) as n from demo_shop.product_viewed group by 1) v using (user_id)
      left join (select user_id, count(*) as n from demo_shop.product_added group by 1) a using (user_id)
  clusters:
    type: clusters
    input: activity
    k: {k}
"""


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo_ws")
    (root / "pipelines").mkdir()
    (root / "segloop.yml").write_text(
        "warehouses:\n  default:\n    type: duckdb\n    path: .segloop/warehouse.duckdb\n")
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        write_demo_data(wh, customers=1500, days=365)
    return root


def run(root: Path, k: str) -> tuple[dict[str, object], dict[str, str], object]:
    (root / "pipelines" / "demo.yml").write_text(PIPELINE.format(k=k))
    result = Pipeline.load(root / "pipelines" / "demo.yml").run()
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        found = {r["user_id"]: r["cluster"] for r in wh.table("demo__clusters").to_pyarrow().to_pylist()}
        truth = {r["user_id"]: r["persona"]
                 for r in wh.table("customers", schema="demo_shop_truth").to_pyarrow().to_pylist()}
    return found, truth, result


def test_clusters_recover_hidden_personas(demo_root: Path) -> None:
    found, truth, result = run(demo_root, "4")
    assert result.node("clusters").status == "success", result.node("clusters").error
    users = sorted(found)
    assert len(users) > 1000
    ari = adjusted_rand_score([truth[u] for u in users], [found[u] for u in users])
    assert ari >= 0.5, f"adjusted Rand index {ari:.3f}"


def test_auto_k_on_demo_names_every_cluster_uniquely(demo_root: Path) -> None:
    found, _, result = run(demo_root, "auto")
    node = result.node("clusters")
    assert node.status == "success", node.error
    assert 2 <= node.metrics["k"] <= 8 and node.metrics["inertia"] > 0
    best = max(node.metrics["silhouette_by_k"].values())
    assert node.metrics["silhouette"] == best
    with Warehouse.connect(DuckDBConfig(), demo_root) as wh:
        profiles = wh.table("demo__clusters__profiles").to_pyarrow().to_pylist()
    assert len(profiles) == node.metrics["k"]
    assert len({p["cluster_name"] for p in profiles}) == len(profiles)
    assert sum(p["size"] for p in profiles) == len(found)
    assert [p["size"] for p in profiles] == sorted((p["size"] for p in profiles), reverse=True)
