"""Benchmark: events/s the collector accepts in durable mode (fsync before each 200).

Starts the collector in its own process (as `segloop collector` runs) and posts batches of
100 track events from several client threads over keep-alive connections, each with
unique messageIds. Prints one table, side by side, with ratios to the durable 8-thread
row; the "no fsync" row shows what durability costs, and the "300 half-open" row holds
300 connections that never finish their request head (within the 30 s header timeout)
while the senders run. A second table times the loader
(archive -> Segment's warehouse schema in DuckDB): a full load, an incremental append of
10% more, and a re-load with nothing new.

    .venv/bin/python bench/collector.py            # 50,000 events per row, best of 3
    .venv/bin/python bench/collector.py --events 20000 --repeat 1
    .venv/bin/python bench/collector.py --loader-only --repeat 3   # the loader table only
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

KEY = "bench_key"
BATCH = 100


def serve(data: str, fsync: bool) -> None:
    """Child process: run the collector until killed; print its URL first."""
    from segloop.segment.collector.app import CollectorSettings, run_forever

    settings = CollectorSettings(keys={KEY: "bench"}, data_dir=Path(data), fsync=fsync)
    run_forever(settings, "127.0.0.1", 0, lambda url: print(url, flush=True))


def bodies(run: str, events: int) -> list[bytes]:
    import orjson

    out = []
    sent_at = "2025-01-01T00:00:01Z"
    for b in range(events // BATCH):
        batch = [
            {
                "type": "track",
                "userId": f"user-{(b * BATCH + i) % 5000}",
                "event": "Product Viewed",
                "messageId": f"{run}-{b}-{i}",
                "timestamp": "2025-01-01T00:00:00Z",
                "properties": {"product_id": f"p{i}", "price": 19.99, "category": "shoes"},
                "context": {"library": {"name": "bench", "version": "1"}},
            }
            for i in range(BATCH)
        ]
        out.append(orjson.dumps({"batch": batch, "sentAt": sent_at}))
    return out


def run_row(label: str, fsync: bool, threads: int, events: int, half_open: int = 0) -> dict[str, float | str | int]:
    import socket

    import requests

    with tempfile.TemporaryDirectory() as data:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", data, *([] if fsync else ["--no-fsync"])],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().strip()
            session = requests.Session()
            for _ in range(200):
                try:
                    session.get(f"{url}/health", timeout=1)
                    break
                except requests.ConnectionError:
                    time.sleep(0.05)
            port = int(url.rsplit(":", 1)[1])
            idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(half_open)]
            for sock in idle:
                sock.sendall(b"POST /v1/batch HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            payloads = bodies(label.replace(" ", "_").replace(",", ""), events)
            chunks = [payloads[i::threads] for i in range(threads)]
            failures: list[int] = []

            def client(mine: list[bytes]) -> None:
                http = requests.Session()
                headers = {"Content-Type": "application/json"}
                for body in mine:
                    res = http.post(f"{url}/v1/batch", data=body, headers=headers, auth=(KEY, ""))
                    if res.status_code != 200:
                        failures.append(res.status_code)

            workers = [threading.Thread(target=client, args=(c,)) for c in chunks]
            start = time.perf_counter()
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            seconds = time.perf_counter() - start
            stats = session.get(f"{url}/stats").json()
            if half_open and stats.get("connections", {}).get("open", 0) < half_open:
                raise SystemExit(f"{label}: the half-open connections were closed during the run")
            for sock in idle:
                sock.close()
        finally:
            proc.kill()
            proc.wait()
    if failures or stats["accepted"] != events:
        raise SystemExit(f"{label}: {len(failures)} failed requests, {stats['accepted']} accepted of {events}")
    requests_sent = events // BATCH
    return {
        "row": label,
        "threads": threads,
        "events_per_s": events / seconds,
        "requests_per_commit": requests_sent / max(stats["commits"], 1),
        "ms_per_request": seconds * 1000 * threads / requests_sent,
    }


def load_rows(events: int) -> list[tuple[str, int, float, float]]:
    """Loader: a full load into DuckDB, a 10% append, and a re-load with nothing new."""
    import orjson

    from segloop.segment.archive.files import ArchiveWriter
    from segloop.segment.archive.loader import load_archive
    from segloop.warehouses import Warehouse

    def archive(root: Path, run: str, n: int) -> None:
        writer = ArchiveWriter(root)
        for body in bodies(run, n):
            batch = orjson.loads(body)["batch"]
            for i, message in enumerate(batch):
                if i % 4 == 0:
                    message.update(type="identify", traits={"email": f"{message['userId']}@x", "plan": "pro"})
                elif i % 4 == 1:
                    message["event"] = "Order Completed"
                message["receivedAt"] = "2025-01-01T00:00:02.000Z"
            writer.append({("shop", 1735689600000): [orjson.dumps(m) for m in batch]})
        writer.close()

    out = []
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        archive(root, "full", events)
        with Warehouse.duckdb(root / "wh.duckdb") as wh:
            for label, n in (("full load", events), ("append 10%", events // 10), ("nothing new", 0)):
                if n and label != "full load":
                    archive(root, label, n)
                start, cpu = time.perf_counter(), time.process_time()
                result = load_archive(wh, root / "segment-logs")
                out.append((label, result.messages, time.perf_counter() - start, time.process_time() - cpu))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3, help="Runs per row; the median is shown.")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--no-fsync", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="Print rows as JSON too.")
    parser.add_argument("--loader-only", action="store_true", help="Time only the loader (median of --repeat).")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, fsync=not args.no_fsync)
        return
    if args.loader_only:
        print_loads(args.events, [load_rows(args.events) for _ in range(args.repeat)], args.json)
        return
    plan = [
        ("durable, 1 thread", True, 1, 0),
        ("durable, 4 threads", True, 4, 0),
        ("durable, 8 threads", True, 8, 0),
        ("no fsync, 8 threads", False, 8, 0),
        ("durable, 8 + 300 half-open", True, 8, 300),
    ]
    rows = []
    for label, fsync, threads, half_open in plan:
        runs = sorted(
            (run_row(label, fsync, threads, args.events, half_open) for _ in range(args.repeat)),
            key=lambda r: float(r["events_per_s"]),
        )
        rows.append(runs[len(runs) // 2])
    base = next(r for r in rows if r["row"] == "durable, 8 threads")["events_per_s"]
    print(
        f"collector: {args.events:,} track events per run, batches of {BATCH}, keep-alive, "
        f"median of {args.repeat} runs"
    )
    print(f"{'row':<28}{'events/s':>12}{'ratio':>8}{'req/commit':>12}{'ms/request':>12}")
    for r in rows:
        ratio = float(r["events_per_s"]) / float(base)
        print(
            f"{r['row']:<28}{r['events_per_s']:>12,.0f}{ratio:>8.2f}"
            f"{r['requests_per_commit']:>12.1f}{r['ms_per_request']:>12.1f}"
        )
    if args.json:
        print(json.dumps({"collector": rows}))
    print()
    print_loads(args.events, [load_rows(args.events)], args.json)


def print_loads(events: int, runs: list[list[tuple[str, int, float, float]]], as_json: bool) -> None:
    """The loader table: per row, the median seconds (wall clock and CPU, all threads) of the runs."""
    print(f"loader into DuckDB ({events:,}-message archive, tracks/identifies/users/event tables), "
          f"median of {len(runs)}")
    print(f"{'row':<22}{'messages':>12}{'seconds':>10}{'msgs/s':>12}{'CPU s':>10}")
    medians = []
    for i, (label, messages, _, _) in enumerate(runs[0]):
        times = sorted(run[i][2] for run in runs)
        cpus = sorted(run[i][3] for run in runs)
        seconds, cpu = times[len(times) // 2], cpus[len(cpus) // 2]
        medians.append((label, messages, seconds, cpu))
        rate = f"{messages / seconds:>12,.0f}" if messages else f"{'-':>12}"
        print(f"{label:<22}{messages:>12,}{seconds:>10.2f}{rate}{cpu:>10.2f}")
    if as_json:
        print(json.dumps({"loader": medians, "runs": runs}))


if __name__ == "__main__":
    main()
