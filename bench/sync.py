"""Benchmark: a full first sync of a 1M-row table, then a re-run with 1% of rows changed.

Real parts only: `segloop run` in a subprocess against a DuckDB file, sending identify calls
to `segloop collector` (durable: fsync before each 200) in another subprocess on 127.0.0.1.
Reports seconds and peak RSS of each run, the re-run / full ratio (target < 10%), where the
segment node's time went (from the run history), and checks zero loss: every row arrived,
each messageId once.

`--endpoint sink` sends to bench/sender.py's minimal counting server instead of the
collector, which separates the sync's own cost from the collector's (JSON parsing and
fsync in Python, on the same cores).

    .venv/bin/python bench/sync.py                    # 1,000,000 rows, 1% changed
    .venv/bin/python bench/sync.py --rows 100000
    .venv/bin/python bench/sync.py --endpoint sink    # the sync without the collector's cost
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the pipeline is the tests' (tests/operators/segment_fixtures.py)

from tests.operators.segment_fixtures import scores_to_segment  # noqa: E402

KEY = "bench-write-key"
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


def start_sink() -> tuple[subprocess.Popen[str], str]:
    """bench/sender.py's asyncio server: counts messages and unique messageIds, nothing else."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("sender.py")), "--serve", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{url}/stats", timeout=1)
            return proc, url
        except httpx.HTTPError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise SystemExit("the sink server did not start") from None
            time.sleep(0.1)


def received(url: str, endpoint: str) -> tuple[int, int]:
    """(messages accepted, unique messageIds) at the endpoint."""
    stats = httpx.get(f"{url}/stats", timeout=10).json()
    if endpoint == "sink":
        return int(stats["messages"]), int(stats["unique"])
    return int(stats["accepted"]), int(stats["accepted"])  # the collector drops repeated ids


def node_breakdown(root: Path) -> dict[str, float]:
    """Seconds of each node of the latest run, and the segment node's send rate."""
    from segloop.store import RunStore

    store = RunStore(root / ".segloop" / "state.db")
    try:
        run = store.list_runs("bench", 1)[0]
        nodes = {n.node: n for n in store.node_runs(run.id)}
    finally:
        store.close()
    segment = nodes["to_segment"]
    return {"scores_s": nodes["scores"].seconds, "segment_s": segment.seconds,
            "msg_per_s": float(segment.metrics.get("messages_per_second", 0.0))}


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
    from segloop.warehouses import DuckDBConfig, Warehouse

    with Warehouse.connect(DuckDBConfig(), root) as wh:
        wh.raw_sql("CREATE SCHEMA IF NOT EXISTS src")
        wh.raw_sql(
            "CREATE OR REPLACE TABLE src.scores AS SELECT 'u' || range::VARCHAR AS user_id, "
            "round(random(), 4) AS score, 's' || (range % 10)::VARCHAR AS segment, "
            f"CASE WHEN range % 3 = 0 THEN 'pro' ELSE 'free' END AS plan FROM range({rows})"
        )


def change_rows(root: Path, share: float) -> int:
    from segloop.warehouses import DuckDBConfig, Warehouse

    every = round(1 / share)
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        wh.raw_sql(f"UPDATE src.scores SET score = score + 1 WHERE hash(user_id) % {every} = 0")
        return int(wh.sql(f"SELECT count(*) AS n FROM src.scores WHERE hash(user_id) % {every} = 0").to_pyarrow()["n"][0].as_py())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--changed", type=float, default=0.01, help="share of rows changed before the re-run")
    parser.add_argument("--upload-size", type=int, default=100)
    parser.add_argument("--endpoint", choices=["collector", "sink"], default="collector",
                        help="the durable collector (default) or a minimal counting server")
    args = parser.parse_args()
    load_before = os.getloadavg()

    with tempfile.TemporaryDirectory(prefix="segloop-bench-sync-") as tmp:
        root = Path(tmp) / "ws"
        (root / "pipelines").mkdir(parents=True)
        (root / "segloop.yml").write_text("warehouses:\n  default:\n    type: duckdb\n    path: .segloop/warehouse.duckdb\n")
        server, url = start_sink() if args.endpoint == "sink" else start_collector(Path(tmp) / "collector")
        try:
            (root / "pipelines" / "bench.yml").write_text(scores_to_segment(
                name="bench", key_env="SEGLOOP_BENCH_KEY", endpoint=url, call="identify", customer_id="user_id",
                traits="[score, segment, plan]", upload_size=args.upload_size))
            write_table(root, args.rows)
            full_s, full_mb, _ = timed_run(root)
            full_nodes = node_breakdown(root)
            changed = change_rows(root, args.changed)
            rerun_s, rerun_mb, _ = timed_run(root)
            rerun_nodes = node_breakdown(root)
            accepted, unique = received(url, args.endpoint)
        finally:
            server.terminate()
            server.wait(10)

    load_after = os.getloadavg()
    lost = args.rows + changed - unique
    where = "durable collector" if args.endpoint == "collector" else "counting sink (bench/sender.py)"
    print(f"\nsync benchmark: {args.rows:,} rows, {changed:,} changed before the re-run, "
          f"upload_size={args.upload_size}, {where} on loopback, {os.cpu_count()} cores, "
          f"load average {load_before[0]:.1f} before / {load_after[0]:.1f} after (1 min), "
          f"{load_after[1]:.1f} (5 min)\n")
    print("| run | rows sent | seconds | rows/s | peak RSS (MB) | sql node s | segment node s | send msg/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, sent, seconds, mb, nodes in (
        ("full first sync", args.rows, full_s, full_mb, full_nodes),
        (f"re-run, {args.changed:.0%} changed", changed, rerun_s, rerun_mb, rerun_nodes),
    ):
        print(f"| {label} | {sent:,} | {seconds:.1f} | {sent / seconds:,.0f} | {mb:.0f} | "
              f"{nodes['scores_s']:.1f} | {nodes['segment_s']:.1f} | {nodes['msg_per_s']:,.0f} |")
    print(f"\nre-run / full = {rerun_s / full_s:.1%} (target < 10%); endpoint received {accepted:,} "
          f"messages, {unique:,} unique ids; lost {lost} (must be 0)")
    if lost:
        raise SystemExit("messages were lost")


if __name__ == "__main__":
    main()
