"""Node `clusters`: obvious blobs are found and named; awkward inputs give clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from sklearn.metrics import adjusted_rand_score

from segloop.operators.clusters import cluster_names, describe
from segloop.pipeline import Pipeline
from segloop.warehouses import DuckDBConfig, Warehouse

PIPELINE = """\
name: shop
nodes:
  customers:
    type: sql
    sql: select * from shop_src.customers
  clusters:
    type: clusters
    input: customers
{extra}
"""
# blob: (recency_days, frequency, monetary) centres; far apart even after log scaling
CENTRES = {"champions": (3, 40, 8000), "sleepers": (300, 2, 60), "middle": (40, 8, 700)}


def blobs(per_blob: int, seed: int = 1) -> tuple[pa.Table, list[str]]:
    rng = np.random.default_rng(seed)
    ids, truth, rec, freq, mon = [], [], [], [], []
    for name, (r, f, m) in CENTRES.items():
        for i in range(per_blob):
            ids.append(f"{name}-{i}")
            truth.append(name)
            rec.append(max(0, round(r * rng.lognormal(0, 0.1))))
            freq.append(max(1, round(f * rng.lognormal(0, 0.1))))
            mon.append(round(m * rng.lognormal(0, 0.1), 2))
    table = pa.table({"user_id": ids, "recency_days": pa.array(rec, pa.int64()),
                      "frequency": pa.array(freq, pa.int64()), "monetary": mon,
                      "plan": ["basic"] * len(ids)})
    return table, truth


def agreement_with_blobs(assigned: pa.Table, table: pa.Table, truth: list[str]) -> float:
    """ARI between the blobs every customer of ``table`` was drawn from and the node's clusters."""
    cluster_of = {r["user_id"]: r["cluster"] for r in assigned.select(["user_id", "cluster"]).to_pylist()}
    return adjusted_rand_score(truth, [cluster_of[i] for i in table["user_id"].to_pylist()])


def run(make_workspace, table: pa.Table, extra: str = ""):
    root: Path = make_workspace({"shop": PIPELINE.format(extra=extra)})
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        wh.create_table("customers", table, schema="shop_src")
    result = Pipeline.load(root / "pipelines" / "shop.yml").run()
    wh = Warehouse.connect(DuckDBConfig(), root)
    return result, wh


@pytest.mark.parametrize("per_blob", [2, 33, 100, 834])
def test_three_obvious_blobs_become_three_named_clusters(make_workspace, per_blob: int) -> None:
    table, truth = blobs(per_blob)
    result, wh = run(make_workspace, table)
    node = result.node("clusters")
    assert node.status == "success", node.error
    assert node.metrics["k"] == 3 and node.metrics["silhouette"] > 0.5
    rows = {r["user_id"]: r for r in wh.table("shop__clusters").to_pyarrow().to_pylist()}
    assert len(rows) == 3 * per_blob
    found = [rows[i]["cluster"] for i in table["user_id"].to_pylist()]
    assert adjusted_rand_score(truth, found) == pytest.approx(1.0)
    name_of = {truth[i]: rows[uid]["cluster_name"] for i, uid in enumerate(table["user_id"].to_pylist())}
    assert len(set(name_of.values())) == 3
    assert "recent" in name_of["champions"].split(", ") and "high spend" in name_of["champions"]
    assert "not recent" in name_of["sleepers"] and "low spend" in name_of["sleepers"]
    profiles = wh.table("shop__clusters__profiles").to_pyarrow().to_pylist()
    assert sum(p["size"] for p in profiles) == 3 * per_blob
    by_name = {p["cluster_name"]: p for p in profiles}
    champions = by_name[name_of["champions"]]
    assert champions["size"] == per_blob
    assert champions["mean_monetary"] == pytest.approx(8000, rel=0.25)  # original units
    assert champions["mean_recency_days"] == pytest.approx(3, abs=2)
    wh.close()


