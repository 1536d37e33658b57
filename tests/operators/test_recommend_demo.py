"""Node `recommend` on the demo shop: better than popularity on the customers' next purchases."""

from __future__ import annotations

import pytest

from segloop.demo import write_demo_data
from segloop.pipeline import Pipeline
from segloop.warehouses import DuckDBConfig, Warehouse

# Views, adds and the products inside each order (Segment stores products[] as a JSON string).
EVENTS_SQL = """\
    sql: |
      select user_id, product_id, "timestamp", event_text from demo_shop.product_viewed
      where user_id is not null
      union all
      select user_id, product_id, "timestamp", event_text from demo_shop.product_added
      where user_id is not null
      union all
      select user_id, unnest(from_json(products, '["json"]')) ->> 'product_id' as product_id,
             "timestamp", event_text
      from demo_shop.order_completed where user_id is not null
"""
PIPELINE = f"""\
name: demo
nodes:
  events:
    type: sql
{EVENTS_SQL}
  recommend:
    type: recommend
    input: events
    event: event_text
    holdout_days: 30
    wide_items: [phones_01, books_01]
"""


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_ws")
    (root / "pipelines").mkdir()
    (root / "segloop.yml").write_text(
        "warehouses:\n  default:\n    type: duckdb\n    path: .segloop/warehouse.duckdb\n")
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        write_demo_data(wh, customers=1500, days=365)
    (root / "pipelines" / "demo.yml").write_text(PIPELINE)
    result = Pipeline.load(root / "pipelines" / "demo.yml").run()
    return root, result


def test_beats_popularity_by_half_on_ndcg(demo_run) -> None:
    _, result = demo_run
    node = result.node("recommend")
    assert node.status == "success", node.error
    m = node.metrics
    assert m["evaluated_customers"] >= 100
    assert m["ndcg_at_10"] >= 1.5 * m["popular_ndcg_at_10"], m
    assert m["precision_at_10"] > m["popular_precision_at_10"] and m["recall_at_10"] > m["popular_recall_at_10"]
    # popularity shows everyone the same few of the 200 products; the model reaches most of them
    assert m["popular_coverage_at_10"] < 0.2 < 0.8 < m["coverage_at_10"]
    assert m["catalogue_coverage"] >= m["coverage_at_10"] - 0.05


def test_recommendations_follow_each_customers_favourite_category(demo_run) -> None:
    root, _ = demo_run
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        recs = {r["user_id"]: r for r in wh.table("demo__recommend").to_pyarrow().to_pylist()}
        truth = {r["user_id"]: r["favourite_category"]
                 for r in wh.table("customers", schema="demo_shop_truth").to_pyarrow().to_pylist()}
        bought = wh.sql("""select distinct user_id, unnest(from_json(products, '["json"]')) ->> 'product_id' as p
                           from demo_shop.order_completed where user_id is not null""").to_pyarrow()
    assert set(recs) == set(truth)  # every customer with any event gets a row
    share = [sum(item.startswith(truth[u]) for item in r["recommended"]) / len(r["recommended"])
             for u, r in recs.items()]
    # a random list would hold ~1/8 of the favourite category
    assert sum(share) / len(share) > 0.4
    purchased = set(zip(bought["user_id"].to_pylist(), bought["p"].to_pylist(), strict=True))
    assert not any((u, item) in purchased for u, r in recs.items() for item in r["recommended"])


def test_tables_agree_and_fit_what_segment_can_take(demo_run) -> None:
    root, _ = demo_run
    import orjson

    with Warehouse.connect(DuckDBConfig(), root) as wh:
        main = {r["user_id"]: r for r in wh.table("demo__recommend").to_pyarrow().to_pylist()}
        long = wh.table("demo__recommend__long").to_pyarrow().to_pylist()
    assert len(long) == sum(len(r["recommended"]) for r in main.values())
    for row in long[:500]:
        rec = main[row["user_id"]]
        assert rec["recommended"][row["rank"] - 1] == row["item_id"]
        assert rec[f"rec_{row['rank']}"] == row["item_id"]
        assert orjson.loads(rec["scores"])[row["item_id"]] == row["score"] == rec[f"score_{row['rank']}"]
    some = next(iter(main.values()))
    scores = [some[f"score_{i}"] for i in range(1, 11)]
    assert scores == sorted(scores, reverse=True) and len(some["recommended"]) == 10
    assert {"phones_01", "books_01"} <= set(some)  # wide_items columns
    phone_fans = [r["phones_01"] for r in main.values() if r["phones_01"] is not None]
    assert phone_fans and all(isinstance(v, float) for v in phone_fans)
    listed = [r for r in main.values() if "phones_01" in r["recommended"]]
    assert listed and all(r["phones_01"] == pytest.approx(orjson.loads(r["scores"])["phones_01"], abs=2e-4)
                          for r in listed)
