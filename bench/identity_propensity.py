"""Propensity on the demo with one id per customer, split ids unstitched, and split ids
stitched: customers counted and purchase AUC, in one run (issue 22).

Run:  .venv/bin/python bench/identity_propensity.py                    (5,000 customers)
      .venv/bin/python bench/identity_propensity.py --customers 20000
      .venv/bin/python bench/identity_propensity.py --customers 20000 --runs unstitched,stitched \
          --model-seeds 3 --workdir <a workdir of an earlier run: its data is reused>

Two copies of the same demo data (same seed) in one DuckDB file: ``one_shop`` as
``segloop demo-data --one-id-per-customer`` writes it (every event under its customer's
``user_id``) and ``demo_shop`` as ``segloop demo-data`` writes it by default (browsing before
sign-up and on a logged-out phone under anonymous ids only, merged accounts, shared
phones: ``segloop.demo_identity``). The last 30 days of each are hidden from the pipelines
(copied without them to ``*_past``) and are the future the scores are judged against.

The pipelines are examples/demo/pipelines/demo.yml's `shop`, `orders`, `events`,
`likely_buyers` and `likely_churners` as they are (``identity: stitch``,
``canonical_user_id``) for `stitched`; with ``user_id`` and no ``identity:`` for
`unstitched` (split ids) and `one_id` (one id per customer, the ceiling stitching aims at);
`orders_only` is `one_id` with the events cut to the orders (no browsing at all), which
says what the browsing that stitching recovers can be worth at most.

Against the future, each true customer counts once: a customer scored under two ids (an
older merged account) is judged on the main one, a customer not scored at all ranks last.
The gain's noise is a paired bootstrap over true customers (95% range of the AUC
difference, 400 resamples). ``--model-seeds N`` runs each pipeline N times with the
propensity nodes' ``seed:`` 0..N-1 (the boosting's early-stopping split), which shows the
model's own noise; the data's noise needs another ``--seed`` (another demo data set).

``--subgroups all,30,14`` (the default, with `stitched` among the runs) repeats the AUC,
and the precision a marketer sees (buyers among a group's top 10% and top 40% of scores),
with the same paired bootstrap, on the customers the anonymous history reaches: those with
at least one event that carried no user id and that stitching attributes to them, anywhere
in the history the pipelines see (``all``) or in its last N days (``30``, ``14``), and on
the other customers. The groups come from the stitched run's identity graph and the events
before the cutoff only, never from the future; ``--subgroups ''`` skips them.

Each run leaves its per-customer results in ``<workdir>/per_customer.npz`` (who bought, every
run's scores, the groups, the run table). ``--pool DIR,DIR,...`` runs nothing: it reads the
files of runs on different demo data sets (``--seed``; each with `stitched` and
`unstitched`, the same model seeds) and pools their stitched - unstitched AUC gains, over
all customers and the groups: a data set's gain is the mean over its model seeds, the
pooled gain the mean over the data sets, and its 95% range a paired bootstrap that
resamples customers within each data set (``--resamples``, 1,000). That range holds the
customers' noise only, not the model's (the boosting's seed) nor the data set's, so the
table also gives a t interval over the data sets' gains, each data set a replicate of
the whole experiment.

      .venv/bin/python bench/identity_propensity.py --pool <workdir of seed 7>,<workdir of seed 8>
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "demo" / "pipelines" / "demo.yml"
KEEP = ("shop", "orders", "events", "likely_buyers", "likely_churners")
FUTURE_DAYS = 30
PER_CUSTOMER = "per_customer.npz"
RUNS = {  # name: (schema with the past, stitched)
    "orders_only": ("one_past", False),  # one id, no browsing at all: what browsing is worth
    "one_id": ("one_past", False),
    "unstitched": ("demo_past", False),
    "stitched": ("demo_past", True),
}


def pipeline_text(name: str, schema: str, stitched: bool, model_seed: int = 0) -> str:
    data = yaml.safe_load(DEMO.read_text())
    data["name"] = name
    for node in ("likely_buyers", "likely_churners"):
        data["nodes"][node]["seed"] = model_seed
    data["nodes"] = {k: v for k, v in data["nodes"].items() if k in KEEP}
    data["nodes"]["shop"]["schema"] = schema
    if not stitched:
        data["nodes"]["shop"].pop("identity", None)
        for node in data["nodes"].values():
            if "sql" in node:
                node["sql"] = node["sql"].replace("canonical_user_id as user_id", "user_id").replace(
                    "canonical_user_id", "user_id")
    if name.startswith("orders_only"):
        data["nodes"]["events"]["sql"] = data["nodes"]["events"]["sql"].replace(
            "from shop.tracks where", "from shop.tracks where event = 'order_completed' and")
    return yaml.safe_dump(data, sort_keys=False)


def person(user_id: str) -> str:
    """The true customer of an id: an older, merged account is `legacy-<user id>`."""
    return user_id.removeprefix("legacy-")


def by_person(scores: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for user_id in sorted(scores, key=lambda u: u.startswith("legacy-"), reverse=True):
        out[person(user_id)] = scores[user_id]  # main ids last: they win
    return out


def run_name(name: str, model_seed: int) -> str:
    """A run's pipeline name, and its scores' name in per_customer.npz (``score:<name>``)."""
    return name if model_seed == 0 else f"{name}_m{model_seed}"


def auc(y: np.ndarray, s: np.ndarray) -> float:
    from segloop.models.scoring import roc_auc

    return float(roc_auc(y, s))


def reached_groups(config: Any, root: Path, people: list[str], cutoff: Any,
                   spec: str) -> dict[str, np.ndarray]:
    """Boolean masks over ``people``: reached by anonymous events (any / last N days) and not."""
    from segloop.warehouses import Warehouse

    out: dict[str, np.ndarray] = {}
    index = {p: i for i, p in enumerate(people)}
    with Warehouse.connect(config, root) as wh:
        for item in [s.strip() for s in spec.split(",") if s.strip()]:
            since = "" if item == "all" else (
                f"and t.\"timestamp\" > timestamp '{cutoff.isoformat()}' - interval {int(item)} day")
            rows = wh.sql(
                "select distinct i.canonical_user_id as user_id from demo_past.tracks t "
                "join stitched__shop__identities i on i.id = t.anonymous_id "
                "and i.id_type = 'anonymous_id' "
                f"where t.user_id is null and i.canonical_user_id is not null {since}"
            ).to_pyarrow().to_pylist()
            mask = np.zeros(len(people), dtype=bool)
            for r in rows:
                if person(r["user_id"]) in index:
                    mask[index[person(r["user_id"])]] = True
            label = "in the whole history" if item == "all" else f"in the last {int(item)} days"
            out[f"reached {label}"] = mask
            out[f"not reached {label}"] = ~mask
    return out


def precision_at(share: float) -> Any:
    """Buyers among the top ``share`` of a group's scores (ties at the cut broken by order)."""
    from segloop.models.scoring import top_lift

    return lambda y, s: top_lift(y, s, share) * float(np.mean(y))


