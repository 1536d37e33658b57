"""Benchmark the clv and clusters nodes before and after bounded memory (issue 19).

Each node runs in a fresh process under `/usr/bin/time -v` (peak RSS) on demo data of
20k and 100k customers, with the code of a given commit (default: the base of this
work, ad28749) and with this checkout's, interleaved (before, after, before, after, ...)
so that a busy shared machine slows both alike; the table reports the ratios. "after,
64MB" runs the new code with `memory_limit: 64MB` (clv scores in chunks of 16,000
customers, clusters trains on 125,000 rows at most); "intervals off" is clv with
`intervals: false`.

Demo data: the demo generator's orders and browsing events, made in blocks of 20k
customers (seeds 7, 8, ...; ids prefixed per block) so that 100k customers need no more
memory to make than 20k. clusters reads the demo pipeline's `activity` columns
(recency_days, frequency, monetary and view/add counts), computed here in SQL.

Run:  .venv/bin/python bench/clv_clusters.py                  (20k and 100k, 2 rounds)
      .venv/bin/python bench/clv_clusters.py cdnow            (CDNOW interval calibration)
      .venv/bin/python bench/clv_clusters.py --sizes 20000 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BLOCK = 20_000


def prep(db: Path, customers: int) -> None:
    """orders(user_id, timestamp, revenue) and activity(...) for ``customers`` demo customers."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from segloop.demo import generate
    from segloop.warehouses import Warehouse

    with Warehouse.duckdb(db) as wh:
        for block in range(max(1, customers // BLOCK)):
            tables, _ = generate(min(BLOCK, customers), seed=7 + block)
            for name in ("order_completed", "product_viewed", "product_added"):
                table = tables[name]
                table = table.filter(pc.is_valid(table["user_id"]))
                keep = ["user_id", "timestamp"] + (["revenue"] if name == "order_completed" else [])
                table = table.select(keep).set_column(
                    0, "user_id", pc.binary_join_element_wise(pa.scalar(f"b{block}_"), table["user_id"], ""))
                if block == 0:
                    wh.create_table(name, table)
                else:
                    wh.insert(name, table)
            del tables
        wh.raw_sql("""
            create or replace table activity as
            with o as (select user_id, max("timestamp") as last, count(*) as frequency,
                              sum(revenue) as monetary from order_completed group by user_id),
                 v as (select user_id, count(*) as n from product_viewed group by user_id),
                 a as (select user_id, count(*) as n from product_added group by user_id)
            select o.user_id,
                   date_diff('day', o.last, (select max("timestamp") from order_completed)) as recency_days,
                   o.frequency, o.monetary,
                   coalesce(v.n, 0) as product_viewed_count, coalesce(a.n, 0) as product_added_count
            from o left join v using (user_id) left join a using (user_id)""")


def node(db: Path, which: str, memory_limit: int | None, intervals: bool = True) -> dict[str, float]:
    """Run one node as the engine does (output written, streamed or not) and time it."""
    from segloop.operators.base import RunContext
    from segloop.warehouses import Warehouse

    with Warehouse.duckdb(db) as wh:
        ctx = RunContext(warehouse=wh, pipeline="bench", node=which, run_id="b")
        if memory_limit is not None:
            ctx.memory_limit = memory_limit
        started = time.perf_counter()
        if which == "clv":
            from segloop.operators.clv import ClvConfig, ClvOperator

            keys: dict[str, Any] = {"intervals": False} if not intervals else {}
            out = ClvOperator(ClvConfig(type="clv", input="orders", horizon="120 days", **keys)).run(
                {"orders": wh.table("order_completed")}, ctx)
        else:
            from segloop.operators.clusters import ClustersConfig, ClustersOperator

            out = ClustersOperator(ClustersConfig(type="clusters", input="activity", k=4)).run(
                {"activity": wh.table("activity")}, ctx)
        rows = wh.replace_table(f"bench__{which}", out.table)
        for suffix, extra in out.extra.items():
            wh.replace_table(f"bench__{which}__{suffix}", extra, count=False)
        seconds = time.perf_counter() - started
        quality = {k: out.metrics.get(k) for k in ("holdout_spearman", "holdout_interval_coverage",
                                                    "silhouette", "stability_ari", "training_rows")}
    return {"seconds": seconds, "rows": float(rows or 0), **{k: v for k, v in quality.items() if v is not None}}


def measured(src: Path, db: Path, which: str, memory_limit: int | None, intervals: bool) -> dict[str, float]:
    cmd = ["/usr/bin/time", "-v", sys.executable, __file__, "node", "--db", str(db), "--node", which]
    if not intervals:
        cmd.append("--no-intervals")
    if memory_limit is not None:
        cmd += ["--memory-limit", str(memory_limit)]
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{ROOT}"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{which} failed:\n{done.stderr[-3000:]}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["peak_mb"] = int(rss.group(1)) / 1024 if rss else float("nan")
    return result


def cdnow() -> None:
    """CDNOW (39 weeks calibration, 39 holdout): PIT coverage and the total's 1-99% range,
    with the parameters' uncertainty and with the fitted parameters taken as exact."""
    sys.path.insert(0, str(ROOT))
    import numpy as np
    from tests.operators.test_clv import CDNOW_KEYS, cdnow_transactions

    from segloop.models.btyd import BetaGeoParams, unique_rows
    from segloop.models.btyd_intervals import purchase_distribution, total_interval
    from segloop.operators.base import RunContext
    from segloop.operators.clv import ClvConfig, ClvOperator
    from segloop.warehouses import Warehouse

    wh = Warehouse.duckdb()
    wh.create_table("cdnow", cdnow_transactions())
    ctx = RunContext(warehouse=wh, pipeline="bench", node="clv", run_id="b")
    keys = {**CDNOW_KEYS, "as_of": "1998-06-30", "validate": True}
    started = time.perf_counter()
    m = ClvOperator(ClvConfig.model_validate({"type": "clv", "input": "tx", **keys})).run(
        {"tx": wh.table("cdnow")}, ctx).metrics
    seconds = time.perf_counter() - started
    fit = ClvOperator(ClvConfig.model_validate({"type": "clv", "input": "tx", **CDNOW_KEYS})).run(
        {"tx": wh.table("cdnow")}, ctx)
    params = BetaGeoParams(**fit.metrics["bgnbd"])
    table = fit.table
    x, t_x, T = (np.asarray(table[c].to_numpy(), dtype=float) for c in ("frequency", "recency", "tenure"))
    (xu, tu, Tu), wu, _ = unique_rows(x, t_x, T)
    plug = purchase_distribution(np.array([[params.r, params.alpha, params.a, params.b]]), xu, tu, Tu, 39.0)
    lo, hi = total_interval(plug.draw_mean, plug.draw_var, wu, levels=(0.01, 0.99))
    print(f"| CDNOW 39+39 weeks ({m['holdout_customers']:,} customers, actual {m['holdout_purchases']:,} "
          f"purchases) | PIT in [0.1, 0.9]: {m['holdout_interval_coverage']:.3f} | total 1-99%: "
          f"{m['holdout_purchases_p01']:,.0f}-{m['holdout_purchases_p99']:,.0f} (plug-in {lo:,.0f}-{hi:,.0f}) "
          f"| node with holdout: {seconds:.2f} s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    run_node = sub.add_parser("node")
    run_node.add_argument("--db", type=Path, required=True)
    run_node.add_argument("--node", choices=["clv", "clusters"], required=True)
    run_node.add_argument("--memory-limit", type=int, default=None)
    run_node.add_argument("--no-intervals", action="store_true")
    make = sub.add_parser("prep")
    make.add_argument("--db", type=Path, required=True)
    make.add_argument("--customers", type=int, required=True)
    sub.add_parser("cdnow")
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--before", default="ad28749", help="commit of the 'before' code")
    parser.add_argument("--repo", type=Path, default=ROOT, help="git checkout holding that commit")
    args = parser.parse_args()
    if args.command == "node":
        print(json.dumps(node(args.db, args.node, args.memory_limit, not args.no_intervals)))
        return
    if args.command == "cdnow":
        cdnow()
        return
    if args.command == "prep":
        prep(args.db, args.customers)
        return
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp) / "before"
        before.mkdir()
        archive = subprocess.run(["git", "-C", str(args.repo), "archive", args.before, "src"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
        variants = {"before": (before / "src", None, True), "after": (ROOT / "src", None, True),
                    "after, 64MB": (ROOT / "src", 64 * 10**6, True),
                    "after, intervals off": (ROOT / "src", None, False)}
        print("| node | customers | variant | seconds (median) | peak RSS MB | quality |")
        print("|---|---|---|---|---|---|")
        for size in args.sizes:
            db = Path(tmp) / f"demo{size}.duckdb"
            env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
            subprocess.run([sys.executable, __file__, "prep", "--db", str(db), "--customers", str(size)],
                           env=env, check=True)
            for which in ("clv", "clusters"):
                results: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
                for _ in range(args.rounds):
                    for variant, (src, limit, intervals) in variants.items():
                        if which == "clusters" and not intervals:
                            continue  # clusters has no intervals
                        results[variant].append(measured(src, db, which, limit, intervals))
                base = statistics.median(r["seconds"] for r in results["before"])
                base_rss = statistics.median(r["peak_mb"] for r in results["before"])
                for variant, runs in results.items():
                    if not runs:
                        continue
                    seconds = statistics.median(r["seconds"] for r in runs)
                    rss = statistics.median(r["peak_mb"] for r in runs)
                    quality = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                        for k, v in runs[0].items() if k not in ("seconds", "rows", "peak_mb"))
                    print(f"| {which} | {size:,} | {variant} | {seconds:.2f} ({seconds / base:.2f}x) "
                          f"| {rss:,.0f} ({rss / base_rss:.2f}x) | {quality} |", flush=True)


if __name__ == "__main__":
    main()
