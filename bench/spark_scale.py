"""The demo pipeline on local Spark next to DuckDB at a given size: seconds, rows pulled into
Python and the driver's peak memory per node (issue 20).

    .venv/bin/python bench/spark_scale.py --customers 20000 [--engines duckdb,pyspark]
        [--driver-memory 2g] [--workdir /tmp/spark_scale] [--reuse]

The demo source (`segloop demo-data`'s tables, split identities, seed 18) is generated a
chunk at a time into Parquet files under the work folder (once per size; `--reuse` keeps
them). Each engine then runs the shipped demo pipeline (examples/demo/pipelines/demo.yml,
unchanged) in a child process of its own: Spark `local[2]` reads the Parquet files as
external tables, DuckDB copies them into its file first (its load is timed apart). The
Segment nodes send to a transport that answers 200 (no network).

Per node: wall seconds; the rows the node brought into Python (`Warehouse.rows_fetched`);
and the driver's peak memory while it ran: the summed RSS of the child process and its
descendants (Spark's JVM is one), sampled every 50 ms. Prints a Markdown table; each
engine's figures (and the load average when it finished) are also written, as soon as it
finishes, to ``<workdir>/<engine>-<customers>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "demo" / "pipelines" / "demo.yml"
DAYS, SEED = 365, 18

CHILD = r"""
import json, os, sys, threading, time
from pathlib import Path

import httpx

from segloop.pipeline import Pipeline
from segloop.warehouses.base import Warehouse

root, parquet, engine = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
opened = []
init = Warehouse.__init__
def remember(self, *args, **kwargs):
    init(self, *args, **kwargs)
    opened.append(self)
Warehouse.__init__ = remember

def tree_rss(pid=os.getpid()):
    # RSS of this process and its descendants (Spark's JVM), in bytes.
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
            for task in os.listdir(f"/proc/{p}/task"):
                stack.extend(int(c) for c in open(f"/proc/{p}/task/{task}/children").read().split())
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total

class Peak:
    value = 0
    def run(self):
        while True:
            self.value = max(self.value, tree_rss())
            time.sleep(0.05)
peak = Peak()
threading.Thread(target=peak.run, daemon=True).start()

started = time.perf_counter()
pipeline = Pipeline.load(root / "pipelines" / "demo.yml")
with pipeline.connect() as wh:
    connected = time.perf_counter()
    wh.raw_sql("CREATE SCHEMA IF NOT EXISTS demo_shop")
    for folder in sorted(parquet.iterdir()):
        if engine == "pyspark":
            wh.raw_sql(f"CREATE TABLE demo_shop.{folder.name} USING parquet LOCATION '{folder}'")
        else:
            wh.raw_sql(f"CREATE OR REPLACE TABLE demo_shop.{folder.name} AS "
                       f"SELECT * FROM read_parquet('{folder}/*.parquet')")
loaded = time.perf_counter()
load_peak = peak.value

class Nodes:
    def __init__(self):
        self.rows = {}
    def fetched(self):
        return opened[-1].rows_fetched if opened else 0
    def node_started(self, name, node_type):
        peak.value = tree_rss()
        self.start = self.fetched()
    def node_progress(self, name, advance, total):
        pass
    def node_finished(self, result):
        self.rows[result.name] = (self.fetched() - self.start, peak.value)

nodes = Nodes()
result = pipeline.run(reporter=nodes, options={"segment_transport": lambda r: httpx.Response(200, json={"success": True})})
print(json.dumps({
    "start": connected - started, "load": loaded - connected, "load_peak": load_peak, "run": result.seconds,
    "nodes": {n.name: {"type": n.type, "rows": n.rows, "seconds": n.seconds, "status": n.status, "error": n.error,
                       "fetched": nodes.rows.get(n.name, (0, 0))[0], "peak": nodes.rows.get(n.name, (0, 0))[1]}
              for n in result.nodes},
}))
"""


def write_parquet(customers: int, folder: Path) -> dict[str, int]:
    """The demo source as Parquet folders (one per table); each table's size as Arrow."""
    import pyarrow.parquet as pq

    from segloop.demo import DEFAULT_END, iter_tables

    writers: dict[str, Any] = {}
    sizes: dict[str, int] = {}
    try:
        for name, part in iter_tables(customers, DAYS, SEED, DEFAULT_END, chunk_customers=2_000, split_ids=True):
            if "." in name:  # the hidden truth
                continue
            if name not in writers:
                (folder / name).mkdir(parents=True)
                writers[name] = pq.ParquetWriter(folder / name / "part-0.parquet", part.schema)
            writers[name].write_table(part)
            sizes[name] = sizes.get(name, 0) + part.nbytes
    finally:
        for writer in writers.values():
            writer.close()
    return sizes


