"""The demo pipeline on local Spark with the driver capped below the size of the events.

What a user who outgrew one machine needs from a ``pyspark`` warehouse: the events stay in
Spark, and the driver (segloop's process and the JVM it starts) holds per-customer results
at most. Here the events of ``CUSTOMERS`` demo customers take more memory as Arrow than
the driver JVM may use (``spark.driver.memory: 512m``, Spark's smallest workable heap; local
mode runs the executors in that JVM too), and the shipped demo pipeline runs unchanged.

What is checked, and how each would fail:

- the JVM's heap really is below the events' size (both measured, not assumed);
- every node succeeds and every Segment node sends one message per row: a node that
  collects the events fails with Spark's ``OutOfMemoryError``, or with the guard
  ``spark.driver.maxResultSize`` (``MAX_RESULT``, far below the events, far above any
  per-customer result of this size): "Total size of serialized results ... is bigger
  than spark.driver.maxResultSize";
- clv and propensity score their customers in Spark's executors (metric ``scoring``);
- no node brings more than ``EVENT_SHARE`` (5%) of the event rows into Python
  (``Warehouse.rows_fetched``, which counts every row a warehouse hands to Python; the
  events are ~250 rows per customer, a node's per-customer results 1-4).

The data is written as Parquet files by this process (generated a chunk at a time) and the
pipeline runs in a child process, so that its Spark starts with these settings (a process
has one Spark session, and other tests may have started theirs).

Marked slow: several minutes on two busy cores; skipped without pyspark or Java 17+.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from segloop.demo import DEFAULT_END, iter_tables
from tests.requirements import require_java, require_module

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
DEMO_PIPELINE = ROOT / "examples" / "demo" / "pipelines" / "demo.yml"
CUSTOMERS, DAYS, SEED = 5_500, 365, 18  # events: 564 MiB as Arrow, 2.7M rows
DRIVER_MEMORY = "512m"
MAX_RESULT = "32m"  # spark.driver.maxResultSize: the most one Spark job may send the driver
# The most one node may bring into Python, as a share of the event rows (~250 per customer):
# per-customer results (a Segment node's rows to send, clv's collapsed histories and
# holdout card, propensity's samples) are 1-4 rows per customer, well below it.
EVENT_SHARE = 0.05
EVENT_TABLES = ("tracks", "product_viewed", "product_added", "checkout_started", "order_completed",
                "order_refunded")

# Run in the child process: the source tables over the Parquet files, then the pipeline, with
# the rows each node brought into Python; prints one JSON line.
CHILD = r"""
import json, sys
from pathlib import Path

from segloop.pipeline import Pipeline
from segloop.warehouses.pyspark import PySparkWarehouse
from tests.segment.send.fake_segment import FakeSegment

root, parquet = Path(sys.argv[1]), Path(sys.argv[2])
opened = []
init = PySparkWarehouse.__init__
def remember(self, *args, **kwargs):
    init(self, *args, **kwargs)
    opened.append(self)
PySparkWarehouse.__init__ = remember

pipeline = Pipeline.load(root / "pipelines" / "demo.yml")
with pipeline.connect() as wh:
    wh.raw_sql("CREATE DATABASE IF NOT EXISTS demo_shop")
    for folder in sorted(parquet.iterdir()):
        wh.raw_sql(f"CREATE TABLE demo_shop.{folder.name} USING parquet LOCATION '{folder}'")
    heap = wh.con._session.sparkContext._jvm.java.lang.Runtime.getRuntime().maxMemory()

class Fetched:
    def __init__(self):
        self.rows, self.start = {}, 0
    def now(self):
        return opened[-1].rows_fetched if opened else 0
    def node_started(self, name, node_type):
        self.start = self.now()
    def node_progress(self, name, advance, total):
        pass
    def node_finished(self, result):
        self.rows[result.name] = self.now() - self.start

fetched = Fetched()
segment = FakeSegment()
result = pipeline.run(reporter=fetched, options={"segment_transport": segment})
sent = {}
for message in segment.delivered():
    sent[message["type"]] = sent.get(message["type"], 0) + 1