def test_fixed_k_and_a_training_sample_for_large_inputs(make_workspace) -> None:
    table, truth = blobs(400)
    result, wh = run(make_workspace, table, "    k: 3\n    fit_rows: 500\n    seed: 3")
    node = result.node("clusters")
    assert node.status == "success", node.error
    assert node.metrics["algorithm"] == "KMeans" and node.metrics["k"] == 3
    assert list(node.metrics["silhouette_by_k"]) == ["3"]
    assert node.metrics["training_rows"] == 500  # exactly `fit_rows`, not about as many
    assert node.metrics["sampled"].startswith("trained on 500 of 1,200 customers")
    assert "`fit_rows` = 500" in node.metrics["sampled"]
    assert node.rows == 3 * 400 and not node.warnings  # a sample by design, not for lack of memory
    assert agreement_with_blobs(wh.table("shop__clusters").to_pyarrow(), table, truth) == pytest.approx(1.0)
    wh.close()


def test_minibatch_above_of_older_pipelines_is_accepted_with_a_warning(make_workspace) -> None:
    table, truth = blobs(100)
    result, wh = run(make_workspace, table, "    k: 3\n    minibatch_above: 50")
    node = result.node("clusters")
    assert node.status == "success", node.error
    assert any("`minibatch_above` is no longer used" in w for w in node.warnings)
    assert node.metrics["algorithm"] == "KMeans" and "sampled" not in node.metrics
    assert agreement_with_blobs(wh.table("shop__clusters").to_pyarrow(), table, truth) == pytest.approx(1.0)
    wh.close()


@pytest.mark.parametrize("value", ["0", "99", "-5", "lots", "1.5e9x", "[100000]"])
def test_malformed_fit_rows_is_a_config_error_naming_the_key(make_workspace, value: str) -> None:
    from segloop.errors import ConfigError

    root = make_workspace({"shop": PIPELINE.format(extra=f"    k: 3\n    fit_rows: {value}")})
    with pytest.raises(ConfigError, match="fit_rows") as caught:
        Pipeline.load(root / "pipelines" / "shop.yml")
    assert "clusters" in str(caught.value)  # the node it belongs to


def test_same_seed_same_clusters(make_workspace) -> None:
    table, _ = blobs(50)
    _, wh = run(make_workspace, table, "    k: 5")
    first = wh.table("shop__clusters").order_by("user_id").to_pyarrow()
    wh.close()
    _, wh = run(make_workspace, table, "    k: 5")
    assert wh.table("shop__clusters").order_by("user_id").to_pyarrow().equals(first)
    wh.close()


def test_row_order_of_the_input_does_not_change_the_clusters(make_workspace) -> None:
    # Warehouses return rows in no fixed order (PostgreSQL and DuckDB differ); a customer's
    # cluster must not depend on it. Structureless data, where k-means' start matters.
    rng = np.random.default_rng(5)
    n = 600
    table = pa.table({"user_id": [f"c{i:04d}" for i in range(n)],
                      "recency_days": rng.integers(0, 365, n), "frequency": rng.integers(1, 30, n),
                      "monetary": np.round(rng.lognormal(5, 1, n), 2)})
    shuffled = table.take(pa.array(rng.permutation(n)))
    results = []
    for rows in (table, shuffled):
        result, wh = run(make_workspace, rows, "    k: 6")
        assert result.node("clusters").status == "success", result.node("clusters").error
        results.append((result.node("clusters").metrics["k"],
                        wh.table("shop__clusters").order_by("user_id").to_pyarrow().to_pylist()))
        wh.close()
    assert results[0] == results[1]


def test_missing_values_are_imputed_with_a_warning(make_workspace) -> None:
    table, _ = blobs(30)
    recency = table["recency_days"].to_pylist()
    recency[:4] = [None] * 4
    table = table.set_column(1, "recency_days", pa.array(recency, pa.int64()))
    result, wh = run(make_workspace, table)
    node = result.node("clusters")
    assert node.status == "success", node.error
    assert any("`recency_days` in 4 rows" in w for w in node.warnings)
    assert wh.count(wh.table("shop__clusters")) == 90
    wh.close()


