"""The recommend node against `implicit`'s own defaults, with and without `tune: true` (issue 21).

Run:  .venv/bin/python bench/recommend_defaults.py                 (planted shops, 2 seeds each)
      .venv/bin/python bench/recommend_defaults.py --demo 5000     (also the demo shop)

Planted-structure shops: each customer likes 2 of G product groups (P products each, the
first products of a group the most popular, Zipf 1.6), 30 events per customer over 180 days
(views 75%, adds 17%, orders 8%; 20% of events outside the customer's groups). For each
shop the recommend node runs (a DuckDB pipeline, 30-day holdout) with its fixed defaults
and with `tune: true`; on the same split `implicit`'s `AlternatingLeastSquares()` (its
defaults: 100 factors, regularization 0.01, alpha 1, on the summed event weights) and
popularity are scored with the node's NDCG@10 (the same customers, the same held-out
orders). Prints a Markdown table for bench/README.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

START = datetime(2026, 1, 1)
WEIGHTS = {"Product Viewed": 1.0, "Product Added": 3.0, "Order Completed": 5.0}
SHOPS = ((3000, 25, 20), (3000, 80, 10), (5000, 100, 10))  # customers, groups, products per group
PIPELINE = """\
name: shop
nodes:
  events:
    type: sql
    sql: select * from shop_src.events
  recs:
    type: recommend
    input: events
    customer_id: customer
    item_id: sku
    timestamp: ts
    event: event
    holdout_days: 30
{extra}
"""


def planted(customers: int, groups: int, per_group: int, seed: int, events_per: int = 30,
            days: int = 180) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    taste = rng.integers(0, groups, (customers, 2))
    cust = np.repeat(np.arange(customers), rng.poisson(events_per, customers))
    group = taste[cust, rng.integers(0, 2, len(cust))]
    group = np.where(rng.random(len(cust)) < 0.2, rng.integers(0, groups, len(cust)), group)
    within = np.minimum(rng.zipf(1.6, len(cust)) - 1, per_group - 1)
    kind = rng.choice(3, len(cust), p=[0.75, 0.17, 0.08])
    seconds = np.floor(rng.random(len(cust)) * days * 86400)
    return {"cust": cust, "item": group * per_group + within, "kind": kind, "seconds": seconds}


def run_node(root: Path, events: dict[str, np.ndarray], extra: str) -> tuple[dict[str, Any], float]:
    import pyarrow as pa

    from segloop.pipeline import Pipeline
    from segloop.warehouses import DuckDBConfig, Warehouse

    (root / "pipelines").mkdir(parents=True, exist_ok=True)
    (root / "segloop.yml").write_text("warehouses:\n  default:\n    type: duckdb\n    path: .segloop/warehouse.duckdb\n")
    (root / "pipelines" / "shop.yml").write_text(PIPELINE.format(extra=extra))
    names = np.array(list(WEIGHTS))
    ts = np.datetime64(START, "us") + (events["seconds"] * 1e6).astype("timedelta64[us]")
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        wh.create_table("events", pa.table({
            "customer": np.char.add("c", events["cust"].astype(str)), "sku": np.char.add("p", events["item"].astype(str)),
            "event": names[events["kind"]], "ts": pa.array(ts)}), schema="shop_src")
    started = time.perf_counter()
    result = Pipeline.load(root / "pipelines" / "shop.yml").run()
    node = result.node("recs")
    if node.status != "success":
        raise SystemExit(node.error)
    return node.metrics, time.perf_counter() - started


def implicit_defaults(events: dict[str, np.ndarray], holdout_days: int = 30, k: int = 10) -> float:
    import scipy.sparse as sp
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    from segloop.models.als import metrics_at_k

    cust, item, kind, t = events["cust"], events["item"], events["kind"], events["seconds"]
    shape = (int(cust.max()) + 1, int(item.max()) + 1)
    train = t < t.max() - holdout_days * 86400
    weight = np.array(list(WEIGHTS.values()), dtype="float32")[kind]

    def matrix(rows: np.ndarray, values: np.ndarray) -> sp.csr_matrix:
        m = sp.csr_matrix((values, (cust[rows], item[rows])), shape=shape, dtype="float32")
        m.sum_duplicates()
        return m

    bought = kind == 2
    train_weight = matrix(train, weight[train])
    train_bought = (matrix(train & bought, np.ones((train & bought).sum(), "float32")) > 0).astype("float32").tocsr()
    test_bought = (matrix(~train & bought, np.ones((~train & bought).sum(), "float32")) > 0).astype("float32")
    relevant = (test_bought - test_bought.multiply(train_bought)).tocsr()
    relevant.eliminate_zeros()
    users = np.flatnonzero(np.diff(relevant.indptr) > 0)
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(random_state=42)
        model.fit(train_weight, show_progress=False)
        ids, _ = model.recommend(users, train_bought[users], N=k, filter_already_liked_items=True)
    return metrics_at_k(np.asarray(ids, dtype="int64"), relevant[users], k)["ndcg"]


def demo(customers: int, workdir: Path) -> None:
    """The demo shop (one id per customer): the node's defaults against `tune: true`."""
    from segloop.demo import write_demo_data
    from segloop.pipeline import Pipeline
    from segloop.warehouses import DuckDBConfig, Warehouse

    root = workdir / "demo"
    (root / "pipelines").mkdir(parents=True, exist_ok=True)
    (root / "segloop.yml").write_text("warehouses:\n  default:\n    type: duckdb\n    path: .segloop/warehouse.duckdb\n")
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        write_demo_data(wh, customers=customers)
    sql = ("select user_id, product_id, \"timestamp\", event_text from demo_shop.product_viewed where user_id is not null "
           "union all select user_id, product_id, \"timestamp\", event_text from demo_shop.product_added "
           "where user_id is not null union all select user_id, unnest(from_json(products, '[\"json\"]')) ->> "
           "'product_id' as product_id, \"timestamp\", event_text from demo_shop.order_completed where user_id is not null")
    print(f"\nDemo shop, {customers:,} customers (one id each), 30-day holdout:\n")
    print("| run | NDCG@10 | popularity | chosen settings | validation NDCG configured / chosen | node s |")
    print("|---|---:|---:|---|---|---:|")
    for label, extra in (("defaults", ""), ("tune: true", "    tune: true\n")):
        (root / "pipelines" / "demo.yml").write_text(
            "name: demo\nnodes:\n  events:\n    type: sql\n    sql: |\n      " + sql + "\n  recommend:\n    type: recommend\n"
            "    input: events\n    event: event_text\n    holdout_days: 30\n" + extra)
        started = time.perf_counter()
        m = Pipeline.load(root / "pipelines" / "demo.yml").run().node("recommend").metrics
        seconds = time.perf_counter() - started
        tuning = m.get("tuning") or {}
        print(f"| {label} | {m['ndcg_at_10']:.4f} | {m['popular_ndcg_at_10']:.4f} | {tuning.get('chosen', 'factors 16, regularization 0.5, alpha 2')} | "
              f"{tuning.get('configured_validation_score', '')} / {tuning.get('chosen_validation_score', '')} | {seconds:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--demo", type=int, default=0, help="also the demo shop with this many customers")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="segloop-recdefaults-"))
    print("| shop (customers, groups x products) | seed | evaluated | node defaults | node `tune: true` (chosen) | "
          "implicit `AlternatingLeastSquares()` | popularity | defaults / implicit | tuned / implicit | s defaults / tuned |")
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for customers, groups, per_group in SHOPS:
        for seed in range(args.seeds):
            events = planted(customers, groups, per_group, seed)
            reference = implicit_defaults(events)
            plain, s_plain = run_node(workdir / f"{groups}-{seed}-plain", events, "")
            tuned, s_tuned = run_node(workdir / f"{groups}-{seed}-tuned", events, "    tune: true")
            print(f"| {customers:,}, {groups} x {per_group} | {seed} | {plain['evaluated_customers']:,} | "
                  f"{plain['ndcg_at_10']:.4f} | {tuned['ndcg_at_10']:.4f} ({tuned['tuning']['chosen']}) | {reference:.4f} | "
                  f"{plain['popular_ndcg_at_10']:.4f} | {plain['ndcg_at_10'] / reference:.2f} | "
                  f"{tuned['ndcg_at_10'] / reference:.2f} | {s_plain:.1f} / {s_tuned:.1f} |", flush=True)
    if args.demo:
        demo(args.demo, workdir)


if __name__ == "__main__":
    main()
