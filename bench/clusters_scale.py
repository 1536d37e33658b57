"""The clusters node at 100k, 300k and 1M customers: stability of the groups, before and after.

Data: the demo pipeline's ``activity`` table (the clusters node's input in
examples/demo/pipelines/demo.yml: RFM values plus view and cart-add counts per customer)
of a ``segloop demo-data --customers 100000`` workspace. The larger sizes are that table's
rows drawn with replacement (new ids, no jitter): the same distribution at 3x and 10x the
rows, made in seconds instead of the hour a 1M demo-data plus pipeline takes. A method that
finds stable groups at 100k must find them on 10x the same distribution.

``diagnose``: on each size's scaled rows (the node's transform), what the old code did:
MiniBatchKMeans (n_init=3, batch_size=4096; the node above ``minibatch_above`` = 100,000
rows) and KMeans (n_init=3) fitted on all rows with seeds 0, 1, 2; the ARI between the fits
on all rows, their inertia, and the old card's ``stability_ari`` (refits on 5,000 rows).
With ``--samples``, at the largest size: KMeans fitted on random samples of those sizes
(sample and start drawn with seeds 0, 1, 2), every row assigned: the ARI between the three
and against the full fit of seed 0, and the inertia per row over all rows.

The default command runs the node itself (``ClustersOperator.run``, its output written as
the engine does) in a fresh process under ``/usr/bin/time -v`` with the code of a given
commit ("before") and with this checkout's ("after"), back to back at each size; then it
refits the node with two other seeds (``seed: 1``, ``seed: 2``) and reports the ARI between
the groups users get (every customer's ``cluster``) from seed 0 and from each of them.

Run:  .venv/bin/python bench/clusters_scale.py prep --workspace /work/bench/w-clus/ws100k
      .venv/bin/python bench/clusters_scale.py diagnose --activity /work/bench/w-clus/activity.parquet \
          --samples 50000 100000 200000 400000
      .venv/bin/python bench/clusters_scale.py --activity /work/bench/w-clus/activity.parquet --before dd38992
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = ["recency_days", "frequency", "monetary", "product_viewed_count", "product_added_count"]
SIZES = [100_000, 300_000, 1_000_000]


def prep(workspace: Path, customers: int, out: Path) -> None:
    """demo-data (if the workspace has none) and the demo pipeline up to ``activity``, saved as Parquet."""
    import pyarrow.parquet as pq
    import yaml

    workspace.mkdir(parents=True, exist_ok=True)
    segloop = str(Path(sys.executable).with_name("segloop"))
    if not (workspace / "segloop.yml").exists():
        (workspace / "segloop.yml").write_text(
            "warehouses:\n  default:\n    type: duckdb\n    path: .segloop/warehouse.duckdb\n")
    if not (workspace / ".segloop" / "warehouse.duckdb").exists():
        subprocess.run([segloop, "demo-data", "--customers", str(customers)], cwd=workspace, check=True)
    demo = yaml.safe_load((ROOT / "examples/demo/pipelines/demo.yml").read_text())
    keep = ("shop", "orders", "rfm", "activity")
    demo["name"] = "act"
    demo["nodes"] = {name: node for name, node in demo["nodes"].items() if name in keep}
    (workspace / "pipelines").mkdir(exist_ok=True)
    (workspace / "pipelines" / "act.yml").write_text(yaml.safe_dump(demo, sort_keys=False))
    subprocess.run([segloop, "run", "act"], cwd=workspace, check=True)
    from segloop.warehouses import Warehouse

    with Warehouse.duckdb(workspace / ".segloop" / "warehouse.duckdb") as wh:
        table = wh.to_arrow(wh.table("act__activity").select("user_id", *COLUMNS))
    pq.write_table(table, out)
    print(f"{table.num_rows:,} activity rows -> {out}")


def resampled(activity: Path, n: int, seed: int = 0) -> Any:
    """``n`` rows of the activity table: itself at its own size, else drawn with replacement."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(activity)
    if n == table.num_rows:
        return table
    rows = np.random.default_rng(seed).integers(0, table.num_rows, n)
    out = table.take(pa.array(rows)).drop_columns(["user_id"])
    return out.add_column(0, "user_id", pa.array([f"r{i:07d}" for i in range(n)]))


def size_of(activity: Path, label: int) -> int:
    """The 100k label is the table's own size (its customers with an order); others as named."""
    import pyarrow.parquet as pq

    rows = pq.read_metadata(activity).num_rows
    return rows if label == SIZES[0] else label


