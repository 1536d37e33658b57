"""Node `recommend` within `memory_limit`: trains on a sample, scores everyone, fetches in bounded batches."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pyarrow as pa

from segloop.models.interactions import Budget
from segloop.operators.base import RunContext
from segloop.operators.recommend import RecommendConfig, RecommendOperator
from segloop.warehouses import Warehouse
from tests.operators.test_recommend import START, shop

LIMIT = 240_000  # bytes: room for ~1,000 training pairs, where the shop has 3,600
CONFIG = RecommendConfig(customer_id="customer", item_id="sku", timestamp="ts", event="event",
                         holdout_days=10, top_n=3, wide_items=["a1"])


class Recorder:
    """Wraps a warehouse's reads: the most rows any single fetch brought into Python."""

    def __init__(self, wh: Warehouse):
        self.largest = 0
        self.fetches = 0
        to_batches, to_arrow = wh.to_batches, wh.to_arrow

        def batches(expr: Any, batch_rows: int | None = None) -> Iterator[pa.RecordBatch]:
            for batch in to_batches(expr, batch_rows):
                self.largest, self.fetches = max(self.largest, batch.num_rows), self.fetches + 1
                yield batch

        def arrow(expr: Any, limit: int | None = None) -> pa.Table:
            table = to_arrow(expr, limit)
            self.largest, self.fetches = max(self.largest, table.num_rows), self.fetches + 1
            return table

        wh.to_batches, wh.to_arrow = batches, arrow  # type: ignore[method-assign]


def events(fans: int) -> pa.Table:
    rows = shop(fans_per_category=fans)
    # customers with no weighted history at all: they must still get a (popular) list
    rows += [(f"browser-{i}", "a1", "Checkout Started", START + timedelta(days=i % 50)) for i in range(50)]
    return pa.table({
        "customer": [r[0] for r in rows], "sku": [r[1] for r in rows], "event": [r[2] for r in rows],
        "ts": pa.array([r[3] for r in rows], pa.timestamp("us")),
    })


def run(wh: Warehouse, memory_limit: int) -> tuple[dict, list[dict], list[dict], list[int]]:
    wh.create_table("rec_events", events(400))
    ctx = RunContext(warehouse=wh, pipeline="p", node="recs", run_id="r", memory_limit=memory_limit)
    out = RecommendOperator(CONFIG).run({"events": wh.table("rec_events")}, ctx)
    sizes: list[int] = []

    def counted(reader: pa.RecordBatchReader) -> pa.RecordBatchReader:
        return pa.RecordBatchReader.from_batches(reader.schema, (sizes.append(b.num_rows) or b for b in reader))

    wh.replace_table("p__recs", counted(out.table))  # as the engine writes it
    wh.replace_table("p__recs__long", out.extra["long"])
    main = wh.table("p__recs").to_pyarrow().to_pylist()
    long = wh.table("p__recs__long").to_pyarrow().to_pylist()
    return out.metrics, main, long, sizes


def test_small_memory_limit_samples_training_but_scores_every_customer() -> None:
    wh = Warehouse.duckdb()
    recorder = Recorder(wh)
    metrics, main, long, sizes = run(wh, LIMIT)
    budget = Budget.of(LIMIT, CONFIG.top_n, metrics["customers"], metrics["pairs"])

    # every customer scored: 400 A fans, 800 B fans, 50 without weighted history
    assert metrics["customers"] == 1250 and len(main) == 1250
    assert len({r["customer"] for r in main}) == 1250
    assert sum(r["source"] == "popular" for r in main) == 50 == metrics["popular_fallback_customers"]
    assert all(len(r["recommended"]) == 3 for r in main) and len(long) == 3 * 1250
    # ... while training on a sample that fits, and saying so
    assert metrics["sampled"] is True and metrics["pairs"] == 3600
    assert 0 < metrics["training_pairs"] <= 1.2 * budget.train_pairs < metrics["pairs"] / 2
    assert metrics["training_customers"] < 1200
    # never more than a small batch of rows in Python at once, never the output whole
    assert recorder.largest <= budget.batch_rows <= 200, recorder.largest
    assert max(sizes) <= budget.chunk_customers <= 100 and len(sizes) > 10
    # the sample still learns the two tastes: A fans get A items, B fans B items
    model_rows = [r for r in main if r["source"] == "model"]
    agree = sum(r["rec_1"][0] == r["customer"][0] for r in model_rows)
    assert agree >= 0.9 * len(model_rows), agree
    assert metrics["evaluated_customers"] > 0 and metrics["ndcg_at_10"] >= metrics["popular_ndcg_at_10"]
    # the scratch tables are gone once the outputs are written
    assert not [t for t in wh.con.list_tables() if "scratch" in t]


def test_default_limit_trains_on_everything_in_one_chunk() -> None:
    metrics, main, _, sizes = run(Warehouse.duckdb(), 2 * 10**9)
    assert metrics["sampled"] is False and metrics["training_pairs"] == metrics["pairs"] == 3600
    assert metrics["training_customers"] == 1250 and "warnings" not in metrics
    assert len(main) == 1250 and len(sizes) == 1  # one chunk: everything fits


def test_absurdly_small_limit_still_runs_on_the_floors() -> None:
    metrics, main, _, sizes = run(Warehouse.duckdb(), 1)
    assert len(main) == 1250 and metrics["sampled"] is True
    assert 0 < metrics["training_pairs"] <= 1.2 * Budget.MIN_TRAIN_PAIRS
    assert max(sizes) == Budget.MIN_CHUNK_CUSTOMERS