def print_groups(groups: dict[str, np.ndarray], y: np.ndarray, scores_of: dict[str, np.ndarray],
                 pairs: list[tuple[str, str]], runs: list[str], seeds: list[int]) -> None:
    """Per group: size, buyer rate, AUC and precision at the top 10% / 40% per run (mean over
    model seeds), and each gain per model seed with its paired bootstrap range."""
    metrics = {"AUC": auc, "precision top 10%": precision_at(0.1), "precision top 40%": precision_at(0.4)}
    groups = {"all customers": np.ones(len(y), dtype=bool), **groups}
    print("\n| group | customers | share | bought in the future | run | "
          + " | ".join(f"{k}, mean over model seeds" for k in metrics) + " |\n|---|---:|---:|---:|---|"
          + "---:|" * len(metrics))
    for label, mask in groups.items():
        for name in runs:
            cells = [np.mean([f(y[mask], scores_of[run_name(name, m)][mask]) for m in seeds])
                     for f in metrics.values()]
            print(f"| {label} | {int(mask.sum()):,} | {mask.mean():.1%} | {y[mask].mean():.1%} | {name} | "
                  + " | ".join(f"{c:.4f}" for c in cells) + " |")
    print("\n| group | gain | model seed | " + " | ".join(f"{k} gain (95% paired bootstrap range)" for k in metrics)
          + " |\n|---|---|---:|" + "---:|" * len(metrics))
    summary: list[str] = []
    for label, mask in groups.items():
        idx = np.flatnonzero(mask)
        rng = np.random.default_rng(0)
        draws = [idx[rng.integers(0, len(idx), len(idx))] for _ in range(400)]
        draws = [i for i in draws if y[i].min() != y[i].max()]
        for a, b in pairs:
            per_seed: dict[str, list[float]] = {k: [] for k in metrics}
            boot: dict[str, list[np.ndarray]] = {k: [] for k in metrics}
            for m in seeds:
                sa, sb = scores_of[run_name(a, m)], scores_of[run_name(b, m)]
                cells = []
                for k, f in metrics.items():
                    gain = f(y[idx], sa[idx]) - f(y[idx], sb[idx])
                    resampled = np.array([f(y[i], sa[i]) - f(y[i], sb[i]) for i in draws])
                    lo, hi = np.percentile(resampled, [2.5, 97.5])
                    cells.append(f"{gain:+.4f} ({lo:+.4f} to {hi:+.4f})")
                    per_seed[k].append(gain)
                    boot[k].append(resampled)
                print(f"| {label} | {a} - {b} | {m} | " + " | ".join(cells) + " |")
            # the seeds' mean gain on the same resampled customers: the bootstrap of the mean
            ranges = {k: np.percentile(np.mean(boot[k], axis=0), [2.5, 97.5]) for k in metrics}
            summary.append(f"| {label} | {a} - {b} | " + " | ".join(
                f"{np.mean(v):+.4f} ({ranges[k][0]:+.4f} to {ranges[k][1]:+.4f}; seeds {np.min(v):+.4f} "
                f"to {np.max(v):+.4f})" for k, v in per_seed.items()) + " |")
    print("\n| group | gain | " + " | ".join(
        f"{k} gain, mean over model seeds (95% paired bootstrap range of the mean; seeds min to max)"
        for k in metrics) + " |\n|---|---|" + "---:|" * len(metrics))
    print("\n".join(summary))


