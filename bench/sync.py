"""Benchmark: a full first sync of a 1M-row table, then a re-run with 1% of rows changed.

Real parts only: `segloop run` in a subprocess against a DuckDB file, sending identify calls
to `segloop collector` (durable: fsync before each 200) in another subprocess on 127.0.0.1.
Reports seconds and peak RSS of each run, the re-run / full ratio (target < 10%), and
checks zero loss: every row arrived at the collector, each messageId once.

    .venv/bin/python bench/sync.py                    # 1,000,000 rows, 1% changed
    .venv/bin/python bench/sync.py --rows 100000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

KEY = "bench-write-key"
PIPELINE = """\
name: bench
nodes:
  scores:
    type: sql
    sql: select * from src.scores
  to_segment:
    type: segment
    input: scores
    write_key: ${{SEGLOOP_BENCH_KEY}}
    endpoint: {url}
    call: identify
    customer_id: user_id
    traits: [score, segment, plan]
    upload_size: {upload_size}
"""
SEGLOOP = [sys.executable, "-m", "segloop.cli"]


def start_collector(data: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([*SEGLOOP, "collector", "--port", "0", "--key", f"{KEY}=bench", "--data", str(data)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http://127.0.0.1:"):
        proc.kill()
        raise SystemExit(f"collector did not start: {url!r}")
    return proc, url


def timed_run(root: Path) -> tuple[float, float, str]:
    """(seconds, peak RSS MB, output) of one `segloop run bench`."""
    env = {**os.environ, "SEGLOOP_BENCH_KEY": KEY}
    started = time.perf_counter()
    proc = subprocess.Popen([*SEGLOOP, "run", "bench"], cwd=root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    watched = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.Error:
            break
        time.sleep(0.05)
    output = proc.stdout.read() if proc.stdout else ""
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"segloop run failed:\n{output}")
    return seconds, peak / 1e6, output


def write_table(root: Path, rows: int) -> None:
    from segloop.warehouse import DuckDBConfig, Warehouse

    with Warehouse.connect(DuckDBConfig(), root) as wh:
        wh.raw_sql("CREATE SCHEMA IF NOT EXISTS src")
        wh.raw_sql(
            "CREATE OR REPLACE TABLE src.scores AS SELECT 'u' || range::VARCHAR AS user_id, "
            "round(random(), 4) AS score, 's' || (range % 10)::VARCHAR AS segment, "
            f"CASE WHEN range % 3 = 0 THEN 'pro' ELSE 'free' END AS plan FROM range({rows})"
        )


def change_rows(root: Path, share: float) -> int:
    from segloop.warehouse import DuckDBConfig, Warehouse

    every = round(1 / share)
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        wh.raw_sql(f"UPDATE src.scores SET score = score + 1 WHERE hash(user_id) % {every} = 0")
        return int(wh.sql(f"SELECT count(*) AS n FROM src.scores WHERE hash(user_id) % {every} = 0").to_pyarrow()["n"][0].as_py())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--changed", type=float, default=0.01, help="share of rows changed before the re-run")
    parser.add_argument("--upload-size", type=int, default=100)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="segloop-bench-sync-") as tmp:
        root = Path(tmp) / "ws"
        (root / "pipelines").mkdir(parents=True)
        (root / "segloop.yml").write_text("warehouses:\n  default:\n    type: duckdb\n    path: .segloop/warehouse.duckdb\n")
        collector, url = start_collector(Path(tmp) / "collector")
        try:
            (root / "pipelines" / "bench.yml").write_text(PIPELINE.format(url=url, upload_size=args.upload_size))
            write_table(root, args.rows)
            full_s, full_mb, _ = timed_run(root)
            changed = change_rows(root, args.changed)
            rerun_s, rerun_mb, _ = timed_run(root)
            stats = httpx.get(f"{url}/stats", timeout=10).json()
        finally:
            collector.terminate()
            collector.wait(10)

    accepted, deduped = stats["accepted"], stats["deduped"]
    lost = args.rows + changed - accepted
    print(f"\nsync benchmark: {args.rows:,} rows, {changed:,} changed before the re-run, "
          f"upload_size={args.upload_size}, durable collector on loopback\n")
    print("| run | rows sent | seconds | rows/s | peak RSS (MB) |")
    print("|---|---:|---:|---:|---:|")
    print(f"| full first sync | {args.rows:,} | {full_s:.1f} | {args.rows / full_s:,.0f} | {full_mb:.0f} |")
    print(f"| re-run, {args.changed:.0%} changed | {changed:,} | {rerun_s:.1f} | {changed / rerun_s:,.0f} | {rerun_mb:.0f} |")
    print(f"\nre-run / full = {rerun_s / full_s:.1%} (target < 10%); collector accepted {accepted:,}, "
          f"deduped {deduped:,}; lost {lost} (must be 0)")
    if lost:
        raise SystemExit("messages were lost")


if __name__ == "__main__":
    main()
