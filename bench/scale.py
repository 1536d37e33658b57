"""The demo at growing sizes: demo-data and each node's seconds and peak memory (issue 19).

For each size (customers), in a workspace of its own:

1. ``segloop demo-data --customers N`` runs in a child process under ``/usr/bin/time -v``:
   wall seconds, CPU seconds (user + system) and peak RSS of the whole process.
2. The demo pipeline (``examples/demo/pipelines/demo.yml``) runs as ``segloop run demo
   --dry-run`` does (``Pipeline.run(dry_run=True)``: nothing is sent), in a child process
   of this script under ``/usr/bin/time -v`` (wall and CPU seconds). Inside it a
   ``Reporter`` hears each node start and finish: the node's seconds, and its peak RSS
   from the kernel's high-water mark (``VmHWM``), reset at each node's start by writing
   ``5`` to ``/proc/self/clear_refs``; where the kernel refuses that, a thread samples
   ``VmRSS`` every 20 ms instead (the table says which). Nodes run one at a time, so a
   node's peak is the process's peak while it runs (including what earlier nodes left);
   the whole run's peak is the highest of them and of what ``time`` saw after the last.

Then it prints one table per size, the log-log slope of each figure between consecutive
sizes (1.0: linear; 0: flat) and a projection to 10M customers: the largest size's figure
times (10M / size) ** slope of the last two sizes, an estimate that assumes the growth
seen between them goes on (peaks that are flat stay flat; nothing accounts for spilling).

    .venv/bin/python bench/scale.py                              # 100k, 300k, 1M (hours)
    .venv/bin/python bench/scale.py --sizes 100k --workdir /tmp/scale   # keeps the data
    .venv/bin/python bench/scale.py --quick                      # 10k and 30k, minutes
    .venv/bin/python bench/scale.py --sizes 100k --demo-data-only --before ad28749

``--before COMMIT`` also runs the demo-data of an older commit (its whole ``src/segloop``,
put first on ``PYTHONPATH``) at each size, back to back with the current one.
``--workdir`` keeps each size's workspace; a later run with ``--reuse`` skips demo-data
where the data is there.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEMO_PIPELINE = ROOT / "examples" / "demo" / "pipelines" / "demo.yml"
PYTHON = sys.executable
SEGLOOP = str(Path(PYTHON).with_name("segloop"))
TARGET = 10_000_000


def parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([km]?)", text.strip().lower())
    if not match:
        raise SystemExit(f"size `{text}`: write it like 100k, 1m or 250000")
    return int(float(match[1]) * {"": 1, "k": 1_000, "m": 1_000_000}[match[2]])


def timed(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[dict[str, float], str]:
    """Run ``cmd`` under /usr/bin/time -v: (wall s, cpu s, peak MB), and its stdout."""
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    figures = dict(re.findall(r"^\s*(.+?): (.+)$", proc.stderr, re.M))
    minutes, seconds = figures["Elapsed (wall clock) time (h:mm:ss or m:ss)"].rsplit(":", 1)
    wall = float(seconds) + sum(float(p) * 60 ** (i + 1) for i, p in enumerate(reversed(minutes.split(":"))))
    return {"s": wall, "cpu_s": float(figures["User time (seconds)"]) + float(figures["System time (seconds)"]),
            "peak_mb": int(figures["Maximum resident set size (kbytes)"]) / 1024,
            "load_at_end": os.getloadavg()[0]}, proc.stdout


def workspace(base: Path, customers: int) -> Path:
    root = base / str(customers)
    (root / "pipelines").mkdir(parents=True, exist_ok=True)
    (root / "segloop.yml").write_text("warehouses:\n  default:\n    type: duckdb\n    path: .segloop/warehouse.duckdb\n")
    shutil.copy(DEMO_PIPELINE, root / "pipelines" / "demo.yml")
    return root


def demo_data(root: Path, customers: int) -> dict[str, float]:
    figures, _ = timed([SEGLOOP, "demo-data", "--customers", str(customers)], root)
    return figures


def demo_data_before(root: Path, customers: int, commit: str) -> dict[str, float]:
    """``segloop demo-data`` as of ``commit`` (its whole ``src/segloop``, first on the path) into ``root``."""
    old = Path(tempfile.mkdtemp(prefix="scale-before-"))
    archive = subprocess.run(["git", "archive", commit, "src/segloop"], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
    env = {**os.environ, "PYTHONPATH": str(old / "src")}
    try:
        figures, _ = timed([PYTHON, "-m", "segloop.cli", "demo-data", "--customers", str(customers)], root, env)
    finally:
        shutil.rmtree(old, ignore_errors=True)
    return figures


def run_pipeline(root: Path) -> tuple[dict[str, float], dict[str, Any]]:
    env = {**os.environ, "SEGMENT_WRITE_KEY": "bench-dry-run", "SEGLOOP_ENDPOINT": "http://127.0.0.1:9"}
    figures, out = timed([PYTHON, __file__, "--child-run", str(root)], root, env)
    run = json.loads(out.strip().splitlines()[-1])
    # Resetting VmHWM resets the peak /usr/bin/time sees too (the kernel keeps one mark):
    # the run's peak is the highest of the nodes' and what came after the last reset.
    figures["peak_mb"] = max([figures["peak_mb"], *(node["peak_mb"] for node in run["nodes"].values())])
    return figures, run


# -- the child: one pipeline run with per-node figures ---------------------------------------


def _status(field: str) -> int:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM), in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _can_reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def child_run(root: Path) -> None:
    from segloop.pipeline import NodeResult, Pipeline, Reporter

    reset = _can_reset_peak()

    class Measure(Reporter):
        def __init__(self) -> None:
            self.nodes: dict[str, dict[str, Any]] = {}
            self.current: str | None = None
            self.peak = 0
            self.started = 0.0
            if not reset:
                threading.Thread(target=self.sample, daemon=True).start()

        def sample(self) -> None:
            while True:
                self.peak = max(self.peak, _status("VmRSS"))
                time.sleep(0.02)

        def node_started(self, name: str, node_type: str) -> None:
            if reset:
                _can_reset_peak()
            self.peak = _status("VmRSS")
            self.current, self.started = name, time.perf_counter()

        def node_finished(self, result: NodeResult) -> None:
            if self.current != result.name:  # skipped: never started
                return
            peak = _status("VmHWM") if reset else self.peak
            self.nodes[result.name] = {"type": result.type, "s": time.perf_counter() - self.started,
                                       "peak_mb": peak / 2**20, "rows": result.rows, "status": result.status,
                                       "error": result.error}
            self.current = None

    measure = Measure()
    started = time.perf_counter()
    result = Pipeline.load(root / "pipelines" / "demo.yml").run(dry_run=True, reporter=measure)
    print(json.dumps({"ok": result.ok, "seconds": time.perf_counter() - started, "nodes": measure.nodes,
                      "peak_method": "VmHWM reset per node" if reset else "VmRSS sampled every 20 ms"}))


# -- the report ------------------------------------------------------------------------------


def slope(a: float, b: float, n_a: int, n_b: int) -> float | None:
    if a <= 0 or b <= 0:
        return None
    return math.log(b / a) / math.log(n_b / n_a)


def fmt_slope(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def report(results: dict[int, dict[str, Any]]) -> None:
    sizes = sorted(results)
    print("\n## demo-data")
    print("| customers | s | cpu s | peak MB | before: s | cpu s | peak MB |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in sizes:
        dd, before = results[n].get("demo_data"), results[n].get("before")
        cells = [f"{n:,}"] + ([f"{dd['s']:.0f}", f"{dd['cpu_s']:.0f}", f"{dd['peak_mb']:.0f}"] if dd else ["-"] * 3)
        cells += [f"{before['s']:.0f}", f"{before['cpu_s']:.0f}", f"{before['peak_mb']:.0f}"] if before else ["-"] * 3
        print("| " + " | ".join(cells) + " |")
    runs = [n for n in sizes if "run" in results[n]]
    if not runs:
        return
    nodes = list(results[runs[0]]["run"]["nodes"])
    print(f"\n## pipeline (dry run); node peaks: {results[runs[0]]['run']['peak_method']}")
    header = " | ".join(f"{n:,}: s / peak MB" for n in runs)
    print(f"| node | type | {header} |" + "".join(f" slope {a:,}->{b:,} s / peak |" for a, b in zip(runs, runs[1:], strict=False)))
    print("|---|---|" + "---:|" * (len(runs) + len(runs) - 1))
    rows = [("whole run", "", {n: {"s": results[n]["run_total"]["s"], "peak_mb": results[n]["run_total"]["peak_mb"]}
                               for n in runs})]
    rows += [(name, results[runs[0]]["run"]["nodes"][name]["type"],
              {n: results[n]["run"]["nodes"].get(name) for n in runs}) for name in nodes]
    projections = []
    for name, kind, by_size in rows:
        cells = [f"{by_size[n]['s']:.1f} / {by_size[n]['peak_mb']:.0f}" if by_size.get(n) else "-" for n in runs]
        slopes = []
        for a, b in zip(runs, runs[1:], strict=False):
            if by_size.get(a) and by_size.get(b):
                slopes.append((slope(by_size[a]["s"], by_size[b]["s"], a, b),
                               slope(by_size[a]["peak_mb"], by_size[b]["peak_mb"], a, b)))
            else:
                slopes.append((None, None))
        print(f"| {name} | {kind} | " + " | ".join(cells) + " |"
              + "".join(f" {fmt_slope(s)} / {fmt_slope(p)} |" for s, p in slopes))
        last = runs[-1]
        if slopes and by_size.get(last) and slopes[-1][0] is not None and slopes[-1][1] is not None:
            s_slope, p_slope = slopes[-1]
            factor = TARGET / last
            projections.append((name, by_size[last]["s"] * factor ** s_slope,
                                by_size[last]["peak_mb"] * factor ** max(p_slope, 0.0)))
    if projections:
        print(f"\n## projection to {TARGET:,} customers (estimate: the {runs[-1]:,} figure times "
              f"({TARGET:,} / {runs[-1]:,}) ** the slope between the two largest sizes)")
        print("| node | s | peak MB |\n|---|---:|---:|")
        for name, seconds, peak in projections:
            print(f"| {name} | {seconds:,.0f} | {peak:,.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100k,300k,1m", help="customers, comma separated (default 100k,300k,1m)")
    parser.add_argument("--quick", action="store_true", help="sizes 10k,30k: minutes, to try the script")
    parser.add_argument("--workdir", type=Path, help="keep each size's workspace here (default: a temp folder)")
    parser.add_argument("--reuse", action="store_true", help="with --workdir: skip demo-data where the data is there")
    parser.add_argument("--demo-data-only", action="store_true", help="measure demo-data, not the pipeline")
    parser.add_argument("--pipeline-only", action="store_true", help="with --reuse: measure the pipeline only")
    parser.add_argument("--before", metavar="COMMIT", help="also run demo-data as of COMMIT, back to back")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--child-run", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_run:
        child_run(args.child_run)
        return
    sizes = [10_000, 30_000] if args.quick else [parse_size(s) for s in args.sizes.split(",")]
    base = args.workdir or Path(tempfile.mkdtemp(prefix="segloop-scale-"))
    load = os.getloadavg()
    print(f"# bench/scale.py {' '.join(sys.argv[1:])}: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{os.cpu_count()} cores, load average {load[0]:.1f} at start", flush=True)
    results: dict[int, dict[str, Any]] = {}
    try:
        for n in sizes:
            root = workspace(base, n)
            figures: dict[str, Any] = {}
            data = root / ".segloop" / "warehouse.duckdb"
            if args.before:
                if data.exists():
                    data.unlink()
                figures["before"] = demo_data_before(root, n, args.before)
                print(f"{n:,} customers: demo-data as of {args.before}: {figures['before']}", flush=True)
            if not (args.reuse and data.exists() and not args.before) and not args.pipeline_only:
                if data.exists():
                    data.unlink()
                figures["demo_data"] = demo_data(root, n)
                print(f"{n:,} customers: demo-data {figures['demo_data']}", flush=True)
            if not args.demo_data_only:
                figures["run_total"], figures["run"] = run_pipeline(root)
                print(f"{n:,} customers: run {figures['run_total']} ok={figures['run']['ok']}", flush=True)
            results[n] = figures
    finally:
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
        report(results)
        load = os.getloadavg()
        print(f"\nload average {load[0]:.1f} at the end")
        if args.workdir is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
