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
    .venv/bin/python bench/scale.py --sizes 300k,1m --duckdb-memory 1GiB,default --workdir /tmp/scale --reuse
    .venv/bin/python bench/scale.py --sizes 100k --before 07d205f --before-pipeline

``--before COMMIT`` also runs the demo-data of an older commit (its whole ``src/segloop``,
put first on ``PYTHONPATH``) at each size, back to back with the current one; with
``--before-pipeline`` also that commit's demo pipeline (its ``demo.yml``) on its own data,
right after its demo-data (before the current demo-data replaces it).
With ``--reuse --pipeline-only`` the older pipeline runs on the data that is there (the
current demo-data's), so both pipelines read the same rows.
``--workdir`` keeps each size's workspace; a later run with ``--reuse`` skips demo-data
where the data is there.

``--duckdb-memory 1GiB,default`` runs the pipeline once per DuckDB buffer pool at each size,
back to back (the warehouse's ``memory_limit`` in the workspace's ``segloop.yml``;
``default`` leaves it out: ``segloop.memory.duckdb_memory_limit``). A node's peak includes
that pool, so comparing peaks across sizes is fair only with a pool that is full at both.
``--memory-limit 8GB`` sets the workspace's ``memory_limit:`` (what a node may hold in
Python; above what the data needs, no node samples: the full-data quality figures).