def diagnose(activity: Path, sizes: list[int], samples: list[int]) -> None:
    import numpy as np
    from sklearn.cluster import KMeans, MiniBatchKMeans
    from sklearn.metrics import adjusted_rand_score

    from segloop.operators.clusters_stream import Scaler

    print("| rows | algorithm (all rows) | seconds per fit | inertia per row, seeds 0/1/2 | "
          "ARI between seeds' fits (0-1, 0-2, 1-2), all rows | old card: refit on 5,000 rows vs fit |")
    print("|---|---|---|---|---|---|")
    for label in sizes:
        n = size_of(activity, label)
        table = resampled(activity, n)
        values = np.column_stack([table[c].to_numpy(zero_copy_only=False).astype("float64") for c in COLUMNS])
        x = Scaler.fit(values, True).apply(values)
        rows = np.sort(np.random.default_rng(0).choice(n, 5_000, replace=False))
        for name in ("MiniBatchKMeans", "KMeans"):
            labels, inertia, seconds, card = [], [], [], []
            for seed in (0, 1, 2):
                model: Any = (MiniBatchKMeans(n_clusters=4, random_state=seed, n_init=3, batch_size=4096)
                              if name == "MiniBatchKMeans" else KMeans(n_clusters=4, random_state=seed, n_init=3))
                started = time.perf_counter()
                model.fit(x)
                seconds.append(time.perf_counter() - started)
                labels.append(model.predict(x))
                inertia.append(float(((x - model.cluster_centers_[labels[-1]]) ** 2).sum()) / n)
                if seed:  # the old card: the same algorithm refitted on 5,000 rows
                    small: Any = (MiniBatchKMeans(n_clusters=4, random_state=seed, n_init=3, batch_size=4096)
                                  if name == "MiniBatchKMeans" else KMeans(n_clusters=4, random_state=seed, n_init=3))
                    card.append(adjusted_rand_score(labels[0][rows], small.fit(x[rows]).labels_))
            aris = [adjusted_rand_score(labels[a], labels[b]) for a, b in ((0, 1), (0, 2), (1, 2))]
            print(f"| {n:,} | {name} | {np.mean(seconds):.1f} | {' / '.join(f'{v:.4f}' for v in inertia)} | "
                  f"{', '.join(f'{v:.3f}' for v in aris)} | {np.mean(card):.3f} |", flush=True)
    if samples:
        sample_fits(x, labels[0], samples)


def sample_fits(x: Any, full: Any, samples: list[int]) -> None:
    """KMeans on random samples of ``x`` (seeds 0, 1, 2), every row assigned; ``full``: the
    labels of the full fit (seed 0)."""
    import numpy as np
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    n = len(x)
    print(f"\n| KMeans on a sample of {n:,} rows | seconds per fit | inertia per row (all rows) | "
          "ARI between the samples' fits (0-1, 0-2, 1-2) | ARI against the full fit |")
    print("|---|---|---|---|---|")
    for m in samples:
        labels, seconds, inertia = [], [], []
        for seed in (0, 1, 2):
            rows = np.sort(np.random.default_rng(100 + seed).choice(n, m, replace=False))
            started = time.perf_counter()
            model = KMeans(n_clusters=4, random_state=seed, n_init=3).fit(x[rows])
            seconds.append(time.perf_counter() - started)
            labels.append(model.predict(x))
            inertia.append(-model.score(x) / n)
        aris = [adjusted_rand_score(labels[a], labels[b]) for a, b in ((0, 1), (0, 2), (1, 2))]
        print(f"| {m:,} | {np.mean(seconds):.2f} | {' / '.join(f'{v:.4f}' for v in inertia)} | "
              f"{', '.join(f'{v:.3f}' for v in aris)} | "
              f"{', '.join(f'{adjusted_rand_score(full, v):.3f}' for v in labels)} |", flush=True)


def node(db: Path, memory_limit: int | None, seed: int, labels_out: Path | None) -> dict[str, Any]:
    """Run the node as the engine does (output written, streamed or not); time it."""
    from segloop.operators.base import RunContext
    from segloop.operators.clusters import ClustersConfig, ClustersOperator
    from segloop.warehouses import Warehouse

    with Warehouse.duckdb(db) as wh:
        ctx = RunContext(warehouse=wh, pipeline="bench", node="clusters", run_id="b")
        if memory_limit is not None:
            ctx.memory_limit = memory_limit
        started = time.perf_counter()
        config = ClustersConfig(type="clusters", input="activity", customer_id="user_id", k=4, seed=seed)
        out = ClustersOperator(config).run({"activity": wh.table("activity")}, ctx)
        wh.replace_table(f"bench__clusters_{seed}", out.table)
        for suffix, extra in out.extra.items():
            wh.replace_table(f"bench__clusters_{seed}__{suffix}", extra, count=False)
        seconds = time.perf_counter() - started
        if labels_out is not None:
            import pyarrow.parquet as pq

            pq.write_table(wh.to_arrow(wh.table(f"bench__clusters_{seed}").select("user_id", "cluster")
                                       .order_by("user_id")), labels_out)
    keys = ("silhouette", "stability_ari", "algorithm", "training_rows", "sampled", "cluster_names")
    return {"seconds": seconds, **{k: out.metrics[k] for k in keys if k in out.metrics}}


