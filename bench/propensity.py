"""Benchmark: the demo's two propensity nodes (likely_buyers, likely_churners), seconds and peak RSS.

For each size, demo Segment data (``segloop.demo.generate``) is written to a DuckDB file:
the ``tracks`` and ``order_completed`` columns the demo pipeline reads. Sizes above
``SHARD`` customers are generated in shards of ``SHARD`` (seeds 7, 8, ...; ids prefixed by
the shard) so the generator's own peak (~175 KB per customer) stays that of one shard.
Then, in rounds, each in a fresh process under ``/usr/bin/time -v`` (peak RSS is its own),
the pipeline ``events -> orders -> likely_buyers -> likely_churners`` (the demo's nodes,
as in examples/demo/pipelines/demo.yml) runs once with this checkout's code and once with
another checkout's ``src`` (``--old-src``, e.g. ``git archive <commit> src | tar -x -C
/tmp/old``), so both sides see the same machine load. The peak RSS is the whole run's (the `events`
node materializes every event); ``--only-propensity`` runs a pipeline whose inputs are
views over the tables of an earlier run, so the peak is the two propensity nodes'.

    .venv/bin/python bench/propensity.py --sizes 20k,100k --old-src /tmp/old/src --workdir /tmp/propbench
    .venv/bin/python bench/propensity.py --sizes 20k --rounds 1          # this checkout only
    .venv/bin/python bench/propensity.py --only-propensity --old-src /tmp/old/src   # the two nodes alone
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARD = 20_000
NODES = ("likely_buyers", "likely_churners")
PIPELINE = """\
name: bench
nodes:
  orders:
    type: sql
    sql: select user_id, "timestamp", revenue from demo_shop.order_completed where user_id is not null
  events:
    type: sql
    sql: select user_id, "timestamp", event from demo_shop.tracks where user_id is not null
  likely_buyers:
    type: propensity
    input: events
    orders: orders
    target_event: Order Completed
    window_days: 30
  likely_churners:
    type: propensity
    input: events
    orders: orders
    mode: churn
"""

# The two propensity nodes alone (--only-propensity): their inputs are views over the
# tables a run of PIPELINE left, so the process's peak is theirs.
ONLY_PROPENSITY = PIPELINE.replace("name: bench", "name: benchp").replace(
    'sql: select user_id, "timestamp", revenue from demo_shop.order_completed where user_id is not null',
    "sql: select * from bench__orders\n    materialize: view").replace(
    'sql: select user_id, "timestamp", event from demo_shop.tracks where user_id is not null',
    "sql: select * from bench__events\n    materialize: view")


def size(text: str) -> int:
    text = text.lower().strip()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1], 1)
    return int(float(text.rstrip("km")) * scale)


def write_data(workdir: Path, customers: int) -> Path:
    """The workspace of one size, with its demo data (kept and reused when present)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from segloop.demo import generate
    from segloop.warehouses import Warehouse

    ws = workdir / f"{customers}"
    db = ws / "warehouse.duckdb"
    (ws / "pipelines").mkdir(parents=True, exist_ok=True)
    (ws / "segloop.yml").write_text(f"warehouses:\n  default:\n    type: duckdb\n    path: {db}\n")
    (ws / "pipelines" / "bench.yml").write_text(PIPELINE)
    (ws / "pipelines" / "benchp.yml").write_text(ONLY_PROPENSITY)
    done = ws / "data.done"
    if done.exists():
        return ws
    started = time.perf_counter()
    wh = Warehouse.duckdb(str(db))
    for shard in range((customers + SHARD - 1) // SHARD):
        n = min(SHARD, customers - shard * SHARD)
        tables, _ = generate(n, seed=7 + shard)
        for name, columns in (("tracks", ["user_id", "timestamp", "event"]),
                              ("order_completed", ["user_id", "timestamp", "revenue"])):
            table = tables[name].select(columns)
            if customers > SHARD:  # ids unique across shards
                ids = pc.binary_join_element_wise(pa.scalar(f"s{shard}-"), table["user_id"], "")
                table = table.set_column(0, "user_id", ids)
            if shard == 0:
                wh.create_table(name, table, schema="demo_shop")
            else:
                wh.insert(name, table, schema="demo_shop")
        del tables
    wh.close()
    done.write_text(f"{time.perf_counter() - started:.0f} s\n")
    return ws


def run_child(ws: Path, pipeline: str) -> None:
    """One run of the pipeline (in this process): per node seconds and metrics as JSON."""
    from segloop.pipeline import Pipeline

    started = time.perf_counter()
    result = Pipeline.load(ws / "pipelines" / f"{pipeline}.yml").run(options={"report": False})
    out: dict[str, Any] = {"seconds": time.perf_counter() - started, "ok": result.ok}
    for node in result.nodes:
        out[node.name] = {"seconds": node.seconds, "error": node.error,
                          "auc": node.metrics.get("auc"), "rows": node.rows,
                          "training_sample": node.metrics.get("training_sample"),
                          "features_prepared_by": node.metrics.get("features_prepared_by")}
    print("RESULT " + json.dumps(out))


def measure(ws: Path, src: Path | None, pipeline: str) -> dict[str, Any]:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    cmd = ["/usr/bin/time", "-v", sys.executable, str(Path(__file__).resolve()), "--child", str(ws),
           "--pipeline", pipeline]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ws)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"child failed:\n{proc.stdout}\n{proc.stderr[-3000:]}")
    out: dict[str, Any] = json.loads(line[len("RESULT "):])
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    out["peak_mb"] = int(peak.group(1)) / 1024 if peak else float("nan")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="20k,100k")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--old-src", type=Path, help="another checkout's src/ to compare with")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/propbench"))
    parser.add_argument("--only-propensity", action="store_true",
                        help="measure the two propensity nodes alone (after one full run)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--pipeline", default="bench", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args.child, args.pipeline)
        return
    pipeline = "benchp" if args.only_propensity else "bench"
    sides: list[tuple[str, Path | None]] = [("after", ROOT / "src")]
    if args.old_src:
        sides.insert(0, ("before", args.old_src))
    rows = []
    for customers in (size(s) for s in args.sizes.split(",")):
        ws = write_data(args.workdir, customers)
        if args.only_propensity and not (ws / ".segloop" / "state.db").exists():
            measure(ws, None, "bench")  # the tables the propensity-only pipeline reads
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in sides}
        for _ in range(args.rounds):
            for name, src in sides:
                result = measure(ws, src, pipeline)
                if not result["ok"]:
                    raise SystemExit(f"{name} failed: {result}")
                runs[name].append(result)
                print(name, customers, json.dumps(result), flush=True)
        for name, results in runs.items():
            both = [sum(r[n]["seconds"] for n in NODES) for r in results]
            rows.append((customers, name, statistics.median(both),
                         [statistics.median(r[n]["seconds"] for r in results) for n in NODES],
                         statistics.median(r["peak_mb"] for r in results),
                         [results[0][n]["auc"] for n in NODES]))
    print("\n| customers | code | both propensity s | buyers s | churners s | peak RSS MB | AUC buyers / churners |")
    print("|---:|---|---:|---:|---:|---:|---|")
    for customers, name, both, per, peak, auc in rows:
        print(f"| {customers:,} | {name} | {both:.1f} | {per[0]:.1f} | {per[1]:.1f} | {peak:,.0f} | "
              f"{auc[0]:.4f} / {auc[1]:.4f} |")


if __name__ == "__main__":
    main()
