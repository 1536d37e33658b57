"""Shared by the report, UI, schedule and alert tests: demo workspaces with the real node types.

DEMO_PIPELINE runs every node type (rfm, clv, propensity, clusters, recommend, segment) on
the demo data, so the report, the UI and alerts are tested against the metrics and tables
the real nodes write (p_alive, popular_* baselines, cluster profiles, the sync's new /
changed ...). Its Segment node sends to a real collector on a loopback port; customers
with R score 1 reach it over 32 KB, so it really rejects some rows.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from segloop.demo import write_demo_data
from segloop.segment.collector.app import RunningCollector, serve_in_thread
from segloop.warehouses import DuckDBConfig, Warehouse
from tests.pipeline_fixtures import SQL_RFM

WRITE_KEY_ENV = "SEGLOOP_TEST_WRITE_KEY"
ENDPOINT_ENV = "SEGLOOP_TEST_ENDPOINT"  # a real `segloop collector` on a loopback port
WRITE_KEY = "wk_live_9f3ZqT7xPq2LmN8vR4sY"  # a made-up key the report must never show

WORKSPACE_YML = "warehouses:\n  default:\n    type: duckdb\n    path: .segloop/warehouse.duckdb\n"

DEMO_PIPELINE = f"""\
name: demo
warehouse: default
nodes:
{SQL_RFM}\
  events:
    type: sql
    sql: select user_id, "timestamp", event from demo_shop.tracks where user_id is not null
  clv:
    type: clv
    input: orders
    horizon: 120 days
  propensity:
    type: propensity
    input: events
    orders: orders
    target_event: Order Completed
    window_days: 30
  clusters:
    type: clusters
    input: rfm
    customer_id: user_id
    columns: [recency_days, frequency, monetary]
    k: 3
  shop:
    type: segment_source
    schema: demo_shop
    tables: [product_viewed, product_added, order_completed]
  product_events:
    type: sql
    input: shop
    sql: |
      select user_id, product_id, "timestamp", event_text from product_viewed
      where user_id is not null
      union all
      select user_id, product_id, "timestamp", event_text from product_added
      where user_id is not null
      union all
      select user_id, product_id, "timestamp", event_text from order_completed_products
      where user_id is not null
  recommend:
    type: recommend
    input: product_events
    customer_id: user_id
    item_id: product_id
    timestamp: timestamp
    event: event_text
    weights: {{Product Viewed: 1, Product Added: 3, Order Completed: 5}}
    top_n: 5
    holdout_days: 30
  audience:                # R score 1: a segment name over Segment's 32 KB message limit, rejected
    type: sql
    input: rfm
    sql: select user_id, case when r_score = 1 then repeat('x', 40000) else segment end as segment, r_score from rfm
  to_segment:
    type: segment
    input: audience
    write_key: ${{{WRITE_KEY_ENV}}}
    endpoint: ${{{ENDPOINT_ENV}}}
    call: track
    event: RFM Segment
    customer_id: user_id
    properties: [segment, r_score]
"""

RFM_PIPELINE = f"name: shop\nwarehouse: default\nnodes:\n{SQL_RFM}"


def build_demo_workspace(root: Path, customers: int = 300, days: int = 200) -> Path:
    """A workspace folder with the demo Segment source written to its DuckDB file."""
    (root / "pipelines").mkdir(parents=True, exist_ok=True)
    (root / "segloop.yml").write_text(WORKSPACE_YML)
    with Warehouse.connect(DuckDBConfig(), root) as warehouse:
        write_demo_data(warehouse, customers=customers, days=days, seed=3)
    return root


def copy_workspace(template: Path, target: Path, pipelines: dict[str, str]) -> Path:
    shutil.copytree(template, target)
    for name, text in pipelines.items():
        (target / "pipelines" / f"{name}.yml").write_text(text)
    return target


# -- the Segment end: a real collector on a loopback port ----------------------------------


def _segment_collector(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[RunningCollector]:
    """`segloop collector` on 127.0.0.1 as the pipelines' Segment endpoint, with the test key."""
    monkeypatch.setenv(WRITE_KEY_ENV, WRITE_KEY)
    with serve_in_thread({WRITE_KEY: "crm"}, tmp_path / "collector") as running:
        monkeypatch.setenv(ENDPOINT_ENV, running.url)
        yield running


segment_collector = pytest.fixture(_segment_collector, name="segment_collector")
# The name the report/UI tests used while the node types were stand-ins; same real collector.
fakes = pytest.fixture(_segment_collector, name="fakes")


_TEMPLATE: list[Path] = []


@pytest.fixture(scope="session")
def demo_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Demo data written once per session; tests copy the folder (a DuckDB file copy is cheap).

    Test modules import this fixture, which makes one fixture per module; the module-level
    cache keeps it to one generation per session all the same.
    """
    if not _TEMPLATE:
        _TEMPLATE.append(build_demo_workspace(tmp_path_factory.mktemp("demo") / "template"))
    return _TEMPLATE[0]

