"""`make demo` end to end: examples/run_demo.py with fewer customers, nothing faked.

The script generates the demo data, runs the demo pipeline, sends through a real
`segloop collector` on a loopback port, loads what arrived as Segment's warehouse tables and
prints it. The README promises "~20,000 identify/track calls" for 5,000 customers: one
identify per customer for the predictions, one per buyer for RFM and for the cluster name,
one "Product Recommendations" track per customer with recommendations.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from segloop.segment.archive.files import read_all_messages
from segloop.warehouses import DuckDBConfig, Warehouse

ROOT = Path(__file__).resolve().parents[1]
CUSTOMERS = 600


@pytest.mark.slow
def test_make_demo_path_sends_every_result_to_the_local_collector(tmp_path: Path) -> None:
    workspace = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if k not in {"SEGMENT_WRITE_KEY", "SEGLOOP_ENDPOINT"}}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "run_demo.py"), "--workspace", str(workspace),
         "--customers", str(CUSTOMERS)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]

    messages = read_all_messages(workspace / ".segloop" / "collector")
    arrived = re.search(r"^([\d,]+) messages arrived at the collector:", output, re.M)
    assert arrived and int(arrived.group(1).replace(",", "")) == len(messages), output[-4000:]

    with Warehouse.connect(DuckDBConfig(), workspace) as wh:
        def users(table: str) -> set[str]:
            return set(wh.table(table).user_id.to_pyarrow().to_pylist())

        customers = users("demo__predictions")
        buyers = users("demo__rfm")
        clustered = users("demo__clusters")
        recommended = users("demo__recommend")
        loaded = wh.to_arrow(wh.table("users", schema="demo_crm")).to_pylist()

    def identified_with(trait: str) -> Counter[str]:
        return Counter(m["userId"] for m in messages if m["type"] == "identify" and trait in m["traits"])

    # Every result row arrived once, as the call its node describes.
    assert identified_with("rfm_segment") == Counter(buyers)
    assert identified_with("likelihood_to_purchase") == Counter(customers)
    assert identified_with("customer_cluster") == Counter(clustered)
    tracks = [m for m in messages if m["type"] == "track"]
    assert {m["event"] for m in tracks} == {"Product Recommendations"}
    assert Counter(m["userId"] for m in tracks) == Counter(recommended)
    assert len(messages) == len(buyers) + len(customers) + len(clustered) + len(recommended)
    # About four calls per customer: ~20,000 for make demo's 5,000 customers.
    assert 3 * CUSTOMERS <= len(messages) <= 4 * CUSTOMERS, len(messages)
    assert len(customers) == CUSTOMERS and buyers and buyers <= customers

    # load-archive turned what arrived into Segment's `users` table, traits as columns.
    assert {row["id"] for row in loaded} == customers
    segments = {row["id"]: row["rfm_segment"] for row in loaded}
    assert all(segments[u] for u in buyers) and not any(segments[u] for u in customers - buyers)
    assert "(no orders yet)" in output and "champions" in output  # the printed query results
