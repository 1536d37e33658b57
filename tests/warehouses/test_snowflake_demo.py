"""The whole demo pipeline on emulated Snowflake sends what it sends on DuckDB.

``examples/demo/pipelines/demo.yml`` runs unchanged (all 16 nodes: sql, rfm, clv,
propensity, clusters, segment_source with its ``order_completed_products`` view,
recommend, and the Segment nodes) on the fakesnow server of
tests/warehouses/snowflake_server.py, through the real Snowflake connector, and the
Segment messages (messageIds included) equal DuckDB's for the same demo data, but for one
trait: ``predicted_ltv`` (the ``predictions`` node's identify, from the clv fit over a
summary computed in the warehouse) differs from the tenth significant digit on (relative
difference up to ~2e-10 with 1,000 customers: 5402.588390244147 on DuckDB,
5402.588389085819 on fakesnow), so those payloads, and with them their messageIds, differ.
Not yet traced to the SQL that differs (fakesnow rewrites numeric aggregates to DOUBLE;
tests/warehouses/snowflake_server.py restores exact money sums, which made rfm's
``lifetime_revenue`` identical). Until it is, that trait is compared to 1e-6 and every other
message, messageId included, exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from segloop.demo import write_demo_data
from segloop.pipeline import Pipeline
from tests.warehouses.snowflake_server import SnowflakeServer, snowflake_server  # noqa: F401
from tests.warehouses.test_postgres import DEMO_PIPELINE, VOLATILE, write_workspace

pytestmark = pytest.mark.slow

CUSTOMERS = 1_000


def run_demo(root: Path, workspace_yml: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from tests.segment.send.fake_segment import FakeSegment

    write_workspace(root, workspace_yml, {"demo": DEMO_PIPELINE.read_text()})
    pipeline = Pipeline.load(root / "pipelines" / "demo.yml")
    with pipeline.connect() as wh:
        write_demo_data(wh, customers=CUSTOMERS, days=300, seed=13)
    fake = FakeSegment()
    result = pipeline.run(options={"segment_transport": fake})
    assert result.ok, {n.name: n.error for n in result.nodes if n.error}
    messages = [{k: v for k, v in m.items() if k not in VOLATILE} for m in fake.delivered()]
    statuses = {n.name: n.status for n in result.nodes}
    return sorted(messages, key=lambda m: m["messageId"]), statuses


def test_demo_sends_identical_messages_on_emulated_snowflake_and_duckdb(
    tmp_path: Path, snowflake_server: SnowflakeServer, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    monkeypatch.setenv("SEGMENT_WRITE_KEY", "wk-parity")
    monkeypatch.setenv("SEGLOOP_ENDPOINT", "http://127.0.0.1:9")  # unused: the fake transport answers
    snow, snow_nodes = run_demo(tmp_path / "snowflake", snowflake_server.workspace_yml("DEMO_PARITY"))
    duck, duck_nodes = run_demo(tmp_path / "duckdb", "warehouses:\n  default:\n    type: duckdb\n")
    assert set(snow_nodes.values()) == {"success"} and snow_nodes == duck_nodes
    kinds = {m["type"] for m in duck}
    assert len(duck) > 1_000 and {"identify", "track"} <= kinds
    exact_snow = [m for m in snow if "predicted_ltv" not in m.get("traits", {})]
    exact_duck = [m for m in duck if "predicted_ltv" not in m.get("traits", {})]
    assert len(exact_duck) > 1_000
    assert [m["messageId"] for m in exact_snow] == [m["messageId"] for m in exact_duck]
    assert exact_snow == exact_duck
    ltv_snow = {m["userId"]: m["traits"] for m in snow if "predicted_ltv" in m.get("traits", {})}
    ltv_duck = {m["userId"]: m["traits"] for m in duck if "predicted_ltv" in m.get("traits", {})}
    assert ltv_snow.keys() == ltv_duck.keys() and len(ltv_duck) == CUSTOMERS
    for user, traits in ltv_duck.items():
        other = ltv_snow[user]
        assert {k: v for k, v in other.items() if k != "predicted_ltv"} == \
            {k: v for k, v in traits.items() if k != "predicted_ltv"}
        if traits["predicted_ltv"] is None:  # no repeat purchase: no prediction on either
            assert other["predicted_ltv"] is None
        else:
            assert other["predicted_ltv"] == pytest.approx(traits["predicted_ltv"], rel=1e-6)
