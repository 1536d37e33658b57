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
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the shops are the tests' (tests/operators/recommend_fixtures.py)

from tests.operators.recommend_fixtures import (  # noqa: E402
    implicit_defaults_ndcg,
    planted,
    planted_table,
    run_shop,
    shop_pipeline,
    write_events,
)

SHOPS = ((3000, 25, 20), (3000, 80, 10), (5000, 100, 10))  # customers, groups, products per group


def run_node(root: Path, events: dict[str, Any], extra: str) -> tuple[dict[str, Any], float]:
    (root / "pipelines").mkdir(parents=True, exist_ok=True)
    (root / "segloop.yml").write_text("warehouses:\n  default:\n    type: duckdb\n    path: .segloop/warehouse.duckdb\n")
    (root / "pipelines" / "shop.yml").write_text(shop_pipeline(holdout_days=30, extra=extra))
    write_events(root, planted_table(events))
    started = time.perf_counter()
    node = run_shop(root).node("recs")
    if node.status != "success":
        raise SystemExit(node.error)
    return node.metrics, time.perf_counter() - started


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
            events = planted(customers, groups, per_group, seed=seed)
            reference, _ = implicit_defaults_ndcg(events)
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
