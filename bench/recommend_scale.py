"""The recommend node on the demo shop at 20k and 100k customers: seconds and peak RSS, two code versions side by side.

    .venv/bin/python bench/recommend_scale.py --sizes 20000,100000 --workdir /tmp/recbench \
        --before /tmp/rec_old/src --after src --rounds 2

``--before`` / ``--after`` are ``src`` folders of two checkouts (e.g. ``git archive ad28749
src | tar -x -C /tmp/rec_old``). Each run is a fresh ``python`` child under
``/usr/bin/time -v`` (max RSS is the child's own, DuckDB included) running a two-node
pipeline: the demo pipeline's ``product_events`` (a view over the three product event
tables) and its ``recommend`` node (same settings), with the workspace's default
``memory_limit`` (2GB). Rounds alternate before / after so load from other jobs on the
shared machine hits both alike; the table gives each round and the ratios.

Data: ``segloop demo-data --customers 20000`` once (seed 7, ~4.9M events), then one schema
per size, ``demo_shop_<size>``, whose tables are that many 20k-customer copies of it with
the user ids prefixed by the copy (``p0_``, ``p1_``, ...). Copies rather than more seeds:
``demo-data`` builds every table in memory before this session's streaming work (~17.5 GB
at 100k, too much for a shared machine) and took ~280 s per 20k here; for the node's time
and memory what counts is customers x pairs, the same either way.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

PART = 20_000
TABLES = ("product_viewed", "product_added", "order_completed")
PIPELINE = """\
name: bench_{size}
nodes:
  product_events:
    type: sql
    sql: |
      select user_id, product_id, "timestamp", event_text from {schema}.product_viewed
      where user_id is not null
      union all
      select user_id, product_id, "timestamp", event_text from {schema}.product_added
      where user_id is not null
      union all
      select user_id, unnest(from_json(products, '["json"]')) ->> 'product_id' as product_id,
             "timestamp", event_text
      from {schema}.order_completed where user_id is not null
  recommend:
    type: recommend
    input: product_events
    event: event_text
    holdout_days: 30
    wide_items: [phones_01, wearables_01]
{limit}"""
CHILD = """
import json, sys, time
from segloop.pipeline import Pipeline
started = time.perf_counter()
result = Pipeline.load(sys.argv[1]).run(dry_run=True)
node = result.node("recommend")
assert node.status == "success", node.error
keep = ("customers", "pairs", "training_pairs", "sampled", "evaluated_customers", "ndcg_at_10",
        "popular_ndcg_at_10", "recall_at_10", "coverage_at_10", "catalogue_coverage", "seconds")
print("BENCH " + json.dumps({"seconds": node.seconds, "run_seconds": time.perf_counter() - started,
                  "metrics": {k: node.metrics.get(k) for k in keep}}, default=str))
"""


def workspace(workdir: Path, customers: int) -> Path:
    """The workspace, its pipeline ``bench_<customers>`` and schema ``demo_shop_<customers>``."""
    root = workdir / "ws"
    (root / "pipelines").mkdir(parents=True, exist_ok=True)
    (root / "segloop.yml").write_text("warehouses:\n  default:\n    type: duckdb\n    path: .segloop/warehouse.duckdb\n")
    schema = f"demo_shop_{customers}"
    (root / "pipelines" / f"bench_{customers}.yml").write_text(PIPELINE.format(schema=schema, size=customers, limit=""))
    if not (root / ".part0").exists():
        subprocess.run([str(Path(sys.executable).parent / "segloop"), "demo-data", "--customers", str(PART),
                        "--schema", "demo_part0"], cwd=root, check=True)
        (root / ".part0").touch()
    if (root / f".{schema}").exists():
        return root
    import duckdb

    con = duckdb.connect(str(root / ".segloop" / "warehouse.duckdb"))
    con.execute(f"create schema if not exists {schema}")
    for table in TABLES:
        columns = [r[0] for r in con.execute(f"describe demo_part0.{table}").fetchall()]
        selects = []
        for j in range(max(1, customers // PART)):
            cols = ", ".join(f"'p{j}_' || user_id as user_id" if c == "user_id" else f'"{c}"' for c in columns)
            selects.append(f"select {cols} from demo_part0.{table}")
        con.execute(f"create or replace table {schema}.{table} as " + " union all ".join(selects))
    con.close()
    (root / f".{schema}").touch()
    return root


def run_child(src: Path, root: Path, customers: int, limit: str | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src.resolve())}
    pipeline = root / "pipelines" / f"bench_{customers}.yml"
    if limit:  # the same pipeline with `memory_limit:` on the recommend node
        pipeline = pipeline.with_name(f"bench_{customers}_{limit}.yml")
        pipeline.write_text(PIPELINE.format(schema=f"demo_shop_{customers}", size=f"{customers}_{limit}",
                                            limit=f"    memory_limit: {limit}\n"))
    proc = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-c", CHILD, str(pipeline)],
                          cwd=root, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"child failed ({src}):\n{proc.stderr[-3000:]}")
    # (DuckDB's progress bar writes to the same stdout, without newlines)
    out = json.loads(proc.stdout.rsplit("BENCH ", 1)[1].splitlines()[0])
    out["max_rss_mb"] = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1)) / 1024
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="20000,100000")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/recbench"))
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--after", type=Path, default=Path("src"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--limits", default="", help="after the rounds, the new code once more per size with "
                        "these node memory_limit values (e.g. 50MB), to see what training on a sample costs")
    parser.add_argument("--only-limits", action="store_true", help="skip the before/after rounds")
    args = parser.parse_args()
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        root = workspace(args.workdir, size)
        for r in range(0 if args.only_limits else args.rounds):
            for label, src in (("before", args.before), ("after", args.after)):
                out = run_child(src, root, size)
                rows.append((size, r + 1, label, out))
                print(json.dumps({"customers": size, "round": r + 1, "code": label, **out}), flush=True)
        for limit in filter(None, args.limits.split(",")):
            out = run_child(args.after, root, size, limit)
            print(json.dumps({"customers": size, "code": f"after, memory_limit {limit}", **out}), flush=True)
    print("\n| customers | round | before: node s / peak MB | after: node s / peak MB | ratio s | ratio peak | NDCG@10 before / after |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for size in sorted({s for s, *_ in rows}):
        for r in sorted({r for s, r, *_ in rows if s == size}):
            b = next(o for s, rr, lab, o in rows if s == size and rr == r and lab == "before")
            a = next(o for s, rr, lab, o in rows if s == size and rr == r and lab == "after")
            print(f"| {size:,} | {r} | {b['seconds']:.1f} / {b['max_rss_mb']:,.0f} | {a['seconds']:.1f} / {a['max_rss_mb']:,.0f} "
                  f"| {a['seconds'] / b['seconds']:.2f}x | {a['max_rss_mb'] / b['max_rss_mb']:.2f}x "
                  f"| {b['metrics']['ndcg_at_10']} / {a['metrics']['ndcg_at_10']} |")


if __name__ == "__main__":
    main()