def block(engine: str, root: Path, driver_memory: str) -> str:
    if engine == "duckdb":
        return f"    type: duckdb\n    path: {root}/bench.duckdb\n"
    return ("    type: pyspark\n    master: local[2]\n    metastore: in-memory\n"
            f"    warehouse_dir: {root}/spark-warehouse\n    driver_memory: {driver_memory}\n"
            "    conf:\n      spark.sql.shuffle.partitions: '8'\n      spark.ui.showConsoleProgress: 'false'\n")


def run(engine: str, parquet: Path, folder: Path, driver_memory: str) -> dict[str, Any]:
    root = folder / engine
    shutil.rmtree(root, ignore_errors=True)
    (root / "pipelines").mkdir(parents=True)
    (root / "segloop.yml").write_text("warehouses:\n  default:\n" + block(engine, root, driver_memory))
    (root / "pipelines" / "demo.yml").write_text(DEMO.read_text())
    env = {**os.environ, "SEGMENT_WRITE_KEY": "wk-bench", "SEGLOOP_ENDPOINT": "http://127.0.0.1:9"}
    child = subprocess.run([sys.executable, "-c", CHILD, str(root), str(parquet), engine], cwd=ROOT, env=env,
                           capture_output=True, text=True)
    if child.returncode != 0:
        raise SystemExit(f"{engine} failed:\n{child.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(child.stdout.strip().splitlines()[-1])
    failed = {n: v["error"] for n, v in result["nodes"].items() if v["status"] != "success"}
    if failed:
        raise SystemExit(f"{engine}: nodes failed: {failed}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--engines", default="duckdb,pyspark")
    parser.add_argument("--driver-memory", default="2g", help="spark.driver.memory of local Spark")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the data here (default: a temp folder)")
    parser.add_argument("--reuse", action="store_true", help="use the Parquet files already in --workdir")
    args = parser.parse_args()
    folder = args.workdir or Path(tempfile.mkdtemp(prefix="segloop-spark-scale-"))
    parquet = folder / f"parquet-{args.customers}"
    if not (args.reuse and parquet.exists()):
        shutil.rmtree(parquet, ignore_errors=True)
        sizes = write_parquet(args.customers, parquet)
        print(f"source: {sum(sizes.values()) / 2**20:,.0f} MiB as Arrow "
              f"({', '.join(f'{k} {v / 2**20:,.0f}' for k, v in sorted(sizes.items()))})", flush=True)
    engines = args.engines.split(",")
    results = {}
    for engine in engines:
        results[engine] = run(engine, parquet, folder, args.driver_memory)
        results[engine]["loadavg"] = os.getloadavg()
        # Each engine's figures are kept as they come, so a later engine's failure does not lose them.
        (folder / f"{engine}-{args.customers}.json").write_text(json.dumps(results[engine], indent=1))
        print(f"{engine}: run {results[engine]['run']:.1f} s", flush=True)
    first = results[engines[0]]["nodes"]
    print(f"\n{args.customers:,} customers")
    print("| node | type | rows | " + " | ".join(f"{e} s | {e} fetched | {e} peak MB" for e in engines) + " |")
    print("|---|---|---:|" + "---:|---:|---:|" * len(engines))
    for node, info in first.items():
        cells = []
        for e in engines:
            n = results[e]["nodes"][node]
            cells += [f"{n['seconds']:.1f}", f"{n['fetched']:,}", f"{n['peak'] / 1e6:,.0f}"]
        print(f"| {node} | {info['type']} | {info['rows']:,} | " + " | ".join(cells) + " |")
    for what in ("run", "load", "start"):
        print(f"| **{what}** | | | " + " | ".join(f"{results[e][what]:.1f} | |" for e in engines) + " |")
    print("| **load peak MB** | | | " + " | ".join(f"| | {results[e]['load_peak'] / 1e6:,.0f}" for e in engines) + " |")
    if args.workdir is None:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
