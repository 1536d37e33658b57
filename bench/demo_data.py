"""`segloop demo-data`'s speed: CPU per customer, cores used, where each thread's time goes.

Runs ``write_demo_data`` as the CLI does (split identities, the default chunk) into a new
DuckDB file, in a child process per run, and prints per run: wall seconds, CPU seconds
(user + system, all threads), CPU ms per customer, cores used (CPU / wall), peak RSS, the
load average at the start and end, each busy thread's CPU seconds (from
``/proc/self/task``), and how long the writing thread waited for the generator.

Code versions side by side, alternating (``--src`` puts another ``src`` first on
``PYTHONPATH``; make one with ``git archive <commit> src | tar -x -C /tmp/before``)::

    .venv/bin/python bench/demo_data.py --customers 30000
    .venv/bin/python bench/demo_data.py --customers 50000 --src /tmp/before/src --src src --repeat 2

Only wall seconds depend on what else the machine runs; compare CPU seconds and the ratio
of versions measured back to back. Workspaces go to ``--workdir`` and are deleted after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(customers: int, path: Path, chunk: int | None) -> dict[str, object]:
    """One run in this process: the figures as a dict."""
    import resource
    import threading

    import segloop.demo as demo
    from segloop.warehouses import Warehouse

    tick = os.sysconf("SC_CLK_TCK")

    def thread_cpu() -> dict[str, float]:
        cpu: dict[str, float] = {}
        for tid in os.listdir("/proc/self/task"):
            try:
                stat = Path(f"/proc/self/task/{tid}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            cpu[tid] = (int(fields[11]) + int(fields[12])) / tick
        return cpu

    seen: dict[str, float] = {}
    done = threading.Event()

    def sample() -> None:  # threads that end (DuckDB's) are read before they go
        while not done.wait(0.25):
            seen.update(thread_cpu())

    names = {str(threading.get_native_id()): "writer (main)"}
    real_prefetched = demo.prefetched
    waited = [0.0]

    def timed_prefetched(items, depth):  # type: ignore[no-untyped-def]
        def named(it):  # type: ignore[no-untyped-def]
            names[str(threading.get_native_id())] = "generator"
            yield from it

        reader = real_prefetched(named(items), depth)
        while True:
            started = time.perf_counter()
            item = next(reader, None)
            waited[0] += time.perf_counter() - started
            if item is None:
                return
            yield item

    demo.prefetched = timed_prefetched  # type: ignore[assignment]
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    kwargs = {} if chunk is None else {"chunk_customers": chunk}
    load_start = os.getloadavg()[0]
    started, cpu_start = time.perf_counter(), time.process_time()
    with Warehouse.duckdb(path) as wh:
        stats = demo.write_demo_data(wh, customers=customers, split_ids=True, **kwargs)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_start
    done.set()
    sampler.join()
    seen.update(thread_cpu())
    own = str(threading.get_native_id())
    threads = {names.get(tid, f"thread {tid}"): round(s, 1) for tid, s in
               sorted(seen.items(), key=lambda kv: -kv[1]) if s >= 0.5 or tid == own}
    return {
        "customers": customers, "events": stats.events, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
        "cpu_ms_per_customer": round(cpu / customers * 1000, 3), "cores": round(cpu / wall, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "writer_waited_s": round(waited[0], 1), "threads_cpu_s": threads,
        "load": f"{load_start:.1f}-{os.getloadavg()[0]:.1f}", "file_gb": round(path.stat().st_size / 1e9, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=30_000)
    parser.add_argument("--src", action="append", help="a `src` folder to run (several: side by side)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds over the versions")
    parser.add_argument("--chunk", type=int, help="chunk_customers (default: the code's)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "segloop-demo-data-bench")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.customers, args.child, args.chunk)))
        return
    sources = [str(Path(s).resolve()) for s in (args.src or [str(ROOT / "src")])]
    args.workdir.mkdir(parents=True, exist_ok=True)
    try:
        for round_ in range(args.repeat):
            for src in sources:
                db = args.workdir / f"demo-{round_}.duckdb"
                env = {**os.environ, "PYTHONPATH": src}
                cmd = [sys.executable, __file__, "--customers", str(args.customers), "--child", str(db)]
                if args.chunk:
                    cmd += ["--chunk", str(args.chunk)]
                out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
                print(json.dumps({"src": src, **json.loads(out.splitlines()[-1])}), flush=True)
                for leftover in args.workdir.glob(f"demo-{round_}.duckdb*"):
                    leftover.unlink()
    finally:
        shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
