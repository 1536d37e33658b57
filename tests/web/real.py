"""Workspaces for the UI's trend, overview and editor tests, with real node types only.

A 200-customer demo shop (``segloop demo-data --customers 200``) and two pipelines of the
real nodes (sql, rfm, clv, propensity, clusters, recommend, segment), so the charts show
the metrics those nodes record. Segment nodes send to segloop's own collector on a
loopback port (the collector is real; nothing leaves the machine). The run history is
made once per session (a dry run, then two sends of `shop`; one send of `segments`);
tests copy the folder.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from segloop.config import Workspace
from segloop.demo import write_demo_data
from segloop.pipeline import Pipeline
from segloop.segment.collector.app import serve_in_thread
from segloop.warehouses import DuckDBConfig, Warehouse
from tests.pipeline_fixtures import SQL_RFM_KNOWN

KEY_ENV, ENDPOINT_ENV = "SEGLOOP_TEST_WRITE_KEY", "SEGLOOP_TEST_ENDPOINT"
KEY = "wk_ui_test_3Fq9Zr"
WORKSPACE_YML = "warehouses:\n  default:\n    type: duckdb\n    path: .segloop/warehouse.duckdb\n"

# The Segment node both pipelines end with: RFM segments as identify traits, to the collector.
SEND_RFM_SEGMENT = """\
    type: segment
    input: rfm
    write_key: ${SEGLOOP_TEST_WRITE_KEY}
    endpoint: ${SEGLOOP_TEST_ENDPOINT}
    call: identify
    traits:
      segment: rfm_segment
"""

SHOP = """\
# The shop's models over the demo data, and RFM segments sent to Segment.
name: shop
warehouse: default
nodes:
  orders:
    type: sql
    sql: select user_id, "timestamp", revenue from demo_shop.order_completed where user_id is not null

  rfm:                      # recency, frequency and monetary scores, and a segment
    type: rfm
    input: orders

  ltv:                      # predicted lifetime value (BG/NBD + Gamma-Gamma)
    type: clv
    input: orders
    horizon: 120 days

  events:
    type: sql
    sql: select user_id, "timestamp", event from demo_shop.tracks where user_id is not null

  likely_buyers:
    type: propensity
    input: events
    orders: orders
    target_event: Order Completed
    window_days: 30

  clusters:
    type: clusters
    input: rfm
    customer_id: user_id
    k: 3

  product_events:
    type: sql
    sql: |
      select user_id, product_id, "timestamp", event as event_text from demo_shop.product_viewed where user_id is not null
      union all
      select user_id, product_id, "timestamp", event as event_text from demo_shop.product_added where user_id is not null

  recommend:
    type: recommend
    input: product_events
    customer_id: user_id
    item_id: product_id
    timestamp: timestamp
    event: event_text
    weights: {Product Viewed: 1, Product Added: 3}
    purchase_event: Product Added
    top_n: 5
    holdout_days: 30

  rfm_to_segment:
""" + SEND_RFM_SEGMENT

SEGMENTS = ("name: segments\ndescription: RFM segments sent as identify traits\nnodes:\n" + SQL_RFM_KNOWN
            + "  to_segment:\n" + SEND_RFM_SEGMENT)


@contextmanager
def collector(folder: Path) -> Iterator[str]:
    """segloop's collector on a loopback port, its URL and key in the environment."""
    with serve_in_thread({KEY: "web"}, folder) as running, pytest.MonkeyPatch.context() as env:
        env.setenv(KEY_ENV, KEY)
        env.setenv(ENDPOINT_ENV, running.url)
        yield running.url


def build(root: Path, pipelines: dict[str, str]) -> Path:
    (root / "pipelines").mkdir(parents=True)
    (root / "segloop.yml").write_text(WORKSPACE_YML)
    for name, text in pipelines.items():
        (root / "pipelines" / f"{name}.yml").write_text(text)
    with Warehouse.connect(DuckDBConfig(), root) as warehouse:
        write_demo_data(warehouse, customers=200, days=200, seed=5)
    return root


_HISTORY: list[Path] = []


@pytest.fixture(scope="session")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace with run history: `shop` ran dry once, then sent twice; `segments` sent once."""
    if not _HISTORY:
        base = tmp_path_factory.mktemp("ui-history")
        root = build(base / "ws", {"shop": SHOP, "segments": SEGMENTS})
        workspace = Workspace.load(root)
        with collector(base / "collector"):
            shop = Pipeline.load("shop", workspace)
            assert shop.run(dry_run=True).ok
            assert shop.run().ok
            assert shop.run().ok
            assert Pipeline.load("segments", workspace).run().ok
        _HISTORY.append(root)
    return _HISTORY[0]


def copy_history(history: Path, target: Path) -> Workspace:
    shutil.copytree(history, target)
    return Workspace.load(target)