def test_text_column_is_refused_with_its_name(make_workspace) -> None:
    table, _ = blobs(5)
    result, _wh = run(make_workspace, table, "    columns: [frequency, plan]")
    node = result.node("clusters")
    assert node.status == "failed"
    assert "node `clusters`" in node.error and "`plan`" in node.error and "not numeric" in node.error
    _wh.close()


def test_without_default_columns_the_error_says_to_list_them(make_workspace) -> None:
    table = pa.table({"user_id": ["a", "b", "c"], "age": [20, 30, 40]})
    result, wh = run(make_workspace, table)
    error = result.node("clusters").error
    assert "node `clusters`" in error and "columns:" in error
    wh.close()
    result, wh = run(make_workspace, table, "    columns: [age]\n    k: 2")
    assert result.node("clusters").status == "success"
    assert wh.count(wh.table("shop__clusters")) == 3
    wh.close()


def test_count_columns_are_picked_by_default(make_workspace) -> None:
    table, _ = blobs(20)
    table = table.append_column("product_viewed_count", pa.array(np.arange(60) % 7, pa.int64()))
    result, _wh = run(make_workspace, table)
    assert result.node("clusters").metrics["columns"] == [
        "recency_days", "frequency", "monetary", "product_viewed_count"]
    _wh.close()


def test_names_are_unique_even_when_profiles_look_alike() -> None:
    columns = ["recency_days", "frequency", "monetary", "orders_count"]
    z = np.array([[-1.0, 1.0, 1.0, 0.3], [-1.0, 1.0, 1.0, -0.4], [0.0, 0.0, 0.0, 0.0], [0.01, 0, 0, 0]])
    names = cluster_names(z, columns, terms=3)
    assert len(set(names)) == 4
    assert names[0] == "recent, frequent, high spend, many orders"
    assert names[1] == "recent, frequent, high spend, few orders"
    assert names[2].startswith("average") and names[3].startswith("average")
    assert describe("basket_size", 1.0) == "high basket size"
    assert describe("basket_size", 2.0) == "very high basket size"
    assert describe("recency_days", 2.0) == "long inactive"


def test_same_words_in_another_order_are_the_same_name() -> None:
    columns = ["recency_days", "frequency", "monetary"]
    z = np.array([[-1.0, 1.2, 0.8], [-1.2, 0.8, 1.0], [1.0, -1.0, -1.0]])
    names = cluster_names(z, columns)
    assert names[0] == "frequent, recent, high spend (1)"
    assert names[1] == "recent, high spend, frequent (2)"
    assert names[2] == "not recent, infrequent, low spend"


def test_rfm_words_come_first_and_weak_columns_stay_out() -> None:
    columns = ["product_viewed_count", "recency_days", "monetary", "frequency"]
    z = np.array([[-2.5, 0.5, -0.3, 0.1], [0.1, 0.0, 0.2, -0.1], [2.0, -1.0, 1.4, 0.9]])
    names = cluster_names(z, columns, terms=3)
    assert names[0] == "not recent, low spend, very few views"  # frequency (0.1) is too weak
    assert names[1] == "average"
    assert names[2] == "high spend, recent, frequent"


@pytest.mark.parametrize("rows", [1, 2, 3])
def test_tiny_inputs_cluster_or_say_why_not(make_workspace, rows: int) -> None:
    table = pa.table({"user_id": [f"c{i}" for i in range(rows)], "frequency": [1, 50, 2][:rows],
                      "monetary": [10.0, 9000.0, 12.0][:rows]})
    result, wh = run(make_workspace, table)
    node = result.node("clusters")
    if rows == 1:
        assert node.status == "failed" and "at least 2" in node.error
    else:
        assert node.status == "success", node.error
        clusters = {r["user_id"]: r["cluster"] for r in wh.table("shop__clusters").to_pyarrow().to_pylist()}
        assert len(clusters) == rows and clusters["c0"] != clusters["c1"]
    wh.close()
