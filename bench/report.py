"""How much the run report costs as tables grow: report seconds next to run seconds.

The report aggregates in the warehouse (GROUP BY for the RFM grid and segment sizes), so
its cost should stay nearly flat while the pipeline's own work grows with the rows. One
workspace per size; a `sql` node makes N customers with R/F scores and segments, an `rfm`
node scores N synthetic purchases. Printed side by side, with the ratio.

    .venv/bin/python bench/report.py [--sizes 10000,100000,1000000]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

PIPELINE = """\
name: bench
nodes:
  purchases:
    type: sql
    sql: |
      select 'u' || (i % {customers}) as user_id,
             timestamp '2026-01-01' + to_seconds((i * 7919) % (365 * 86400)) as "timestamp",
             ((i * 31) % 500)::double as revenue
      from range({purchases}) t(i)
  rfm:
    type: rfm
    input: purchases
    customer_id: user_id
    timestamp: timestamp
    amount: revenue
"""


def one(size: int, folder: Path) -> tuple[float, float]:
    from segloop.config import Workspace
    from segloop.pipeline import Pipeline
    from segloop.report import write_report

    root = folder / f"n{size}"
    (root / "pipelines").mkdir(parents=True)
    (root / "segloop.yml").write_text("warehouses:\n  default:\n    type: duckdb\n    path: .segloop/warehouse.duckdb\n")
    (root / "pipelines" / "bench.yml").write_text(PIPELINE.format(customers=size, purchases=size * 5))
    pipeline = Pipeline.load(root / "pipelines" / "bench.yml", Workspace.load(root))
    started = time.perf_counter()
    result = pipeline.run(options={"report": False})
    run_seconds = time.perf_counter() - started
    if not result.ok:
        raise SystemExit([n.error for n in result.nodes])
    started = time.perf_counter()
    path = write_report(pipeline, result.run_id)
    report_seconds = time.perf_counter() - started
    if 'data-chart="rfm-grid"' not in path.read_text():
        raise SystemExit("the report has no RFM grid")
    return run_seconds, report_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="customers per workspace")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"{'customers':>10} {'purchases':>10} {'run s':>8} {'report s':>9} {'report/run':>11}")
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            run_s, report_s = one(size, Path(tmp))
            print(f"{size:>10,} {size * 5:>10,} {run_s:>8.2f} {report_s:>9.2f} {report_s / run_s:>10.2f}x", flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of the whole benchmark: {peak:,.0f} MB")


if __name__ == "__main__":
    main()
