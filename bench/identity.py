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

``--stitch-timing N`` then times the stitched event views themselves on the stitched run's
identity graph: ``segloop.segment.identity.stitch`` (a join for the user id and another for
the anonymous id) against ``stitch_one_lookup`` below (one join on the identities pivoted
to a row per id), N times each, alternating, after checking both give every event the same
canonical user id. ``--stitch-only`` skips the pipelines (a workdir of an earlier run).
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


def write_demo_with_past(wh: Any, customers: int, seed: int, cutoff: datetime, schema: str = "demo_shop",
                         past: str = PAST, split_ids: bool = True) -> Any:
    """Demo data in ``schema`` (split ids unless told otherwise) and a copy of it up to
    ``cutoff`` in ``past``, the history the pipelines see; returns the demo data's stats."""
    from segloop.demo import write_demo_data

    stats = write_demo_data(wh, schema=schema, customers=customers, seed=seed, split_ids=split_ids)
    wh.raw_sql(f"create schema if not exists {past}")
    for table in wh.list_tables(schema):
        column = "received_at" if table == "users" else '"timestamp"'
        wh.raw_sql(f"create or replace table {past}.{table} as select * from {schema}.{table} "
                   f"where {column} <= timestamp '{cutoff.isoformat()}'")
    return stats


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
    parser.add_argument("--stitch-timing", type=int, default=0, metavar="N")
    parser.add_argument("--stitch-only", action="store_true")
    args = parser.parse_args()

    from segloop.demo import DEFAULT_END
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
            stats = write_demo_with_past(wh, args.customers, args.seed, cutoff)
            print(f"demo data: {stats.customers:,} customers, {stats.events:,} events, {stats.seconds:.1f} s")
        future = future_truth(wh, cutoff)
    results: dict[str, dict[str, Any]] = {}
    paired: dict[str, tuple[dict[str, float], dict[str, float]]] = {}
    for name in () if args.stitch_only else ("unstitched", "stitched"):
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
        per_person_ndcg = judge_new_products(future, recs)
        counts["ndcg_new_products"] = sum(per_person_ndcg.values()) / len(per_person_ndcg)
        counts["judged_new_products"] = len(per_person_ndcg)
        paired[name] = (_by_person(scores), per_person_ndcg)
        people_scored = len(set(future["people"]) & set(_by_person(scores)))
        results[name] = {**counts, "seconds": seconds, "people_scored": people_scored,
                         "buy_auc": buyers["auc"], "buy_baseline": buyers["baseline_auc"],
                         "churn_auc": churners["auc"], "scored": buyers["scored_customers"],
                         "ndcg": recommend["ndcg_at_10"], "ndcg_lift": recommend["ndcg_at_10_lift"],
                         "evaluated": recommend["evaluated_customers"],
                         "identity": result.node("shop").metrics.get("identity")}
    if args.stitch_timing:
        stitch_timing(root, args.stitch_timing)
    if not results:
        return
    print(f"\nAgainst the future ({FUTURE_DAYS} days after the data the pipelines see), per true customer:")
    new = sum(1 for p in future["people"] if future["past_orders"].get(p, 0) <= 1)
    print(f"\n| run | customer ids scored | true customers scored | purchase AUC | NDCG@10 vs products bought "
          f"| NDCG@10 vs products new to the customer | the same for the {new:,} "
          "customers with at most one order before: AUC | NDCG@10 |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['scored']:,} | {r['people_scored']:,} | {r['future_auc']:.4f} | {r['future_ndcg']:.4f} "
              f"| {r['ndcg_new_products']:.4f} ({r['judged_new_products']:,} customers) "
              f"| {r['new_auc']:.4f} | {r['new_ndcg']:.4f} |")
    print("\n| stitched - unstitched, per true customer | estimate | 95% paired bootstrap range (400 resamples) |"
          "\n|---|---:|---:|")
    for label, (estimate, lo, hi) in bootstrap(future, paired).items():
        print(f"| {label} | {estimate:+.4f} | {lo:+.4f} to {hi:+.4f} |")
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
    past_products: dict[str, set[str]] = {}
    for row in wh.sql(f"select user_id, products from {PAST}.order_completed").to_pyarrow().to_pylist():
        who = person(row["user_id"])
        past[who] = past.get(who, 0) + 1
        past_products.setdefault(who, set()).update(p["product_id"] for p in orjson.loads(row["products"]))
    return {"people": people, "bought": bought, "past_orders": past, "past_products": past_products}


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


def judge_new_products(future: dict[str, Any], recs: dict[str, list[str]]) -> dict[str, float]:
    """NDCG@10 of each customer who bought a product in the future that they had not bought
    before, with those products as the relevant ones (the node never recommends a product it
    saw bought), as bench/recommend_identity.py judges."""
    import numpy as np

    recs = _by_person(recs)
    discounts = 1 / np.log2(np.arange(2, 12))
    scores: dict[str, float] = {}
    for p, items in future["bought"].items():
        relevant = items - future["past_products"].get(p, set())
        if not relevant:
            continue
        hits = np.array([item in relevant for item in (recs.get(p) or [])[:10]], dtype=float)
        ideal = discounts[: min(10, len(relevant))].sum()
        scores[p] = float((hits * discounts[: len(hits)]).sum() / ideal)
    return scores


