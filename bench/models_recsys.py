"""Benchmark of the `recommend` and `clusters` nodes: seconds and peak memory at scale.

    .venv/bin/python bench/models_recsys.py            # full size (about 5 minutes)
    .venv/bin/python bench/models_recsys.py --scale 0.1

Sizes (scale 1): recommend on 100k customers x 5k products x 5M interaction events
(synthetic: each customer has a taste for 2 of 50 product groups, events are views, adds
and orders), clusters on 1M customers (4 synthetic segments over RFM-like columns).
Each case runs in its own process, so its peak memory (max RSS) is its own; events are
generated once into a DuckDB file, as a warehouse would hold them. Ratios at the end
compare cases side by side (evaluation cost, k: auto vs a fixed k).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def make_events(path: Path, customers: int, products: int, events: int, seed: int = 0) -> float:
    """Write `events` interaction rows to DuckDB table bench.events; returns seconds."""
    import numpy as np
    import pyarrow as pa

    from segloop.warehouses import Warehouse

    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    groups = 50
    per_group = products // groups
    taste = rng.integers(0, groups, (customers, 2))
    cust = rng.integers(0, customers, events)
    pick = taste[cust, rng.integers(0, 2, events)]
    noise = rng.random(events) < 0.2
    group = np.where(noise, rng.integers(0, groups, events), pick)
    within = np.minimum(rng.zipf(1.6, events) - 1, per_group - 1)
    item = group * per_group + within
    kind = rng.choice(3, events, p=[0.75, 0.17, 0.08])
    names = np.array(["Product Viewed", "Product Added", "Order Completed"])
    ts = np.datetime64("2026-01-01", "us") + (rng.random(events) * 180 * 86400e6).astype("timedelta64[us]")
    table = pa.table({
        "user_id": pa.array(np.char.add("u", cust.astype(str))),
        "product_id": pa.array(np.char.add("p", item.astype(str))),
        "timestamp": pa.array(ts),
        "event_text": pa.array(names[kind]),
    })
    with Warehouse.duckdb(path) as wh:
        wh.create_table("events", table, schema="bench")
    return time.perf_counter() - started


def make_customers(path: Path, customers: int, seed: int = 0) -> float:
    """Write a 1M-row RFM-like table bench.customers (4 segments); returns seconds."""
    import numpy as np
    import pyarrow as pa

    from segloop.warehouses import Warehouse

    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    centres = np.array([[5, 30, 5000, 200], [60, 8, 800, 60], [200, 2, 90, 10], [400, 1, 40, 3]], float)
    seg = rng.integers(0, 4, customers)
    values = centres[seg] * rng.lognormal(0, 0.3, (customers, 4))
    table = pa.table({
        "user_id": pa.array(np.char.add("u", np.arange(customers).astype(str))),
        "recency_days": values[:, 0].round(), "frequency": np.maximum(1, values[:, 1].round()),
        "monetary": values[:, 2].round(2), "product_viewed_count": values[:, 3].round(),
    })
    with Warehouse.duckdb(path) as wh:
        wh.create_table("customers", table, schema="bench")
    return time.perf_counter() - started


def run_case(case: str, path: Path) -> dict[str, Any]:
    """One case inside this process: the node's run plus writing its outputs."""
    from segloop.operators.base import RunContext
    from segloop.operators.clusters import ClustersConfig, ClustersOperator
    from segloop.operators.recommend import RecommendConfig, RecommendOperator
    from segloop.warehouses import Warehouse

    with Warehouse.duckdb(path) as wh:
        ctx = RunContext(warehouse=wh, pipeline="bench", node=case, run_id="bench")
        started = time.perf_counter()
        if case.startswith("recommend"):
            config = RecommendConfig(event="event_text", holdout_days=30 if case.endswith("eval") else 0)
            output = RecommendOperator(config).run({"events": wh.table("events", schema="bench")}, ctx)
        else:
            k: Any = "auto" if case.endswith("auto") else 4
            config2 = ClustersConfig(k=k)
            output = ClustersOperator(config2).run({"customers": wh.table("customers", schema="bench")}, ctx)
        computed = time.perf_counter() - started
        wh.create_table(ctx.table_name(), output.table)
        for suffix, extra in output.extra.items():
            wh.create_table(ctx.table_name(suffix), extra)
        total = time.perf_counter() - started
    metrics = {k: v for k, v in output.metrics.items()
               if not isinstance(v, (list, dict)) or k == "seconds"}
    peak_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # KiB on Linux
    return {"case": case, "seconds": round(total, 2), "compute_seconds": round(computed, 2),
            "rows_fetched": wh.rows_fetched, "peak_mb": peak_mb, "metrics": metrics}


def in_subprocess(case: str, path: Path) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--case", case, "--db", str(path)],
                          capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"case {case} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--workdir", default="/tmp/segloop-bench-recsys")
    parser.add_argument("--case")
    parser.add_argument("--db")
    args = parser.parse_args()
    if args.case == "make":  # in its own process, so the cases' processes start small
        n_cust, n_prod, n_events, n_cluster = (int(x) for x in args.db.split(","))
        work = Path(args.workdir)
        print(f"data: {n_cust:,} customers x {n_prod:,} products x {n_events:,} events "
              f"({make_events(work / 'events.duckdb', n_cust, n_prod, n_events):.1f} s); "
              f"{n_cluster:,} customers to cluster "
              f"({make_customers(work / 'customers.duckdb', n_cluster):.1f} s)")
        return
    if args.case:
        print(json.dumps(run_case(args.case, Path(args.db))))
        return
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    s = args.scale
    n_cust, n_prod, n_events, n_cluster = int(100_000 * s), max(100, int(5_000 * s)), int(5_000_000 * s), int(1_000_000 * s)
    events_db, customers_db = work / "events.duckdb", work / "customers.duckdb"
    for f in (events_db, customers_db):
        f.unlink(missing_ok=True)
    # Linux keeps a process's peak RSS across exec, so the cases must not be forked from a
    # process that held the generated data: generation runs in its own process too.
    subprocess.run([sys.executable, __file__, "--case", "make", "--workdir", str(work),
                    "--db", f"{n_cust},{n_prod},{n_events},{n_cluster}"], check=True)
    results = {}
    for case, db in (("recommend", events_db), ("recommend_eval", events_db),
                     ("clusters_k4", customers_db), ("clusters_auto", customers_db)):
        r = in_subprocess(case, db)
        results[case] = r
        print(f"{case:15s} {r['seconds']:7.1f} s  (compute {r['compute_seconds']:.1f} s)  "
              f"peak {r['peak_mb']} MB  rows to Python {r['rows_fetched']:,}  {r['metrics']}")
    rec, ev = results["recommend"], results["recommend_eval"]
    k4, auto = results["clusters_k4"], results["clusters_auto"]
    print(f"ratios: evaluation/no evaluation {ev['seconds'] / rec['seconds']:.2f}x time; "
          f"rows moved to Python / events {rec['rows_fetched'] / n_events:.3f}; "
          f"clusters k: auto / k: 4 {auto['seconds'] / k4['seconds']:.2f}x time")


if __name__ == "__main__":
    main()
