"""The demo pipeline (examples/demo/pipelines/demo.yml, unchanged) on DuckDB and on local Spark:
seconds per node, one run each.

    .venv/bin/python bench/demo_engines.py [--customers 1000] [--engines duckdb,pyspark]

Each engine runs in a fresh workspace in a temporary folder: demo data loaded (Segment's
schema `demo_shop`), then the whole pipeline; the Segment nodes send to a transport that
answers 200 (no network). Loading, the Spark/JVM start and the run are timed apart. Prints
a Markdown table (node, rows, seconds per engine) for bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo" / "pipelines" / "demo.yml"
BLOCKS = {
    "duckdb": "    type: duckdb\n",
    "pyspark": ("    type: pyspark\n    master: local[2]\n    metastore: in-memory\n"
                "    warehouse_dir: {root}/spark-warehouse\n    conf:\n      spark.sql.shuffle.partitions: '2'\n"),
}


def accept(request: Any) -> Any:
    import httpx

    return httpx.Response(200, json={"success": True})


def run(engine: str, customers: int, folder: Path) -> dict[str, Any]:
    from segloop.demo import write_demo_data
    from segloop.pipeline import Pipeline

    root = folder / engine
    (root / "pipelines").mkdir(parents=True)
    (root / "segloop.yml").write_text("warehouses:\n  default:\n" + BLOCKS[engine].format(root=root))
    (root / "pipelines" / "demo.yml").write_text(DEMO.read_text())
    pipeline = Pipeline.load(root / "pipelines" / "demo.yml")
    started = time.perf_counter()
    with pipeline.connect() as wh:
        connected = time.perf_counter()
        write_demo_data(wh, customers=customers, days=365, seed=18)
    loaded = time.perf_counter()
    result = pipeline.run(options={"segment_transport": accept})
    assert result.ok, [(n.name, n.error) for n in result.nodes if n.error]
    return {"start": connected - started, "load": loaded - connected, "run": result.seconds,
            "nodes": {n.name: (n.rows, n.seconds) for n in result.nodes}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--engines", default="duckdb,pyspark")
    args = parser.parse_args()
    os.environ.setdefault("SEGMENT_WRITE_KEY", "wk-bench")
    os.environ.setdefault("SEGLOOP_ENDPOINT", "http://127.0.0.1:9")  # unused: `accept` answers
    engines = args.engines.split(",")
    with tempfile.TemporaryDirectory(prefix="segloop-demo-engines-") as folder:
        results = {engine: run(engine, args.customers, Path(folder)) for engine in engines}
    first = results[engines[0]]["nodes"]
    print("| node | rows | " + " | ".join(f"{e} s" for e in engines) + " |")
    print("|---|---:|" + "---:|" * len(engines))
    for node, (rows, _) in first.items():
        print(f"| {node} | {rows} | " + " | ".join(f"{results[e]['nodes'][node][1]:.2f}" for e in engines) + " |")
    for what in ("run", "load", "start"):
        print(f"| **{what}** | | " + " | ".join(f"{results[e][what]:.1f}" for e in engines) + " |")


if __name__ == "__main__":
    main()
