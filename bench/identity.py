"""The demo pipeline with and without identity stitching: customers counted, propensity
AUC and recommend NDCG@10 (issue 22).

Run:  .venv/bin/python bench/identity.py                       (20,000 customers)
      .venv/bin/python bench/identity.py --customers 5000      (quicker)

The demo data (``segloop.demo`` + ``segloop.demo_identity``) has anonymous browsing before
sign-up, logged-out browsing on a second device and a few accounts merged by ``alias``.
The stitched run is examples/demo/pipelines/demo.yml's model nodes as they are
(``identity: stitch``, ``canonical_user_id``); the unstitched run is the same text with
``user_id`` in place of ``canonical_user_id`` and no ``identity:``, i.e. what the demo was
before. The nodes report their own quality figures on their own holdouts; the script also
counts distinct customer ids and how many true customers (the generator's truth) they are.
Prints a Markdown table for bench/README.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "demo" / "pipelines" / "demo.yml"
PAST = "demo_past"  # the demo data up to FUTURE_DAYS before its end; the rest is the future
FUTURE_DAYS = 30
KEEP = {"shop", "orders", "events", "likely_buyers", "likely_churners", "product_events", "recommend"}


def pipeline_text(stitched: bool) -> str:
    data = yaml.safe_load(DEMO.read_text())
    data["name"] = "stitched" if stitched else "unstitched"
    data["nodes"] = {k: v for k, v in data["nodes"].items() if k in KEEP}
    data["nodes"]["shop"]["schema"] = PAST
    data["nodes"]["recommend"]["top_n"] = 10
    if not stitched:
        data["nodes"]["shop"].pop("identity")
        for node in data["nodes"].values():
            if "sql" in node:
                node["sql"] = node["sql"].replace("canonical_user_id as user_id", "user_id").replace(
                    "canonical_user_id", "user_id")
    return yaml.safe_dump(data, sort_keys=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    from segloop.demo import DEFAULT_END, write_demo_data
    from segloop.pipeline import Pipeline
    from segloop.warehouses import DuckDBConfig, Warehouse

    root = args.workdir or Path(tempfile.mkdtemp(prefix="segloop-identity-"))
    (root / "pipelines").mkdir(parents=True, exist_ok=True)
    (root / "segloop.yml").write_text("warehouses:\n  default:\n    type: duckdb\n    path: .segloop/warehouse.duckdb\n")
    for stitched in (True, False):
        name = "stitched" if stitched else "unstitched"
        (root / "pipelines" / f"{name}.yml").write_text(pipeline_text(stitched))
    cutoff = DEFAULT_END - timedelta(days=FUTURE_DAYS)
    with Warehouse.connect(DuckDBConfig(path=".segloop/warehouse.duckdb"), root) as wh:
        if "demo_shop" not in wh.list_schemas():
            stats = write_demo_data(wh, customers=args.customers, seed=args.seed, split_ids=True)
            print(f"demo data: {stats.customers:,} customers, {stats.events:,} events, {stats.seconds:.1f} s")
            wh.raw_sql(f"create schema if not exists {PAST}")
            for table in wh.list_tables("demo_shop"):
                column = "received_at" if table == "users" else '"timestamp"'
                wh.raw_sql(f"create or replace table {PAST}.{table} as select * from demo_shop.{table} "
                           f"where {column} <= timestamp '{cutoff.isoformat()}'")
        future = future_truth(wh, cutoff)
    results: dict[str, dict[str, Any]] = {}
    for name in ("unstitched", "stitched"):
        started = time.perf_counter()
        result = Pipeline.load(root / "pipelines" / f"{name}.yml").run()
        seconds = time.perf_counter() - started
        if not result.ok:
            raise SystemExit(f"{name}: {[(n.name, n.error) for n in result.nodes if n.error]}")
        with Warehouse.connect(DuckDBConfig(path=".segloop/warehouse.duckdb"), root) as wh:
            counts = wh.sql(
                f"select (select count(distinct user_id) from {name}__orders) as buyers, "
                f"(select count(distinct user_id) from {name}__events) as with_events, "
                f"(select count(*) from {name}__events) as events, "
                f"(select count(*) from {name}__product_events) as product_events, "
                "(select count(distinct t.user_id) from demo_shop_truth.customers t) as true_customers"
            ).to_pyarrow().to_pylist()[0]
            scores = {r["user_id"]: r["probability"] for r in wh.table(f"{name}__likely_buyers").to_pyarrow().to_pylist()}
            recs = {r["user_id"]: r["recommended"] for r in wh.table(f"{name}__recommend").select(
                "user_id", "recommended").to_pyarrow().to_pylist()}
        buyers, churners, recommend = (result.node(n).metrics for n in ("likely_buyers", "likely_churners", "recommend"))
        counts["future_auc"], counts["future_ndcg"] = judge(future, scores, recs)
        counts["new_auc"], counts["new_ndcg"] = judge(future, scores, recs, new_only=True)
        results[name] = {**counts, "seconds": seconds, "buy_auc": buyers["auc"], "buy_baseline": buyers["baseline_auc"],
                         "churn_auc": churners["auc"], "scored": buyers["scored_customers"],
                         "ndcg": recommend["ndcg_at_10"], "ndcg_lift": recommend["ndcg_at_10_lift"],
                         "evaluated": recommend["evaluated_customers"],
                         "identity": result.node("shop").metrics.get("identity")}
    print(f"\nAgainst the future ({FUTURE_DAYS} days after the data the pipelines see), per true customer:")
    new = sum(1 for p in future["people"] if future["past_orders"].get(p, 0) <= 1)
    print(f"\n| run | purchase AUC | NDCG@10 of recommendations vs products bought | the same for the {new:,} "
          "customers with at most one order before: AUC | NDCG@10 |\n|---|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['future_auc']:.3f} | {r['future_ndcg']:.4f} | {r['new_auc']:.3f} | {r['new_ndcg']:.4f} |")
    print("\nAs the nodes report it, on their own holdouts:")
    print("\n| run | customer ids with orders | with events | events | product events | purchase AUC (recency baseline) | churn AUC | customers scored | recommend NDCG@10 (x popularity) | customers evaluated | run s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['buyers']:,} | {r['with_events']:,} | {r['events']:,} | {r['product_events']:,} | "
              f"{r['buy_auc']:.3f} ({r['buy_baseline']:.3f}) | {r['churn_auc']:.3f} | {r['scored']:,} | "
              f"{r['ndcg']:.4f} ({r['ndcg_lift']}x) | {r['evaluated']:,} | {r['seconds']:.1f} |")
    print(f"\ntrue customers: {results['stitched']['true_customers']:,}; identity graph: {results['stitched']['identity']}")
    print(f"workspace: {root}")


def person(user_id: str) -> str:
    """The true customer of an id: an older, merged account is `legacy-<user id>`."""
    return user_id.removeprefix("legacy-")


def future_truth(wh: Any, cutoff: datetime) -> dict[str, Any]:
    """Per true customer: bought after the cutoff or not, and the products bought."""
    import orjson

    people = [r["user_id"] for r in wh.sql("select user_id from demo_shop_truth.customers").to_pyarrow().to_pylist()]
    bought: dict[str, set[str]] = {}
    for row in wh.sql(f"select user_id, products from demo_shop.order_completed "
                      f"where \"timestamp\" > timestamp '{cutoff.isoformat()}'").to_pyarrow().to_pylist():
        items = bought.setdefault(person(row["user_id"]), set())
        items.update(p["product_id"] for p in orjson.loads(row["products"]))
    past: dict[str, int] = {}
    for row in wh.sql(f"select user_id, count(*) as n from {PAST}.order_completed group by 1").to_pyarrow().to_pylist():
        past[person(row["user_id"])] = past.get(person(row["user_id"]), 0) + row["n"]
    return {"people": people, "bought": bought, "past_orders": past}


def _by_person(values: dict[str, Any]) -> dict[str, Any]:
    """One value per true customer: its main user id's, else its older account's."""
    out: dict[str, Any] = {}
    for user_id in sorted(values, key=lambda u: u.startswith("legacy-"), reverse=True):
        out[person(user_id)] = values[user_id]  # main ids last: they win
    return out


def judge(future: dict[str, Any], scores: dict[str, float], recs: dict[str, list[str]],
          new_only: bool = False) -> tuple[float, float]:
    """Purchase AUC over every true customer (unscored: lowest), and mean NDCG@10 of the
    recommendations over the customers who bought in the future window; ``new_only``: only
    customers with at most one order before it."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    scores, recs = _by_person(scores), _by_person(recs)
    people = [p for p in future["people"] if not new_only or future["past_orders"].get(p, 0) <= 1]
    y = np.array([p in future["bought"] for p in people])
    s = np.array([scores.get(p, -1.0) for p in people])
    auc = float(roc_auc_score(y, s))
    discounts = 1 / np.log2(np.arange(2, 12))
    ndcg = []
    for p, items in future["bought"].items():
        if new_only and future["past_orders"].get(p, 0) > 1:
            continue
        hits = np.array([item in items for item in (recs.get(p) or [])[:10]], dtype=float)
        ideal = discounts[: min(10, len(items))].sum()
        ndcg.append(float((hits * discounts[: len(hits)]).sum() / ideal))
    return auc, float(np.mean(ndcg))


if __name__ == "__main__":
    main()
