"""Recommend with and without identity stitching, judged like with like (issue 22, item 3).

Run:  .venv/bin/python bench/recommend_identity.py --customers 20000 --workdir /tmp/rid20k
      .venv/bin/python bench/recommend_identity.py --workdir <a bench/identity.py workdir>   (reuses its data)

The demo data with split ids (``segloop demo-data``'s default), the last 30 days cut off as
the future (``demo_past`` holds the rest), as bench/identity.py does. Each variant runs the
demo pipeline's ``shop`` -> ``product_events`` -> ``recommend`` (``top_n: 10``) twice:
stitched (``canonical_user_id``) and unstitched (``user_id``, no ``identity:``).

Judged like with like: the same people (the generator's truth; an older merged account
counts for its person, whose main id's list is judged), the same future orders, and as
relevant only the products a person bought in the future and had not bought before (the
node never recommends a product it knows was bought, so repeat purchases measure nothing
it tries to do; the all-products figure is printed too). The node's own holdout figures
are not comparable across the two runs: their customers are different ids (a merged
customer is two ids unstitched) and their held-out orders are attributed differently.
The breakdown by the share of a person's product views that only stitching attributes to
them shows where a change comes from. Prints Markdown tables for bench/README.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEMO_WEIGHTS = {"Product Viewed": 1, "Product Added": 3, "Order Completed": 5}  # the demo's, before
VARIANTS: dict[str, dict[str, Any]] = {  # weights given, whatever demo.yml says now
    "view 1, add 3, order 5 (the demo's weights before issue 22)": {"weights": DEMO_WEIGHTS},
    "same, `tune: true`": {"tune": True, "weights": DEMO_WEIGHTS},
    "adds and orders only (view 0, add 3, order 5)": {"weights": {"Product Viewed": 0, "Product Added": 3,
                                                                  "Order Completed": 5}},
    "adds and orders only, `tune: true`": {"tune": True, "weights": {"Product Viewed": 0, "Product Added": 3,
                                                                     "Order Completed": 5}},
}
SHARE_BANDS = ((0.0, 0.1), (0.1, 0.4), (0.4, 1.01))


def _identity_bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_identity", ROOT / "bench" / "identity.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def pipeline_text(identity: Any, stitched: bool, name: str, settings: dict[str, Any]) -> str:
    data = yaml.safe_load(identity.pipeline_text(stitched))
    data["name"] = name
    data["nodes"] = {k: v for k, v in data["nodes"].items() if k in ("shop", "product_events", "recommend")}
    data["nodes"]["shop"]["tables"] = ["product_viewed", "product_added", "order_completed"]
    data["nodes"]["recommend"].update(settings)
    data["nodes"]["recommend"].pop("wide_items", None)
    return yaml.safe_dump(data, sort_keys=False)


def truth(wh: Any, cutoff: Any, stitched_views: str) -> dict[str, Any]:
    """Per person: products bought after the cutoff, products bought before, and for each
    person the share of their product views (before the cutoff) that carry no user id."""
    def person_products(sql: str) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for row in wh.sql(sql).to_pyarrow().to_pylist():
            out.setdefault(row["person"], set()).add(row["product_id"])
        return out

    person = "replace(user_id, 'legacy-', '')"
    products = "unnest(from_json(products, '[\"json\"]')) ->> 'product_id'"
    future = person_products(f"select {person} as person, {products} as product_id from demo_shop.order_completed "
                             f"where \"timestamp\" > timestamp '{cutoff.isoformat()}'")
    past = person_products(f"select {person} as person, {products} as product_id from demo_past.order_completed")
    hidden = {r["person"]: r["share"] for r in wh.sql(
        "select replace(canonical_user_id, 'legacy-', '') as person, avg((user_id is null)::int) as share "
        f"from {stitched_views} where canonical_user_id is not null group by 1").to_pyarrow().to_pylist()}
    people = wh.sql("select count(*) as n from demo_shop_truth.customers").to_pyarrow().to_pylist()[0]["n"]
    return {"future": future, "past": past, "hidden": hidden, "people": people}


def lists_by_person(wh: Any, table: str) -> tuple[dict[str, list[str]], int]:
    rows = wh.sql(f"select user_id, recommended from {table} order by user_id like 'legacy-%' desc").to_pyarrow()
    out: dict[str, list[str]] = {}
    for row in rows.to_pylist():  # an older account first, its person's main id last: the main id wins
        out[row["user_id"].removeprefix("legacy-")] = row["recommended"]
    return out, rows.num_rows


def ndcg(ranked: list[str] | None, relevant: set[str], k: int = 10) -> float:
    import math

    hits = [item in relevant for item in (ranked or [])[:k]]
    dcg = sum(1 / math.log2(i + 2) for i, hit in enumerate(hits) if hit)
    return dcg / sum(1 / math.log2(i + 2) for i in range(min(k, len(relevant))))


def judge(lists: dict[str, list[str]], t: dict[str, Any]) -> dict[str, Any]:
    new, every, bands = [], [], {band: [] for band in SHARE_BANDS}
    for person, bought in t["future"].items():
        every.append(ndcg(lists.get(person), bought))
        fresh = bought - t["past"].get(person, set())
        if fresh:
            value = ndcg(lists.get(person), fresh)
            new.append(value)
            share = t["hidden"].get(person, 0.0)
            for lo, hi in SHARE_BANDS:
                if lo <= share < hi:
                    bands[(lo, hi)].append(value)
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    return {"new": mean(new), "n_new": len(new), "all": mean(every), "n_all": len(every),
            "bands": {band: (mean(xs), len(xs)) for band, xs in bands.items()}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--no-tune", action="store_true", help="leave out the `tune: true` variants (slow)")
    parser.add_argument("--only-tune", action="store_true", help="only the `tune: true` variants")
    args = parser.parse_args()
    variants = {k: v for k, v in VARIANTS.items()
                if not (args.no_tune and v.get("tune")) and not (args.only_tune and not v.get("tune"))}

    from segloop.demo import DEFAULT_END
    from segloop.pipeline import Pipeline
    from segloop.warehouses import DuckDBConfig, Warehouse

    identity = _identity_bench()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="segloop-recid-"))
    (root / "pipelines").mkdir(parents=True, exist_ok=True)
    (root / "segloop.yml").write_text("warehouses:\n  default:\n    type: duckdb\n    path: .segloop/warehouse.duckdb\n")
    cutoff = DEFAULT_END - timedelta(days=identity.FUTURE_DAYS)
    with Warehouse.connect(DuckDBConfig(path=".segloop/warehouse.duckdb"), root) as wh:
        if "demo_shop" not in wh.list_schemas():
            stats = identity.write_demo_with_past(wh, args.customers, args.seed, cutoff)
            print(f"demo data: {stats.customers:,} customers, {stats.events:,} events")
    results: dict[tuple[str, bool], dict[str, Any]] = {}
    t: dict[str, Any] = {}
    for label, settings in variants.items():
        number = list(VARIANTS).index(label)
        for stitched in (False, True):
            name = f"rec{number}_{'stitched' if stitched else 'unstitched'}"
            path = root / "pipelines" / f"{name}.yml"
            path.write_text(pipeline_text(identity, stitched, name, settings))
            started = time.perf_counter()
            result = Pipeline.load(path).run()
            node = result.node("recommend")
            if node.status != "success":
                raise SystemExit(f"{name}: {node.error}")
            seconds = time.perf_counter() - started
            with Warehouse.connect(DuckDBConfig(path=".segloop/warehouse.duckdb"), root) as wh:
                if not t and stitched:
                    t = truth(wh, cutoff, f"{name}__shop__product_viewed")
                lists, ids = lists_by_person(wh, f"{name}__recommend")
            results[(label, stitched)] = {"lists": lists, "ids": ids, "metrics": node.metrics, "seconds": seconds}
            print(f"{name}: {seconds:.1f} s", flush=True)
    print(f"\nPeople: {t['people']:,}; bought in the {identity.FUTURE_DAYS} days after the data: "
          f"{len(t['future']):,}, of whom {sum(1 for p, b in t['future'].items() if b - t['past'].get(p, set())):,} "
          "bought a product new to them.\n")
    print("| recommend | run | customer ids scored | NDCG@10, new products (like with like) | NDCG@10, all products "
          "| node's own holdout NDCG@10 (customers) | chosen settings |")
    print("|---|---|---:|---:|---:|---:|---|")
    for (label, stitched), r in results.items():
        j = r["judged"] = judge(r["lists"], t)
        m = r["metrics"]
        chosen = (m.get("tuning") or {}).get("chosen", "")
        print(f"| {label} | {'stitched' if stitched else 'unstitched'} | {r['ids']:,} | {j['new']:.4f} | {j['all']:.4f} "
              f"| {m['ndcg_at_10']:.4f} ({m['evaluated_customers']:,}) | {chosen} |")
    print("\nNDCG@10 (new products) by the share of a person's product views that only stitching attributes to them:\n")
    print("| recommend | " + " | ".join(f"{lo:.0%}-{min(hi, 1):.0%} (people)" for lo, hi in SHARE_BANDS) + " |")
    print("|---|" + "---:|" * len(SHARE_BANDS))
    for label in variants:
        cells = []
        for band in SHARE_BANDS:
            (u, n), (s, _) = results[(label, False)]["judged"]["bands"][band], results[(label, True)]["judged"]["bands"][band]
            cells.append(f"{u:.4f} -> {s:.4f} ({n:,})")
        print(f"| {label} | " + " | ".join(cells) + " |")
    print(f"\nworkspace: {root}")


if __name__ == "__main__":
    main()