def bootstrap(future: dict[str, Any], paired: dict[str, tuple[dict[str, float], dict[str, float]]],
              resamples: int = 400) -> dict[str, tuple[float, float, float]]:
    """Stitched minus unstitched purchase AUC (over every true customer) and NDCG@10 on new
    products (over the customers judged), with a paired bootstrap's 95% range."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    people = future["people"]
    y = np.array([p in future["bought"] for p in people])
    s = {name: np.array([scores.get(p, -1.0) for p in people]) for name, (scores, _) in paired.items()}
    judged = sorted(paired["stitched"][1])
    g = {name: np.array([ndcg[p] for p in judged]) for name, (_, ndcg) in paired.items()}
    rng = np.random.default_rng(0)
    auc_gain, ndcg_gain = [], []
    for _ in range(resamples):
        i = rng.integers(0, len(people), len(people))
        auc_gain.append(roc_auc_score(y[i], s["stitched"][i]) - roc_auc_score(y[i], s["unstitched"][i]))
        j = rng.integers(0, len(judged), len(judged))
        ndcg_gain.append(g["stitched"][j].mean() - g["unstitched"][j].mean())
    out = {}
    for label, estimate, values in (
            ("purchase AUC", roc_auc_score(y, s["stitched"]) - roc_auc_score(y, s["unstitched"]), auc_gain),
            ("NDCG@10, products new to the customer", g["stitched"].mean() - g["unstitched"].mean(), ndcg_gain)):
        lo, hi = np.percentile(values, [2.5, 97.5])
        out[label] = (float(estimate), float(lo), float(hi))
    return out


def stitch_one_lookup(table: Any, identities: Any) -> Any:
    """``segloop.segment.identity.stitch`` with one join instead of two: the identities
    pivoted to one row per id, looked up by the event's user id, else its anonymous id
    (tried for issue 22 and timed here against the two joins; slower on DuckDB)."""
    import ibis

    from segloop.segment.identity import ANONYMOUS, CANONICAL_COLUMN, USER, column_of

    user = column_of(table, "user_id")
    anon = column_of(table, "anonymous_id")
    if user is None or anon is None or column_of(table, CANONICAL_COLUMN) is not None:
        from segloop.segment.identity import stitch

        return stitch(table, identities)  # one id column: one join either way

    def text(t: Any, column: str) -> Any:
        value = t[column]
        return (value if value.type().is_string() else value.cast("string")).nullif("")

    by_id = identities.group_by(_sl_id=identities.id).aggregate(
        _sl_user=identities.canonical_user_id.max(where=identities.id_type == USER),
        _sl_anon=identities.canonical_user_id.max(where=identities.id_type == ANONYMOUS))
    joined = table.left_join(by_id, text(table, user).coalesce(text(table, anon)) == by_id._sl_id)
    user_id = text(joined, user)
    canonical = ibis.ifelse(user_id.notnull(), joined._sl_user.coalesce(user_id), joined._sl_anon)
    return joined.select(*[joined[c] for c in table.columns], **{CANONICAL_COLUMN: canonical})


def per_canonical_user(fn: Any, table: Any, identities: Any) -> Any:
    """Events per canonical user of ``table`` stitched by ``fn`` (``stitch`` or ``stitch_one_lookup``)."""
    view = fn(table, identities)
    return view.group_by("canonical_user_id").aggregate(n=view.count())


def time_stitch_variants(read: Any, repeats: int) -> dict[str, list[float]]:
    """Seconds of ``read(stitch)`` and ``read(stitch_one_lookup)``, ``repeats`` times each,
    alternating (this script's ``--stitch-timing`` and bench/identity_stitch_pg.py)."""
    from segloop.segment.identity import stitch

    seconds: dict[str, list[float]] = {"two joins": [], "one lookup": []}
    for _ in range(repeats):
        for label, fn in (("two joins", stitch), ("one lookup", stitch_one_lookup)):
            started = time.perf_counter()
            read(fn)
            seconds[label].append(time.perf_counter() - started)
    return seconds


def print_stitch_timing(seconds: dict[str, list[float]], same: str) -> None:
    """The table of ``time_stitch_variants``'s seconds and the ratio of the medians."""
    import statistics

    print("| stitch | median s | min s | max s |\n|---|---:|---:|---:|")
    for label, values in seconds.items():
        print(f"| {label} | {statistics.median(values):.3f} | {min(values):.3f} | {max(values):.3f} |")
    ratio = statistics.median(seconds["two joins"]) / statistics.median(seconds["one lookup"])
    print(f"\ntwo joins / one lookup (medians): {ratio:.2f}x; {same}")


def stitch_timing(root: Path, repeats: int) -> None:
    """Events per canonical user from the stitched views, old and new stitching, same data."""
    from segloop.segment.identity import stitch
    from segloop.warehouses import DuckDBConfig, Warehouse

    tables = ("tracks", "product_viewed", "order_completed")
    with Warehouse.connect(DuckDBConfig(path=".segloop/warehouse.duckdb"), root) as wh:
        identities = wh.table("stitched__shop__identities")
        rows = {t: wh.count(wh.table(t, schema=PAST)) for t in tables}
        for name in tables:  # the same canonical user for every event, not just the same counts
            old = stitch_one_lookup(wh.table(name, schema=PAST), identities).select("id", a="canonical_user_id")
            new = stitch(wh.table(name, schema=PAST), identities).select(nid="id", b="canonical_user_id")
            pair = old.inner_join(new, old.id == new.nid)
            differ = wh.count(pair.filter(~pair.a.identical_to(pair.b)))
            if differ or wh.count(pair) != rows[name]:
                raise SystemExit(f"{name}: {differ} events get another canonical user id")

        def read(fn: Any) -> None:
            for name in tables:
                wh.to_arrow(per_canonical_user(fn, wh.table(name, schema=PAST), identities))

        seconds = time_stitch_variants(read, repeats)
    total = sum(rows.values())
    print(f"\nStitched views read in full (events per canonical user of {', '.join(tables)}: {total:,} events), "
          f"{repeats} times each, alternating:\n")
    print_stitch_timing(seconds, "every event's canonical user id identical")

if __name__ == "__main__":
    main()
