"""`make demo`: build a workspace from examples/demo, generate Segment demo data, run the demo.

Every step is a real `segloop` command, printed before it runs, so the output doubles as a
walk-through of the CLI. Runs offline on the embedded DuckDB warehouse.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEGLOOP = [sys.executable, "-m", "segloop.cli"]


def segloop(*args: str, cwd: Path) -> None:
    print(f"\n$ segloop {' '.join(args)}", flush=True)
    subprocess.run([*SEGLOOP, *args], cwd=cwd, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workspace", default=".demo", help="Folder to build the demo workspace in.")
    parser.add_argument("--customers", type=int, default=5000)
    args = parser.parse_args()
    workspace = Path(args.workspace).resolve()
    if workspace.exists():
        shutil.rmtree(workspace)
    shutil.copytree(HERE / "demo", workspace)
    os.environ.setdefault("SEGMENT_WRITE_KEY", "demo-write-key")
    try:
        segloop("validate", cwd=workspace)
        segloop("demo-data", "--customers", str(args.customers), cwd=workspace)
        segloop("run", "demo", cwd=workspace)
        segloop(
            "query",
            "select segment, count(*) as customers, round(avg(monetary), 2) as avg_spend "
            "from demo__rfm group by segment order by customers desc",
            cwd=workspace,
        )
    except subprocess.CalledProcessError as exc:
        print(f"demo failed at: segloop {' '.join(exc.cmd[len(SEGLOOP):])}", file=sys.stderr)
        return 1
    print(f"\nThe demo workspace is in {workspace}; try: cd {workspace} && segloop runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
