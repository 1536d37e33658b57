"""Node `clusters` on PostgreSQL: same clusters and names as on DuckDB."""

from __future__ import annotations

import pytest

from segloop.operators.base import RunContext
from segloop.operators.clusters import ClustersConfig, ClustersOperator
from segloop.operators.clusters_stream import fetch_sample
from segloop.warehouses import Warehouse
from tests.operators.test_clusters import blobs
from tests.operators.test_recommend_postgres import pg_or_skip


def run_on(wh: Warehouse) -> tuple[dict, list[dict]]:
    table, _ = blobs(40)
    wh.create_table("cl_customers", table)
    ctx = RunContext(warehouse=wh, pipeline="p", node="cl", run_id="r")
    out = ClustersOperator(ClustersConfig()).run({"customers": wh.table("cl_customers")}, ctx)
    wh.create_table("p__cl", out.table)
    wh.create_table("p__cl__profiles", out.extra["profiles"])
    return out.metrics, sorted(wh.table("p__cl").to_pyarrow().to_pylist(), key=lambda r: r["user_id"])


@pytest.mark.postgres
def test_same_clusters_on_postgres(request: pytest.FixtureRequest) -> None:
    pg = pg_or_skip(request)
    pg_metrics, pg_rows = run_on(pg)
    duck_metrics, duck_rows = run_on(Warehouse.duckdb())
    assert pg_metrics["k"] == duck_metrics["k"] == 3
    assert [(r["cluster"], r["cluster_name"]) for r in pg_rows] == [(r["cluster"], r["cluster_name"]) for r in duck_rows]


@pytest.mark.postgres
def test_same_training_sample_on_postgres(request: pytest.FixtureRequest) -> None:
    """Above `fit_rows` the customers trained on are the lowest md5 of `seed:id`, ordered in
    the warehouse: PostgreSQL (its collation) picks the same ones as DuckDB."""
    pg = pg_or_skip(request)
    picked = []
    for wh in (pg, Warehouse.duckdb()):
        table, _ = blobs(40)
        wh.create_table("cl_sample", table)
        ctx = RunContext(warehouse=wh, pipeline="p", node="cl", run_id="r")
        ids, _ = fetch_sample(ctx, wh.table("cl_sample"), "user_id", ["monetary"], 50, 7, 20)
        picked.append(ids.to_pylist())
    assert len(picked[0]) == 50 and picked[0] == picked[1]
