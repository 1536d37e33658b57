"""`make demo`: build a workspace from examples/demo, generate Segment demo data, run the demo.

Every step is a real `segloop` command, printed before it runs, so the output doubles as a
walk-through of the CLI. Runs offline on the embedded DuckDB warehouse; the Segment nodes
send to segloop's own Segment-compatible collector on a free loopback port, and the demo
ends by showing what arrived there.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEGLOOP = [sys.executable, "-m", "segloop.cli"]


def _shell(args: tuple[str, ...] | list[str]) -> str:
    """``args`` as a shell would take them: SQL with 'literals' in double quotes (readable)."""
    def one(arg: str) -> str:
        if shlex.quote(arg) == arg or any(c in arg for c in '"$`\\!'):
            return shlex.quote(arg)
        return f'"{arg}"'

    return " ".join(one(arg) for arg in args)


def segloop(*args: str, cwd: Path) -> None:
    print(f"\n$ segloop {_shell(args)}", flush=True)  # quoted: copy and paste it
    subprocess.run([*SEGLOOP, *args], cwd=cwd, check=True)


def start_collector(workspace: Path) -> subprocess.Popen[str]:
    """`segloop collector` on a free loopback port; its URL goes to SEGLOOP_ENDPOINT.

    The collector says where it listens (on stderr, shared with us) before it prints the
    URL we wait for, so that line is on screen before the next command's.
    """
    args = ["collector", "--port", "0", "--key", "${SEGMENT_WRITE_KEY}=demo_crm", "--data", ".segloop/collector"]
    print(f"\n$ segloop {_shell(args)} &", flush=True)
    proc = subprocess.Popen([*SEGLOOP, *args], cwd=workspace, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http://"):
        proc.kill()
        raise SystemExit(f"the collector did not start: {url!r}")
    os.environ["SEGLOOP_ENDPOINT"] = url
    return proc


def show_what_arrived(workspace: Path) -> None:
    """What the collector received, then loaded as Segment's warehouse tables."""
    from collections import Counter

    from segloop.segment.archive.files import read_all_messages

    messages = read_all_messages(workspace / ".segloop" / "collector")
    calls = Counter(
        f"{m['type']} {m['event']}" if m.get("type") == "track" else m.get("type", "?") for m in messages
    )
    print(f"\n{len(messages):,} messages arrived at the collector:")
    for call, count in calls.most_common():
        print(f"  {count:>8,}  {call}")
    print("two of them (an identify with RFM traits, a track with recommendations):")
    first_track = next((m for m in messages if m.get("type") == "track"), None)
    for message in [messages[0], first_track] if first_track else messages[:2]:
        print(json.dumps(message, indent=2, default=str))
    segloop("load-archive", ".segloop/collector", "--schema", "demo_crm", cwd=workspace)
    # Customers who never ordered get prediction traits but no RFM segment or cluster.
    segloop("query", "select coalesce(rfm_segment, '(no orders yet)') as rfm_segment, count(*) as users "
            "from demo_crm.users group by 1 order by users desc", cwd=workspace)
    segloop("query", "select coalesce(customer_cluster, '(no orders yet)') as customer_cluster, count(*) as users, "
            "round(avg(likelihood_to_churn), 2) as avg_churn_probability from demo_crm.users group by 1 "
            "order by users desc", cwd=workspace)


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
    collector = start_collector(workspace)
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
        show_what_arrived(workspace)
    except subprocess.CalledProcessError as exc:
        print(f"demo failed at: segloop {' '.join(exc.cmd[len(SEGLOOP):])}", file=sys.stderr)
        return 1
    finally:
        collector.terminate()
        collector.wait(10)
    cli = Path(sys.executable).parent / "segloop"
    print(f"""
The demo workspace is in {workspace}. To look around (segloop is in {cli.parent}):
  cd {workspace}
  {cli} runs                      # the run history
  {cli} report latest --open      # the report of the last run
  {cli} ui                        # pipelines, runs and reports in a browser
  {cli} run demo --dry-run        # run it again; Segment nodes show what they would send
Sending for real needs SEGMENT_WRITE_KEY and SEGLOOP_ENDPOINT (a Segment endpoint or
`segloop collector`); `make demo` starts a local collector and sets both.""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