def measured(src: Path, db: Path, seed: int, labels_out: Path, memory_limit: int | None) -> dict[str, Any]:
    cmd = ["/usr/bin/time", "-v", sys.executable, __file__, "node", "--db", str(db), "--seed", str(seed),
           "--labels", str(labels_out)]
    if memory_limit is not None:
        cmd += ["--memory-limit", str(memory_limit)]
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"clusters failed:\n{done.stderr[-3000:]}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    cpu = [float(m) for m in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", done.stderr)]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["peak_mb"] = int(rss.group(1)) / 1024 if rss else float("nan")
    result["cpu_seconds"] = sum(cpu)
    return result


def ari_of(a: Path, b: Path) -> float:
    import pyarrow.parquet as pq
    from sklearn.metrics import adjusted_rand_score

    left, right = pq.read_table(a), pq.read_table(b)
    assert left["user_id"].equals(right["user_id"])  # noqa: S101 - both sorted by id, same rows
    return float(adjusted_rand_score(left["cluster"].to_numpy(), right["cluster"].to_numpy()))


def compare(activity: Path, sizes: list[int], before: str, memory_limit: int | None, workdir: Path) -> None:
    from segloop.warehouses import Warehouse

    archive = subprocess.run(["git", "-C", str(ROOT), "archive", before, "src"], capture_output=True,
                             check=True).stdout
    old = workdir / "before"
    old.mkdir(exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
    variants = {"before": old / "src", "after": ROOT / "src"}
    print("| rows | code | node seconds | process CPU s | peak RSS MB | card: stability_ari, seeds 0 / 1 / 2 | "
          "silhouette | ARI of every customer's group, seed 0 vs 1 / 0 vs 2 | algorithm, training rows | load |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label in sizes:
        n = size_of(activity, label)
        db = workdir / f"activity{n}.duckdb"
        if not db.exists():
            with Warehouse.duckdb(db) as wh:
                wh.create_table("activity", resampled(activity, n))
        for variant, src in variants.items():
            runs = [measured(src, db, seed, workdir / f"{variant}{n}_{seed}.parquet", memory_limit)
                    for seed in (0, 1, 2)]
            first = runs[0]
            aris = [ari_of(workdir / f"{variant}{n}_0.parquet", workdir / f"{variant}{n}_{s}.parquet") for s in (1, 2)]
            cards = " / ".join(f"{r['stability_ari']:.4f}" for r in runs)
            print(f"| {n:,} | {variant} | {first['seconds']:.1f} | {first['cpu_seconds']:.1f} | "
                  f"{first['peak_mb']:,.0f} | {cards} | {first['silhouette']:.4f} | "
                  f"{aris[0]:.4f} / {aris[1]:.4f} | {first['algorithm']}, {first['training_rows']:,} | "
                  f"{os.getloadavg()[0]:.1f} |", flush=True)
        db.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    make = sub.add_parser("prep")
    make.add_argument("--workspace", type=Path, required=True)
    make.add_argument("--customers", type=int, default=100_000)
    make.add_argument("--out", type=Path, default=Path("activity.parquet"))
    look = sub.add_parser("diagnose")
    look.add_argument("--activity", type=Path, required=True)
    look.add_argument("--sizes", type=int, nargs="+", default=SIZES)
    look.add_argument("--samples", type=int, nargs="*", default=[])
    one = sub.add_parser("node")
    one.add_argument("--db", type=Path, required=True)
    one.add_argument("--seed", type=int, default=0)
    one.add_argument("--labels", type=Path, default=None)
    one.add_argument("--memory-limit", type=int, default=None)
    parser.add_argument("--activity", type=Path)
    parser.add_argument("--sizes", type=int, nargs="+", default=SIZES)
    parser.add_argument("--before", default="dd38992", help="commit of the 'before' code")
    parser.add_argument("--memory-limit", type=int, default=None, help="the node's memory_limit in bytes")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    if args.command == "prep":
        prep(args.workspace, args.customers, args.out)
    elif args.command == "diagnose":
        diagnose(args.activity, args.sizes, args.samples)
    elif args.command == "node":
        print(json.dumps(node(args.db, args.memory_limit, args.seed, args.labels)))
    else:
        if args.activity is None:
            parser.error("--activity is required")
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            compare(args.activity, args.sizes, args.before, args.memory_limit, Path(tmp))


if __name__ == "__main__":
    main()