def pool(folders: list[Path], resamples: int) -> None:
    """``--pool``: stitched - unstitched purchase AUC over several demo data sets at once.

    Each folder is the workdir of an earlier run with `stitched` and `unstitched` among its
    runs (its per_customer.npz). A data set's gain is the mean over its model seeds of the
    AUC difference on a group; the pooled gain is the mean of the data sets' gains (each data
    set weighs the same). The bootstrap resamples customers within each data set (the same
    customers for every model seed and both runs: paired), so its range holds the data sets'
    customers' noise only (the scores are fixed; averaging the model seeds makes the gain
    less noisy but puts none of the model's noise into the range). The t interval over the
    data sets' gains holds the model's and the data's noise too."""
    from scipy.stats import t as t_dist

    sets = []
    for folder in folders:
        with np.load(folder / PER_CUSTOMER) as f:
            data = {k: f[k] for k in f.files}
        seeds = sorted(int(k.removeprefix("score:stitched").removeprefix("_m") or 0)
                       for k in data if k.startswith("score:stitched"))
        if not seeds or any(f"score:{run_name('unstitched', m)}" not in data for m in seeds):
            raise SystemExit(f"{folder / PER_CUSTOMER}: needs the runs stitched and unstitched, "
                             "for the same model seeds")
        y = data["y"].astype(bool)
        pairs = [(data[f"score:{run_name('stitched', m)}"], data[f"score:{run_name('unstitched', m)}"])
                 for m in seeds]
        groups = {"all customers": np.ones(len(y), dtype=bool),
                  **{k.removeprefix("group:"): data[k].astype(bool) for k in data if k.startswith("group:")}}
        sets.append({"folder": folder, "seed": int(data["data_seed"]), "y": y, "pairs": pairs,
                     "groups": groups, "summary": json.loads(str(data["summary"]))})
    seeds_seen = [d["seed"] for d in sets]
    if len(set(seeds_seen)) < len(seeds_seen):  # the same data twice would narrow the range for nothing
        raise SystemExit(f"--pool: data seeds {seeds_seen} repeat; pool different data sets")
    labels = [g for g in sets[0]["groups"]  # the complements ("not reached ...") left out
              if not g.startswith("not ") and all(g in d["groups"] for d in sets)]

    def gain(d: dict[str, Any], idx: np.ndarray) -> float:
        y = d["y"][idx]
        return float(np.mean([auc(y, a[idx]) - auc(y, b[idx]) for a, b in d["pairs"]]))

    print(f"\n{len(sets)} demo data sets (seeds {', '.join(str(d['seed']) for d in sets)}).\n")
    print("| data seed | customers | bought in the future | customer ids scored, unstitched (true "
          "customers among them) | stitched | events the models see, unstitched | stitched |\n"
          "|---:|---:|---:|---:|---:|---:|---:|")
    for d in sets:
        r = d["summary"]
        print(f"| {d['seed']} | {len(d['y']):,} | {int(d['y'].sum()):,} | {r['unstitched']['scored']:,} "
              f"({r['unstitched']['people_scored']:,}) | {r['stitched']['scored']:,} "
              f"({r['stitched']['people_scored']:,}) | {r['unstitched']['events']:,} | "
              f"{r['stitched']['events']:,} |")
    def auc_of(d: dict[str, Any], idx: np.ndarray, run: int) -> float:  # 0 stitched, 1 unstitched
        return float(np.mean([auc(d["y"][idx], pair[run][idx]) for pair in d["pairs"]]))

    rng = np.random.default_rng(0)
    rows, pooled = [], []
    for label in labels:
        per_set, boot = [], []
        for d in sets:
            idx = np.flatnonzero(d["groups"][label])
            draws = (idx[rng.integers(0, len(idx), len(idx))] for _ in range(resamples))
            per_set.append(gain(d, idx))
            boot.append([gain(d, i) if d["y"][i].min() != d["y"][i].max() else np.nan for i in draws])
            lo, hi = np.nanpercentile(boot[-1], [2.5, 97.5])
            rows.append(f"| {label} | {d['seed']} | {idx.size:,} ({idx.size / d['y'].size:.1%}) | "
                        f"{d['y'][idx].mean():.1%} | {auc_of(d, idx, 1):.4f} | {auc_of(d, idx, 0):.4f} | "
                        f"{per_set[-1]:+.4f} ({lo:+.4f} to {hi:+.4f}) |")
        b = np.array(boot)  # data sets x resamples
        lo, hi = np.nanpercentile(np.nanmean(b, axis=0), [2.5, 97.5])
        above = sum(np.nanpercentile(row, 2.5) > 0 for row in b)
        size = sum(int(d["groups"][label].sum()) for d in sets)
        total = sum(d["y"].size for d in sets)
        # The data sets as replicates of the whole experiment (data, model seeds, customers):
        # a t interval over their gains holds every source of noise, the bootstrap only the customers'.
        t = t_dist.ppf(0.975, len(sets) - 1) * np.std(per_set, ddof=1) / np.sqrt(len(sets)) \
            if len(sets) > 1 else np.nan
        pooled.append(f"| {label} | {size:,} ({size / total:.1%}) | {np.mean(per_set):+.4f} | "
                      f"{lo:+.4f} to {hi:+.4f} | {np.mean(per_set) - t:+.4f} to {np.mean(per_set) + t:+.4f} | "
                      f"{sum(g > 0 for g in per_set)} of {len(sets)} | {above} of {len(sets)} |")
    print(f"\nPurchase AUC per data set, mean over its model seeds; gain stitched - unstitched with "
          f"its 95% paired bootstrap range ({resamples} resamples of the group's customers):\n")
    print("| group | data seed | customers (share) | bought in the future | AUC unstitched | AUC stitched "
          "| gain (95% range) |\n|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    print(f"\nPooled over the {len(sets)} data sets: the mean of their gains (each data set weighs the "
          "same), its 95% range from the same resamples (customers resampled within each data set):\n")
    print("| group | customers, all data sets (share) | pooled AUC gain | 95% paired bootstrap range "
          "| 95% t interval over the data sets' gains | data sets with a positive gain "
          "| data sets whose own range is above zero |\n|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(pooled))

def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--runs", default=",".join(RUNS), help="comma-separated, of: " + ", ".join(RUNS))
    parser.add_argument("--model-seeds", type=int, default=1)
    parser.add_argument("--subgroups", default="all,30,14",
                        help="comma-separated: all, or days before the cutoff (see the docstring)")
    parser.add_argument("--pool", default="",
                        help="comma-separated workdirs of earlier runs: pool their stitched - unstitched "
                             "AUC gains into one paired bootstrap, run nothing")
    parser.add_argument("--resamples", type=int, default=1000, help="with --pool")
    args = parser.parse_args()
    if args.pool:
        pool([Path(p) for p in args.pool.split(",")], args.resamples)
        return
    runs = {name: RUNS[name] for name in args.runs.split(",")}
    seeds = range(args.model_seeds)

    from segloop.demo import DEFAULT_END, write_demo_data
    from segloop.pipeline import Pipeline
    from segloop.warehouses import DuckDBConfig, Warehouse

    root = args.workdir or Path(tempfile.mkdtemp(prefix="segloop-identity-propensity-"))
    (root / "pipelines").mkdir(parents=True, exist_ok=True)
    (root / "segloop.yml").write_text(
        "warehouses:\n  default:\n    type: duckdb\n    path: .segloop/warehouse.duckdb\n")
    for name, (schema, stitched) in runs.items():
        for m in seeds:
            (root / "pipelines" / f"{run_name(name, m)}.yml").write_text(
                pipeline_text(run_name(name, m), schema, stitched, m))
    needed = {"demo_shop"} | ({"one_shop"} if any(s == "one_past" for s, _ in runs.values()) else set())
    cutoff = DEFAULT_END - timedelta(days=FUTURE_DAYS)
    config = DuckDBConfig(path=".segloop/warehouse.duckdb")
    with Warehouse.connect(config, root) as wh:
        for schema, split in (("demo_shop", True), ("one_shop", False)):
            if schema in wh.list_schemas() or schema not in needed:
                continue
            stats = write_demo_data(wh, schema=schema, customers=args.customers, seed=args.seed,
                                    split_ids=split)
            print(f"{schema}: {stats.customers:,} customers, {stats.events:,} events")
            past = schema.replace("_shop", "_past")
            wh.raw_sql(f"create schema if not exists {past}")
            for table in wh.list_tables(schema):
                column = "received_at" if table == "users" else '"timestamp"'
                wh.raw_sql(f"create or replace table {past}.{table} as select * from {schema}.{table} "
                           f"where {column} <= timestamp '{cutoff.isoformat()}'")
        people = [r["user_id"] for r in wh.sql("select user_id from demo_shop_truth.customers")
                  .to_pyarrow().to_pylist()]
        bought = {person(r["user_id"]) for r in wh.sql(
            f"select distinct user_id from demo_shop.order_completed where \"timestamp\" > "
            f"timestamp '{cutoff.isoformat()}' and user_id is not null").to_pyarrow().to_pylist()}
    y = np.array([p in bought for p in people], dtype=float)
    results: dict[str, dict[str, Any]] = {}
    scores_of: dict[str, np.ndarray] = {}
    for name in runs:
        for m in seeds:
            run = run_name(name, m)
            started = time.perf_counter()
            result = Pipeline.load(root / "pipelines" / f"{run}.yml").run()
            seconds = time.perf_counter() - started
            if not result.ok:
                raise SystemExit(f"{run}: {[(n.name, n.error) for n in result.nodes if n.error]}")
            with Warehouse.connect(config, root) as wh:
                counts = wh.sql(
                    f"select (select count(distinct user_id) from {run}__orders) as buyers, "
                    f"(select count(distinct user_id) from {run}__events) as with_events, "
                    f"(select count(*) from {run}__events) as events"
                ).to_pyarrow().to_pylist()[0]
                scores = {r["user_id"]: r["probability"] for r in
                          wh.table(f"{run}__likely_buyers").to_pyarrow().to_pylist()}
            mine = by_person(scores)
            s = np.array([mine.get(p, -1.0) for p in people])
            scores_of[run] = s
            buyers, churners = result.node("likely_buyers").metrics, result.node("likely_churners").metrics
            results[run] = {**counts, "seconds": seconds, "scored": buyers["scored_customers"],
                            "people_scored": sum(1 for p in people if p in mine),
                            "buy_auc": buyers["auc"], "baseline": buyers["baseline_auc"],
                            "churn_auc": churners["auc"], "future_auc": auc(y, s),
                            "features": buyers["features"]}
    groups = reached_groups(config, root, people, cutoff, args.subgroups) if "stitched" in runs else {}
    pairs = [(a, b) for a, b in (("stitched", "unstitched"), ("one_id", "unstitched"),
                                 ("one_id", "orders_only")) if a in runs and b in runs]
    rng = np.random.default_rng(0)
    n = len(people)
    gains: dict[tuple[str, str, int], list[float]] = {(a, b, m): [] for a, b in pairs for m in seeds}
    for _ in range(400):
        i = rng.integers(0, n, n)
        if y[i].min() == y[i].max():
            continue
        for a, b, m in gains:
            gains[(a, b, m)].append(auc(y[i], scores_of[run_name(a, m)][i])
                                    - auc(y[i], scores_of[run_name(b, m)][i]))

    print(f"\n{len(people):,} true customers; {int(y.sum()):,} bought in the {FUTURE_DAYS} days "
          "after the data the pipelines see.\n")
    print("| run | customer ids with orders | with events | events | customers scored (true customers among them) "
          "| purchase AUC vs the future, per true customer | node's validation AUC (recency baseline) "
          "| churn AUC | features | run s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['buyers']:,} | {r['with_events']:,} | {r['events']:,} | {r['scored']:,} "
              f"({r['people_scored']:,}) | {r['future_auc']:.4f} | {r['buy_auc']:.4f} ({r['baseline']:.4f}) "
              f"| {r['churn_auc']:.4f} | {r['features']} | {r['seconds']:.1f} |")
    print("\n| AUC gain vs the future | model seed | estimate | 95% paired bootstrap range |\n|---|---:|---:|---:|")
    for (a, b, m), values in gains.items():
        lo, hi = np.percentile(values, [2.5, 97.5])
        estimate = results[run_name(a, m)]["future_auc"] - results[run_name(b, m)]["future_auc"]
        print(f"| {a} - {b} | {m} | {estimate:+.4f} | {lo:+.4f} to {hi:+.4f} |")
    if len(seeds) > 1:
        print("\n| run | purchase AUC vs the future over model seeds: mean | sd | min | max |\n|---|---:|---:|---:|---:|")
        for name in runs:
            v = np.array([results[run_name(name, m)]["future_auc"] for m in seeds])
            print(f"| {name} | {v.mean():.4f} | {v.std(ddof=1):.4f} | {v.min():.4f} | {v.max():.4f} |")
        for a, b in pairs:
            d = np.array([results[run_name(a, m)]["future_auc"] - results[run_name(b, m)]["future_auc"]
                          for m in seeds])
            print(f"| {a} - {b} | {d.mean():+.4f} | {d.std(ddof=1):.4f} | {d.min():+.4f} | {d.max():+.4f} |")
    if groups:
        print_groups(groups, y, scores_of, [(a, b) for a, b in pairs if a == "stitched"],
                     list(runs), list(seeds))
    # per customer, for --pool: who bought, each run's scores, the groups
    np.savez_compressed(root / PER_CUSTOMER, people=np.array(people), y=y, data_seed=args.seed,
                        summary=json.dumps(results, default=float),
                        **{f"score:{k}": v for k, v in scores_of.items()},
                        **{f"group:{k}": v for k, v in groups.items()})
    print(f"\nworkspace: {root} (per-customer results: {root / PER_CUSTOMER})")


if __name__ == "__main__":
    main()
