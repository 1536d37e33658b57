"""Node `recommend` on PostgreSQL: same recommendations as on DuckDB; lists and JSON stored."""

from __future__ import annotations

import os

import orjson
import pyarrow as pa
import pytest

from segloop.operators.base import RunContext
from segloop.operators.recommend import RecommendConfig, RecommendOperator
from segloop.warehouses import Warehouse
from tests.operators.test_recommend import shop

CONFIG = RecommendConfig(customer_id="customer", item_id="sku", timestamp="ts", event="event",
                         holdout_days=10, top_n=3, wide_items=["a1"])


def pg_or_skip(request: pytest.FixtureRequest) -> Warehouse:
    """The throwaway PostgreSQL warehouse of tests/fixtures_pg.py, or skip."""
    try:
        return request.getfixturevalue("pg_warehouse")
    except pytest.FixtureLookupError:
        if os.environ.get("SEGLOOP_REQUIRE_PG") == "1":
            pytest.fail("SEGLOOP_REQUIRE_PG=1 but the pg_warehouse fixture is missing")
        pytest.skip("the pg_warehouse fixture (tests/fixtures_pg.py) is not available")


def run_on(wh: Warehouse) -> tuple[dict, list[dict], list[dict]]:
    rows = shop()
    wh.create_table("rec_events", pa.table({
        "customer": [r[0] for r in rows], "sku": [r[1] for r in rows], "event": [r[2] for r in rows],
        "ts": pa.array([r[3] for r in rows], pa.timestamp("us")),
    }))
    ctx = RunContext(warehouse=wh, pipeline="p", node="recs", run_id="r")
    out = RecommendOperator(CONFIG).run({"events": wh.table("rec_events")}, ctx)
    # as the engine writes a node's output: the main table, then the extras (streamed)
    wh.replace_table("p__recs", out.table)
    wh.replace_table("p__recs__long", out.extra["long"])
    main = sorted(wh.table("p__recs").to_pyarrow().to_pylist(), key=lambda r: r["customer"])
    long = sorted(wh.table("p__recs__long").to_pyarrow().to_pylist(), key=lambda r: (r["customer"], r["rank"]))
    return out.metrics, main, long


@pytest.mark.postgres
def test_same_recommendations_on_postgres(request: pytest.FixtureRequest) -> None:
    pg = pg_or_skip(request)
    pg_metrics, pg_main, pg_long = run_on(pg)
    duck_metrics, duck_main, duck_long = run_on(Warehouse.duckdb())
    assert pg_metrics["pairs"] == duck_metrics["pairs"] and pg_metrics["ndcg_at_10"] == pytest.approx(duck_metrics["ndcg_at_10"], abs=1e-3)
    assert [r["recommended"] for r in pg_main] == [r["recommended"] for r in duck_main]
    for a, b in zip(pg_main, duck_main, strict=True):
        assert isinstance(a["recommended"], list)  # a text[] column, not a string
        assert orjson.loads(a["scores"]) == pytest.approx(orjson.loads(b["scores"]), abs=1e-3)
    assert len(pg_long) == len(duck_long)