Besides seconds and peaks, it prints each model node's quality card from the run (AUC of
propensity, NDCG@10 of recommend, the stability ARI of clusters, the holdout Spearman of
clv), whether the node trained on a sample, and a standard error where the card gives
what it needs (AUC: Hanley & McNeil from the validation rows and base rate; Spearman:
Fisher's z, 1.03 / sqrt(n - 3), mapped back; NDCG@10: the bound 0.5 / sqrt(customers)).
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


def timed(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[dict[str, Any], str]:
    """Run ``cmd`` under /usr/bin/time -v: (wall s, cpu s, peak MB), and its stdout."""
    load = os.getloadavg()[0]
    started = time.strftime("%H:%M:%S UTC", time.gmtime())
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    figures = dict(re.findall(r"^\s*(.+?): (.+)$", proc.stderr, re.M))
    minutes, seconds = figures["Elapsed (wall clock) time (h:mm:ss or m:ss)"].rsplit(":", 1)
    wall = float(seconds) + sum(float(p) * 60 ** (i + 1) for i, p in enumerate(reversed(minutes.split(":"))))
    return {"s": wall, "cpu_s": float(figures["User time (seconds)"]) + float(figures["System time (seconds)"]),
            "peak_mb": int(figures["Maximum resident set size (kbytes)"]) / 1024,
            "load_at_start": load, "load_at_end": os.getloadavg()[0], "started": started}, proc.stdout


def workspace(base: Path, customers: int | str, duckdb_memory: str | None = None, memory_limit: str | None = None,
              pipeline: str | None = None) -> Path:
    """Size ``customers``'s workspace: ``segloop.yml`` with the given memory settings (None: left
    out, the defaults) and the demo pipeline (``pipeline``: its text, an older commit's)."""
    root = base / str(customers)
    (root / "pipelines").mkdir(parents=True, exist_ok=True)
    text = "warehouses:\n  default:\n    type: duckdb\n    path: .segloop/warehouse.duckdb\n"
    if duckdb_memory:
        text += f"    memory_limit: {duckdb_memory}\n"
    if memory_limit:
        text += f"memory_limit: {memory_limit}\n"
    (root / "segloop.yml").write_text(text)
    if pipeline is None:
        shutil.copy(DEMO_PIPELINE, root / "pipelines" / "demo.yml")
    else:
        (root / "pipelines" / "demo.yml").write_text(pipeline)
    return root


def demo_data(root: Path, customers: int) -> dict[str, Any]:
    figures, _ = timed([SEGLOOP, "demo-data", "--customers", str(customers)], root)
    return figures


OLDER_STORAGE = "v1.4.0"
"""The DuckDB file format an older commit's DuckDB (1.x) reads: duckdb 2 writes version 69."""


def copy_for_older_duckdb(data: Path, target: Path) -> None:
    """Copy the warehouse ``data`` into ``target`` in DuckDB 1.x's storage format (not timed)."""
    import duckdb

    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    started = time.perf_counter()
    with duckdb.connect() as con:
        con.execute(f"ATTACH '{data}' AS current_data (READ_ONLY)")
        con.execute(f"ATTACH '{target}' AS older (STORAGE_VERSION '{OLDER_STORAGE}')")
        con.execute("COPY FROM DATABASE current_data TO older")
    print(f"copied {data} for the older DuckDB in {time.perf_counter() - started:.0f} s", flush=True)


def checkout(commit: str) -> Path:
    """``commit``'s ``src/segloop`` in a temporary folder (its ``src`` goes first on ``PYTHONPATH``)."""
    old = Path(tempfile.mkdtemp(prefix="scale-before-"))
    archive = subprocess.run(["git", "archive", commit, "src/segloop"], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
    return old / "src"


def old_pipeline(commit: str) -> str:
    """The demo pipeline file as of ``commit``."""
    return subprocess.run(["git", "show", f"{commit}:examples/demo/pipelines/demo.yml"], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout


def demo_data_before(root: Path, customers: int, src: Path, python: str = PYTHON) -> dict[str, Any]:
    """``segloop demo-data`` of an older ``src`` (first on the path) into ``root``."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    figures, _ = timed([python, "-m", "segloop.cli", "demo-data", "--customers", str(customers)], root, env)
    return figures


def run_pipeline(root: Path, src: Path | None = None, python: str = PYTHON) -> tuple[dict[str, Any], dict[str, Any]]:
    """The dry run in a child process; ``src``: an older ``src`` first on ``PYTHONPATH``."""
    env = {**os.environ, "SEGMENT_WRITE_KEY": "bench-dry-run", "SEGLOOP_ENDPOINT": "http://127.0.0.1:9"}
    if src is not None:
        env["PYTHONPATH"] = str(src)
    figures, out = timed([python, __file__, "--child-run", str(root)], root, env)
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
            self.start = 0  # VmRSS when the current node started: what the process already held
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
            self.peak = self.start = _status("VmRSS")
            self.current, self.started = name, time.perf_counter()

        def node_finished(self, result: NodeResult) -> None:
            if self.current != result.name:  # skipped: never started
                return
            peak = _status("VmHWM") if reset else self.peak
            self.nodes[result.name] = {"type": result.type, "s": time.perf_counter() - self.started,
                                       "peak_mb": peak / 2**20, "start_mb": self.start / 2**20,
                                       "rows": result.rows, "status": result.status,
                                       "error": result.error}
            self.current = None

    measure = Measure()
    started = time.perf_counter()
    result = Pipeline.load(root / "pipelines" / "demo.yml").run(dry_run=True, reporter=measure)
    for node in result.nodes:  # the final metrics (a streamed output adds some after it is written)
        if node.name in measure.nodes:
            measure.nodes[node.name]["quality"] = quality_of(node.type, getattr(node, "metrics", None) or {})
    print(json.dumps({"ok": result.ok, "seconds": time.perf_counter() - started, "nodes": measure.nodes,
                      "peak_method": "VmHWM reset per node" if reset else "VmRSS sampled every 20 ms"},
                     default=str))


QUALITY_KEYS = {
    "propensity": ("auc", "baseline_auc", "base_rate", "validation_sample", "validation_sampled",
                   "training_sample", "training_sampled", "training_customers"),
    "recommend": ("ndcg_at_10", "popular_ndcg_at_10", "evaluated_customers", "sampled", "training_customers",
                  "customers", "model"),
    "clusters": ("stability_ari", "silhouette", "k", "training_rows", "sampled"),
    "clv": ("holdout_spearman", "holdout_baseline_spearman", "holdout_customers", "holdout_sample",
            "fit_sample_share"),
}


def quality_of(node_type: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """The card's figures of a model node that the scale report compares across sizes."""
    return {key: metrics[key] for key in QUALITY_KEYS.get(node_type, ()) if key in metrics}


def quality_line(node_type: str, q: dict[str, Any]) -> tuple[str, str, str]:
    """(figure, its standard error, what it was trained on) of one node's card."""
    def sampled(flag: object, note: str) -> str:
        return f"sample ({note})" if flag else "all"

    if node_type == "propensity" and "auc" in q:
        n, rate = q.get("validation_sample"), q.get("base_rate")
        se = "-"
        if n and rate and 0 < rate < 1:
            se = f"{auc_se(q['auc'], n * rate, n * (1 - rate)):.4f}"
        return (f"AUC {q['auc']:.4f} (recency {q.get('baseline_auc', float('nan')):.4f})", se,
                sampled(q.get("training_sampled"), f"{q.get('training_sample', 0):,} rows"))
    if node_type == "recommend" and "ndcg_at_10" in q:
        n = q.get("evaluated_customers") or 0
        return (f"NDCG@10 {q['ndcg_at_10']:.4f} (popular {q.get('popular_ndcg_at_10', float('nan')):.4f})",
                f"<= {0.5 / math.sqrt(n):.4f}" if n else "-",
                sampled(q.get("sampled"), f"{q.get('training_customers', 0):,} customers"))
    if node_type == "clusters" and "stability_ari" in q:
        return (f"ARI {q['stability_ari']:.4f} (silhouette {q.get('silhouette', float('nan')):.4f})", "-",
                sampled(q.get("sampled"), f"{q.get('training_rows', 0):,} rows"))
    if node_type == "clv" and "holdout_spearman" in q:
        n = q.get("holdout_sample") or q.get("holdout_customers") or 0
        rho = q["holdout_spearman"]
        se = f"{(1 - rho ** 2) * 1.03 / math.sqrt(n - 3):.4f}" if n > 3 else "-"
        share = q.get("fit_sample_share")
        return (f"Spearman {rho:.4f} (past spend {q.get('holdout_baseline_spearman', float('nan')):.4f})", se,
                sampled(share is not None and share < 1, f"fit on {share or 1:.1%}") + f"; card on {n:,}")
    return ("-", "-", "-")


def auc_se(auc: float, positives: float, negatives: float) -> float:
    """Hanley & McNeil's (1982) standard error of an AUC."""
    q1, q2 = auc / (2 - auc), 2 * auc ** 2 / (1 + auc)
    variance = (auc * (1 - auc) + (positives - 1) * (q1 - auc ** 2)
                + (negatives - 1) * (q2 - auc ** 2)) / (positives * negatives)
    return math.sqrt(max(variance, 0.0))


# -- the report ------------------------------------------------------------------------------


def slope(a: float, b: float, n_a: int, n_b: int) -> float | None:
    if a <= 0 or b <= 0:
        return None
    return math.log(b / a) / math.log(n_b / n_a)


def fmt_slope(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def pipeline_table(label: str, by_n: dict[int, dict[str, Any]], project: bool) -> None:
    """One series (a code version and its memory settings) across sizes: seconds, peaks,
    growth from one size to the next (ratio and log-log slope), and the 10M projection."""
    runs = sorted(by_n)
    first = by_n[runs[0]]["run"]
    nodes = list(first["nodes"])
    print(f"\n## pipeline (dry run), {label}; node peaks: {first['peak_method']}")
    pairs = list(zip(runs, runs[1:], strict=False))
    header = " | ".join(f"{n:,}: s / peak MB" for n in runs)
    print(f"| node | type | {header} |"
          + "".join(f" {a:,}->{b:,}: s x / peak x | slope s / peak |" for a, b in pairs))
    print("|---|---|" + "---:|" * (len(runs) + 2 * len(pairs)))
    rows = [("whole run", "", {n: {"s": by_n[n]["total"]["s"], "peak_mb": by_n[n]["total"]["peak_mb"]}
                               for n in runs})]
    rows += [(name, first["nodes"][name]["type"], {n: by_n[n]["run"]["nodes"].get(name) for n in runs})
             for name in nodes]
    projections = []
    for name, kind, by_size in rows:
        cells = [f"{by_size[n]['s']:.1f} / {by_size[n]['peak_mb']:.0f}" if by_size.get(n) else "-" for n in runs]
        growth, slopes = [], []
        for a, b in pairs:
            if by_size.get(a) and by_size.get(b):
                growth.append(f"{by_size[b]['s'] / by_size[a]['s']:.2f} / {by_size[b]['peak_mb'] / by_size[a]['peak_mb']:.2f}")
                slopes.append((slope(by_size[a]["s"], by_size[b]["s"], a, b),
                               slope(by_size[a]["peak_mb"], by_size[b]["peak_mb"], a, b)))
            else:
                growth.append("-")
                slopes.append((None, None))
        print(f"| {name} | {kind} | " + " | ".join(cells) + " |"
              + "".join(f" {g} | {fmt_slope(s)} / {fmt_slope(p)} |" for g, (s, p) in zip(growth, slopes, strict=True)))
        last = runs[-1]
        s_slope, p_slope = slopes[-1] if slopes else (None, None)
        if by_size.get(last) and s_slope is not None and p_slope is not None:
            factor = TARGET / last
            projections.append((name, by_size[last]["s"] * factor ** s_slope,
                                by_size[last]["peak_mb"] * factor ** max(p_slope, 0.0)))
    own = [(name, kind, by_size) for name, kind, by_size in rows[1:]
           if all(by_size.get(n) and "start_mb" in by_size[n] for n in runs)]
    if own:
        # A node's peak is what the process held when it started plus what the node added:
        # the second part is the node's own memory, the first is its predecessors'.
        print(f"\n## each node's own growth: peak - RSS at its start (MB), {label}")
        print("| node | type | " + " | ".join(f"{n:,}: start / own" for n in runs) + " |"
              + "".join(f" {a:,}->{b:,}: own x |" for a, b in pairs))
        print("|---|---|" + "---:|" * (len(runs) + len(pairs)))
        for name, kind, by_size in own:
            cells = [f"{by_size[n]['start_mb']:.0f} / {by_size[n]['peak_mb'] - by_size[n]['start_mb']:.0f}"
                     for n in runs]
            ratios = []
            for a, b in pairs:
                grow_a = by_size[a]["peak_mb"] - by_size[a]["start_mb"]
                grow_b = by_size[b]["peak_mb"] - by_size[b]["start_mb"]
                ratios.append(f"{grow_b / grow_a:.2f}" if grow_a > 0 else "-")
            print(f"| {name} | {kind} | " + " | ".join(cells) + " |" + "".join(f" {r} |" for r in ratios))
    if project and projections:
        print(f"\n## projection to {TARGET:,} customers, {label} (estimate: the {runs[-1]:,} figure times "
              f"({TARGET:,} / {runs[-1]:,}) ** the slope between the two largest sizes)")
        print("| node | s | peak MB |\n|---|---:|---:|")
        for name, seconds, peak in projections:
            print(f"| {name} | {seconds:,.0f} | {peak:,.0f} |")


def side_by_side(n: int, series: dict[str, dict[str, Any]]) -> None:
    """The runs of one size under each setting, back to back: figures and ratios to the first."""
    labels = list(series)
    base = labels[0]
    print(f"\n## {n:,} customers, side by side (ratios to `{base}`)")
    print("| node | " + " | ".join(f"{label}: s / peak MB" for label in labels) + " |"
          + "".join(f" {label}: s x / peak x |" for label in labels[1:]))
    print("|---|" + "---:|" * (2 * len(labels) - 1))
    names = ["whole run", *series[base]["run"]["nodes"]]

    def figures(label: str, name: str) -> dict[str, Any] | None:
        if name == "whole run":
            return series[label]["total"]
        return series[label]["run"]["nodes"].get(name)

    for name in names:
        cells = []
        for label in labels:
            f = figures(label, name)
            cells.append(f"{f['s']:.1f} / {f['peak_mb']:.0f}" if f else "-")
        ratios = []
        for label in labels[1:]:
            a, b = figures(base, name), figures(label, name)
            ratios.append(f"{b['s'] / a['s']:.2f} / {b['peak_mb'] / a['peak_mb']:.2f}" if a and b and a["s"] else "-")
        print(f"| {name} | " + " | ".join(cells) + " |" + "".join(f" {r} |" for r in ratios))


def quality_table(results: dict[int, dict[str, Any]]) -> None:
    print("\n## model quality (each run's card)")
    print("| customers | run | node | figure | standard error | trained on |")
    print("|---:|---|---|---|---:|---|")
    for n in sorted(results):
        for label, one in results[n].get("runs", {}).items():
            for name, node in one["run"]["nodes"].items():
                if node.get("quality"):
                    figure, se, trained = quality_line(node["type"], node["quality"])
                    print(f"| {n:,} | {label} | {name} | {figure} | {se} | {trained} |")


def report(results: dict[int, dict[str, Any]]) -> None:
    sizes = sorted(results)
    print("\n## demo-data")
    print("| customers | s | cpu s | peak MB | load | before: s | cpu s | peak MB | load |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in sizes:
        dd, before = results[n].get("demo_data"), results[n].get("before")
        cells = [f"{n:,}"]
        for f in (dd, before):
            cells += ([f"{f['s']:.0f}", f"{f['cpu_s']:.0f}", f"{f['peak_mb']:.0f}",
                       f"{f.get('load_at_start', float('nan')):.1f}-{f['load_at_end']:.1f}"] if f else ["-"] * 4)
        print("| " + " | ".join(cells) + " |")
    labels: list[str] = []
    for n in sizes:
        labels += [label for label in results[n].get("runs", {}) if label not in labels]
    for label in labels:
        by_n = {n: results[n]["runs"][label] for n in sizes if label in results[n].get("runs", {})}
        pipeline_table(label, by_n, project=not label.startswith("before"))
    for n in sizes:
        if len(results[n].get("runs", {})) > 1:
            side_by_side(n, results[n]["runs"])
    quality_table(results)


def merged(files: list[Path]) -> dict[int, dict[str, Any]]:
    """Several ``--json`` files as one result: per size, the figures of each (later files
    add runs, and replace demo-data figures they have too)."""
    results: dict[int, dict[str, Any]] = {}
    for file in files:
        for size, figures in json.loads(file.read_text()).items():
            into = results.setdefault(int(size), {"runs": {}})
            into["runs"].update(figures.get("runs", {}))
            into.update({key: value for key, value in figures.items() if key != "runs"})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100k,300k,1m", help="customers, comma separated (default 100k,300k,1m)")
    parser.add_argument("--quick", action="store_true", help="sizes 10k,30k: minutes, to try the script")
    parser.add_argument("--workdir", type=Path, help="keep each size's workspace here (default: a temp folder)")
    parser.add_argument("--reuse", action="store_true", help="with --workdir: skip demo-data where the data is there")
    parser.add_argument("--demo-data-only", action="store_true", help="measure demo-data, not the pipeline")
    parser.add_argument("--pipeline-only", action="store_true", help="with --reuse: measure the pipeline only")
    parser.add_argument("--before", metavar="COMMIT", help="also run demo-data as of COMMIT, back to back")
    parser.add_argument("--before-pipeline", action="store_true",
                        help="with --before: also COMMIT's demo pipeline on its data, right after its demo-data "
                             "(with --pipeline-only: on the data that is there)")
    parser.add_argument("--before-python", default=PYTHON, metavar="PATH",
                        help="with --before: the interpreter of a venv with COMMIT's dependencies "
                             "(code older than bb54326 needs duckdb<2 and sqlglot<30)")
    parser.add_argument("--duckdb-memory", default="default", metavar="SIZES",
                        help="DuckDB's memory_limit per pipeline run, comma separated, run back to back "
                             "(e.g. 1GiB,default; default: segloop's own)")
    parser.add_argument("--memory-limit", metavar="SIZE", help="the workspace's memory_limit: (Python per node)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--from-json", type=Path, nargs="+", metavar="FILE",
                        help="measure nothing: print the report of these --json files, merged by size")
    parser.add_argument("--child-run", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_run:
        child_run(args.child_run)
        return
    if args.from_json:
        report(merged(args.from_json))
        return
    sizes = [10_000, 30_000] if args.quick else [parse_size(s) for s in args.sizes.split(",")]
    pools = [p.strip() for p in args.duckdb_memory.split(",")]
    base = args.workdir or Path(tempfile.mkdtemp(prefix="segloop-scale-"))
    load = os.getloadavg()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=ROOT, capture_output=True, text=True).stdout
    print(f"# bench/scale.py {' '.join(sys.argv[1:])}: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"commit {commit}{' (src modified)' if dirty.strip() else ''}, {os.cpu_count()} cores, "
          f"load average {load[0]:.1f} at start", flush=True)
    results: dict[int, dict[str, Any]] = {}
    old_src = checkout(args.before) if args.before else None
    try:
        for n in sizes:
            root = workspace(base, n)
            figures: dict[str, Any] = {"runs": {}}
            results[n] = figures
            data = root / ".segloop" / "warehouse.duckdb"
            if old_src is not None:
                if not args.pipeline_only:  # else the older pipeline runs on the data that is there
                    if data.exists():
                        data.unlink()
                    figures["before"] = demo_data_before(root, n, old_src, args.before_python)
                    print(f"{n:,} customers: demo-data as of {args.before}: {figures['before']}", flush=True)
                if args.before_pipeline and not args.demo_data_only:
                    old_root = root
                    if args.pipeline_only:  # the data that is there, in a file the older DuckDB reads
                        old_root = workspace(base, f"{n}-before", pipeline=old_pipeline(args.before))
                        copy_for_older_duckdb(data, old_root / ".segloop" / "warehouse.duckdb")
                    else:
                        workspace(base, n, pipeline=old_pipeline(args.before))
                    total, run = run_pipeline(old_root, old_src, args.before_python)
                    if old_root != root:
                        shutil.rmtree(old_root, ignore_errors=True)
                    figures["runs"][f"before ({args.before})"] = {"total": total, "run": run}
                    print(f"{n:,} customers: run as of {args.before} {total} ok={run['ok']}", flush=True)
            if not (args.reuse and data.exists() and not args.before) and not args.pipeline_only:
                if data.exists():
                    data.unlink()
                workspace(base, n)
                figures["demo_data"] = demo_data(root, n)
                print(f"{n:,} customers: demo-data {figures['demo_data']}", flush=True)
            if not args.demo_data_only:
                for pool in pools:
                    duckdb = None if pool == "default" else pool
                    workspace(base, n, duckdb, args.memory_limit)
                    label = f"DuckDB pool {pool}" + (f", memory_limit {args.memory_limit}" if args.memory_limit else "")
                    total, run = run_pipeline(root)
                    figures["runs"][label] = {"total": total, "run": run}
                    print(f"{n:,} customers, {label}: run {total} ok={run['ok']}", flush=True)
    finally:
        if old_src is not None:
            shutil.rmtree(old_src.parent, ignore_errors=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
        report(results)
        load = os.getloadavg()
        print(f"\nload average {load[0]:.1f} at the end")
        if args.workdir is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