print(json.dumps({
    "heap": heap,
    "nodes": {n.name: {"status": n.status, "error": n.error, "rows": n.rows, "seconds": n.seconds,
                       "type": n.type, "fetched": fetched.rows.get(n.name),
                       "scoring": n.metrics.get("scoring")} for n in result.nodes},
    "sent": sent,
}))
"""


def write_parquet(folder: Path) -> tuple[dict[str, int], dict[str, int]]:
    """The demo source (``segloop demo-data``'s tables, split identities) as Parquet folders,
    one chunk of customers at a time; returns each table's size as Arrow in memory, and rows."""
    import pyarrow.parquet as pq

    writers: dict[str, pq.ParquetWriter] = {}
    sizes: dict[str, int] = {}
    rows: dict[str, int] = {}
    try:
        for name, part in iter_tables(CUSTOMERS, DAYS, SEED, DEFAULT_END, chunk_customers=1_000, split_ids=True):
            if "." in name:  # the hidden truth: not part of the source
                continue
            if name not in writers:
                (folder / name).mkdir(parents=True)
                writers[name] = pq.ParquetWriter(folder / name / "part-0.parquet", part.schema)
            writers[name].write_table(part)
            sizes[name] = sizes.get(name, 0) + part.nbytes
            rows[name] = rows.get(name, 0) + part.num_rows
    finally:
        for writer in writers.values():
            writer.close()
    return sizes, rows


def test_demo_runs_with_the_driver_capped_below_the_events(tmp_path: Path) -> None:
    require_module("pyspark", "pip install 'segloop[pyspark]'")
    require_java(17)
    sizes, rows = write_parquet(tmp_path / "parquet")
    events = sum(sizes[name] for name in EVENT_TABLES)
    event_rows = sum(rows[name] for name in EVENT_TABLES)
    root = tmp_path / "workspace"
    (root / "pipelines").mkdir(parents=True)
    (root / "segloop.yml").write_text(
        "warehouses:\n  default:\n    type: pyspark\n    master: local[2]\n    metastore: in-memory\n"
        f"    warehouse_dir: {tmp_path / 'spark-warehouse'}\n    driver_memory: {DRIVER_MEMORY}\n"
        f"    conf:\n      spark.sql.shuffle.partitions: '4'\n      spark.driver.maxResultSize: {MAX_RESULT}\n"
        "      spark.ui.showConsoleProgress: 'false'\n"
    )
    (root / "pipelines" / "demo.yml").write_text(DEMO_PIPELINE.read_text())
    env = {**os.environ, "SEGMENT_WRITE_KEY": "wk-driver",
           "SEGLOOP_ENDPOINT": "http://127.0.0.1:9"}  # unused: the fake transport answers
    child = subprocess.run([sys.executable, "-c", CHILD, str(root), str(tmp_path / "parquet")],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=1700)
    assert child.returncode == 0, child.stderr[-4000:]
    report = json.loads(child.stdout.strip().splitlines()[-1])

    nodes = report["nodes"]
    print({name: (round(node["seconds"], 1), node["fetched"]) for name, node in nodes.items()},
          f"events {events / 2**20:.0f} MiB, {event_rows} rows; heap {report['heap'] / 2**20:.0f} MiB")
    assert report["heap"] < events, (report["heap"], events)  # the premise: the events cannot fit
    failed = {name: node["error"] for name, node in nodes.items() if node["status"] != "success"}
    assert not failed, failed
    assert len(nodes) == 16
    segment_rows = sum(node["rows"] for node in nodes.values() if node["type"] == "segment")
    assert sum(report["sent"].values()) == segment_rows > 3.5 * CUSTOMERS
    # The model nodes that score customers did it in Spark's executors, not on the driver.
    assert {name: node["scoring"] for name, node in nodes.items() if node["type"] in ("clv", "propensity")} == {
        "ltv": "spark", "likely_buyers": "spark", "likely_churners": "spark"}
    heavy = {name: node["fetched"] for name, node in nodes.items() if node["fetched"] > EVENT_SHARE * event_rows}
    assert not heavy, f"nodes that brought more than {EVENT_SHARE:.0%} of the event rows into Python: {heavy}"
