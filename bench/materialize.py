"""Benchmark: the whole demo pipeline with its `sql` steps as views vs as tables.

A view runs its query each time it is read. segloop's default (docs/engine.md) makes a
`sql` node a view only when its readers are `sql` or `rfm` nodes, which read it inside
their own SQL; in the demo every `sql` node has a model or a Segment node among its
readers, so the default keeps them all as tables. This measures that choice: the full
demo pipeline (sql, rfm, clv, propensity, clusters, recommend; Segment nodes in dry-run
mode, no report) with `materialize: view` on every `sql` node that other nodes read, and
with `materialize: table` on every `sql` node, on the same demo data, alternating, in one
process after a warm-up run of each; median seconds per node and in total.

    .venv/bin/python bench/materialize.py                      # 4,000 customers (~530k events)
    .venv/bin/python bench/materialize.py --customers 8000 --repeat 5
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "demo"


def every_sql_node(text: str, kind: str, only: set[str] | None = None) -> str:
    """The demo pipeline with `materialize: <kind>` on its sql nodes (or those in ``only``)."""

    def mark(match: re.Match[str]) -> str:
        node = match.group(1)
        return match.group(0) + (f"    materialize: {kind}\n" if only is None or node in only else "")

    text = re.sub(r"\n  (\w+):[^\n]*\n    type: sql\n", mark, text)  # a comment may follow the name
    return text.replace("name: demo", f"name: demo_{kind}s", 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=4000)
    parser.add_argument("--repeat", type=int, default=3, help="Measured runs of each variant (median).")
    args = parser.parse_args()
    os.environ.setdefault("SEGMENT_WRITE_KEY", "bench")

    from segloop.demo import write_demo_data
    from segloop.pipeline import Pipeline
    from segloop.warehouses import Warehouse

    work = Path(tempfile.mkdtemp(prefix="segloop-bench-materialize-"))
    try:
        root = work / "ws"
        shutil.copytree(DEMO, root)
        with Warehouse.duckdb(root / ".segloop" / "warehouse.duckdb") as wh:
            stats = write_demo_data(wh, customers=args.customers, days=365, seed=3)
        print(f"{stats.events:,} events, {stats.orders:,} orders, {stats.customers:,} customers", flush=True)
        demo = (root / "pipelines" / "demo.yml").read_text()
        config = Pipeline.load(root / "pipelines" / "demo.yml").config
        read = {n for n in config.nodes if config.nodes[n].type == "sql"
                and any(n in config.upstream_of(r) for r in config.nodes)}
        (root / "pipelines" / "demo_views.yml").write_text(every_sql_node(demo, "view", read))
        (root / "pipelines" / "demo_tables.yml").write_text(every_sql_node(demo, "table"))
        variants = {"sql steps as views": "demo_views.yml", "sql steps as tables": "demo_tables.yml"}
        seconds: dict[str, list[float]] = {label: [] for label in variants}
        nodes: dict[str, dict[str, list[float]]] = {label: {} for label in variants}
        for round_ in range(args.repeat + 1):  # round 0 warms up (imports, first compiles)
            for label, file in variants.items():
                pipeline = Pipeline.load(root / "pipelines" / file)
                started = time.perf_counter()
                result = pipeline.run(dry_run=True, options={"report": False})
                elapsed = time.perf_counter() - started
                if not result.ok:
                    raise SystemExit("; ".join(n.error or "" for n in result.nodes if n.error))
                if round_ == 0:
                    continue
                seconds[label].append(elapsed)
                for node in result.nodes:
                    nodes[label].setdefault(node.name, []).append(node.seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    kinds = {n: config.materialization(n) for n in config.nodes}
    labels = list(variants)
    print(f"\n| node | default | {labels[0]} s | {labels[1]} s |")
    print("|---|---|---:|---:|")
    for node in nodes[labels[0]]:
        cells = [f"{statistics.median(nodes[label][node]):.2f}" for label in labels]
        print(f"| {node} | {kinds.get(node, '-')} | {cells[0]} | {cells[1]} |")
    totals = [statistics.median(seconds[label]) for label in labels]
    print(f"| **whole run** | | **{totals[0]:.2f}** | **{totals[1]:.2f}** |")
    print(f"\nratio views / tables: {totals[0] / totals[1]:.2f}x "
          f"(load average {' / '.join(f'{x:.1f}' for x in os.getloadavg())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
