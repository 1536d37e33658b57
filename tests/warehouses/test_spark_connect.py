"""segloop on Spark Connect (`connect_url: sc://...`): a local Spark Connect server on loopback.

PySpark 4 ships the Spark Connect server (its jars): a local Spark session with its plugin
serves Spark Connect. The server runs here in a child process (a process with a classic
Spark session, as the other Spark tests leave, cannot host a second one) on a free
loopback port, with a bearer token. segloop connects as it would to a cluster: the
token from an environment variable, never in the URL. Needs the [pyspark] extra, the Spark
Connect client's libraries (grpcio, grpcio-status, googleapis-common-protos:
``pip install 'pyspark[connect]==<pyspark's version>'``) and Java 17+; without them the test
is skipped and says why. Marked slow: the server's JVM takes ~30-60 s to start on two cores.
"""

from __future__ import annotations

import os
import pickle
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from segloop.operators.base import RunContext, RunScope
from segloop.operators.rfm import RfmConfig, RfmOperator
from segloop.warehouses import Warehouse
from tests.requirements import require_java, require_module

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SERVER = r"""
import os, sys
from pyspark.sql import SparkSession

port, warehouse = sys.argv[1], sys.argv[2]
# A classic local session with Spark Connect's plugin (its jar ships with PySpark 4) serves
# Spark Connect on `port`, as `builder.remote("local")` does on 15002.
session = (SparkSession.builder.master("local[2]")
           .config("spark.plugins", "org.apache.spark.sql.connect.SparkConnectPlugin")
           .config("spark.connect.grpc.binding.address", "127.0.0.1")
           .config("spark.connect.grpc.binding.port", port)
           .config("spark.connect.authenticate.token", os.environ["SPARK_CONNECT_AUTHENTICATE_TOKEN"])
           .config("spark.sql.warehouse.dir", warehouse)
           .config("spark.sql.shuffle.partitions", "2")
           .config("spark.ui.enabled", "false")
           .getOrCreate())
session.range(1).count()
print("ready", flush=True)
sys.stdin.read()  # serve until the test closes our stdin
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str]]:
    """(port, token) of a local Spark Connect server in a child process."""
    require_module("pyspark", "pip install 'segloop[pyspark]'")
    for module in ("grpc", "grpc_status", "google.rpc"):
        require_module(module, "pip install 'pyspark[connect]' (the Spark Connect client's libraries)")
    require_java(17)
    port, token = free_port(), secrets.token_hex(16)
    root = tmp_path_factory.mktemp("spark-connect")
    env = {**os.environ, "SPARK_CONNECT_AUTHENTICATE_TOKEN": token}
    env.pop("SPARK_REMOTE", None)
    child = subprocess.Popen([sys.executable, "-c", SERVER, str(port), str(root / "warehouse")], env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = child.stdout.readline() if child.stdout else ""
        if line.strip() != "ready":
            pytest.fail(f"the Spark Connect server did not start (exit code {child.poll()})")
        yield port, token
    finally:
        if child.stdin:
            child.stdin.close()
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def connect(port: int, tmp_path: Path) -> Warehouse:
    from segloop.warehouses.pyspark import PySparkConfig

    config = PySparkConfig(connect_url=f"sc://localhost:{port}", token="${SEGLOOP_TEST_SPARK_TOKEN}",
                           schema="segloop_connect")
    return Warehouse.connect(config, tmp_path)


ORDERS = pa.table({
    "user_id": ["a", "a", "b", "c", "c", "c"],
    "timestamp": pa.array([f"2026-0{m}-01 10:00:00" for m in (1, 3, 2, 1, 2, 3)]).cast(pa.timestamp("us")),
    "revenue": [10.0, 20.0, 5.0, 7.0, 8.0, 9.0],
})


def rfm_rows(wh: Warehouse) -> list[dict]:
    wh.create_table("orders", ORDERS)
    config = RfmConfig.model_validate({"type": "rfm", "input": "orders", "customer_id": "user_id",
                                       "timestamp": "timestamp", "amount": "revenue"})
    with RunScope() as scope:
        ctx = RunContext(warehouse=wh, pipeline="p", node="rfm", run_id="r", shared=scope)
        out = RfmOperator(config).run({"orders": wh.table("orders")}, ctx)
        wh.replace_table("p__rfm", out.table)
    return sorted(wh.table("p__rfm").to_pyarrow().to_pylist(), key=lambda r: r["user_id"])


CLIENT = r"""
import os, pickle, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from tests.warehouses.test_spark_connect import WRONG_TOKEN, connect, rfm_rows

wh = connect(int(sys.argv[2]), Path(sys.argv[3]))
rows = rfm_rows(wh)
result = {"module": type(wh.session).__module__, "rows": rows, "tables": wh.list_tables()}
# A second block in the same process, with a wrong token: its own session, which the server refuses.
right = os.environ["SEGLOOP_TEST_SPARK_TOKEN"]
os.environ["SEGLOOP_TEST_SPARK_TOKEN"] = WRONG_TOKEN
try:
    result["wrong_token"] = ("accepted", connect(int(sys.argv[2]), Path(sys.argv[3])).list_tables())
except Exception as exc:
    result["wrong_token"] = (type(exc).__name__, str(exc))
os.environ["SEGLOOP_TEST_SPARK_TOKEN"] = right
result["same_session"] = connect(int(sys.argv[2]), Path(sys.argv[3])).session is wh.session
Path(sys.argv[4]).write_bytes(pickle.dumps(result))
"""
WRONG_TOKEN = "0" * 32


def test_a_node_runs_on_spark_connect_as_on_duckdb(server: tuple[int, str], tmp_path: Path) -> None:
    """segloop's side runs in a child process of its own: a process that already holds a
    classic Spark session (as the other Spark tests leave this one) cannot open a remote
    one, and a user's segloop process pointed at a cluster holds none."""
    port, token = server
    out = tmp_path / "result.pickle"
    env = {**os.environ, "SEGLOOP_TEST_SPARK_TOKEN": token}
    env.pop("SPARK_REMOTE", None)
    root = str(Path(__file__).resolve().parents[2])
    done = subprocess.run([sys.executable, "-c", CLIENT, root, str(port), str(tmp_path), str(out)],
                          env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = pickle.loads(out.read_bytes())  # our own child's output
    assert result["module"].startswith("pyspark.sql.connect")
    assert "p__rfm" in result["tables"]
    on_duck = rfm_rows(Warehouse.duckdb())
    assert result["rows"] == on_duck and len(on_duck) == 3
    # Another block in the same process with a wrong token is refused (before, it got the
    # first block's session and worked), without printing the token; the right one gets
    # the process's session back.
    kind, detail = result["wrong_token"]
    assert kind != "accepted", detail
    assert WRONG_TOKEN not in detail and token not in detail
    assert result["same_session"]
