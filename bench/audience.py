"""Benchmark: what a holdout group and the match rate add to a Segment node's diff.

A DuckDB file with N customers to send (identify, three traits), a Segment source whose
`users` table knows 90% of them, and four variants of the same Segment node: plain, with
`holdout: {percent: 10}`, in a pipeline with the `segment_source` (match rate), and both
with `on_unknown: skip`. Each runs as a dry run (the diff and the counts, nothing sent, so
the figure is the planning work the features add, not the network), first on an empty
sync state (a first sync) and again after the state holds every key (a re-run). The
segment node's seconds come from the run result; the best of `--repeat` runs is kept.

    .venv/bin/python bench/audience.py                 # 1,000,000 customers
    .venv/bin/python bench/audience.py --rows 100000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from segloop.pipeline import Pipeline
from segloop.segment.sync import SENT, SyncState
from segloop.warehouses import DuckDBConfig, Warehouse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the pipeline is the tests' (tests/operators/segment_fixtures.py)

from tests.operators.segment_fixtures import scores_to_segment  # noqa: E402

SOURCE = """\
  web:
    type: segment_source
    schema: web
    tables: [identifies, users]
"""
VARIANTS = {
    "plain": ("", ""),
    "holdout 10%": ("", "    holdout: {percent: 10, salt: bench}\n"),
    "match rate": (SOURCE, ""),
    "holdout + match, skip unknown": (SOURCE, "    holdout: {percent: 10, salt: bench}\n    on_unknown: skip\n"),
}


def write_data(root: Path, rows: int) -> None:
    ids = [f"user-{i:08d}" for i in range(rows)]
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        wh.create_table("scores", pa.table({
            "user_id": ids, "score": [i % 1000 / 1000 for i in range(rows)],
            "segment": [("a", "b", "c")[i % 3] for i in range(rows)], "plan": ["pro"] * rows,
        }), schema="src")
        known = ids[: rows * 9 // 10]
        wh.create_table("users", pa.table({"id": known}), schema="web")
        wh.create_table("identifies", pa.table({"user_id": known[:1]}), schema="web")


def fill_state(root: Path) -> None:
    """Record every key as sent with the payload hash a first sync would have recorded, so
    the next run is a re-run with nothing changed (without sending a million messages)."""
    from segloop.operators.base import RunContext
    from segloop.operators.segment import SegmentOperator

    config = Pipeline.load(root / "pipelines" / "bench.yml").config.nodes["to_segment"]
    operator = SegmentOperator(config)  # type: ignore[arg-type]
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        state = SyncState(wh, "bench", "to_segment")
        state.ensure()
        columns = operator.mapping(RunContext(warehouse=wh, pipeline="bench", node="to_segment", run_id="b")).columns()
        source = wh.table("scores", schema="src").select(*columns)
        keyed = state.keyed(source, ["user_id"], [c for c in columns if c != "user_id"], operator.cfg.fingerprint())
        rows = keyed.select("_key", "_hash")
        wh.raw_sql(f"DELETE FROM {wh.qualified(state.state_table)}")
        wh.raw_sql(
            f"INSERT INTO {wh.qualified(state.state_table)} "
            f"SELECT _key, _hash, '{SENT}', 'sl-' || _key, NULL, 1, 'bench', now()::timestamp "
            f"FROM ({wh.compile(rows)}) AS k")


def node_seconds(root: Path, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        result = Pipeline.load(root / "pipelines" / "bench.yml").run(dry_run=True, options={"report": False})
        node = result.node("to_segment")
        if node.status != "success":
            raise SystemExit(f"the segment node failed: {node.error}")
        best = min(best, node.seconds)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("SEGLOOP_BENCH_KEY", "bench-key")
    root = Path(tempfile.mkdtemp(prefix="segloop-bench-audience-"))
    (root / "pipelines").mkdir()
    (root / "segloop.yml").write_text("warehouses:\n  default:\n    type: duckdb\n    path: .segloop/warehouse.duckdb\n")
    started = time.perf_counter()
    write_data(root, args.rows)
    print(f"{args.rows:,} customers written in {time.perf_counter() - started:.1f} s ({root})")
    print("| variant | first sync (s) | re-run, nothing changed (s) |\n|---|---|---|")
    for label, (source, extra) in VARIANTS.items():
        (root / "pipelines" / "bench.yml").write_text(scores_to_segment(
            name="bench", key_env="SEGLOOP_BENCH_KEY", before=source, call="identify", customer_id="user_id",
            traits="[score, segment, plan]") + extra)
        with Warehouse.connect(DuckDBConfig(), root) as wh:
            wh.drop_table(SyncState(wh, "bench", "to_segment").state_table)
        first = node_seconds(root, args.repeat)
        fill_state(root)
        rerun = node_seconds(root, args.repeat)
        print(f"| {label} | {first:.2f} | {rerun:.2f} |", flush=True)


if __name__ == "__main__":
    main()
