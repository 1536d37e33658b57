"""Propensity's browsing-intensity features (the last 7 / 14 days) with identity stitching:
product views made before sign-up reach the customer's features only when the source
stitches. On DuckDB and PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa

from segloop.operators.propensity import FeatureBuilder, PropensityConfig
from segloop.pipeline import Pipeline
from tests.fixtures_pg import duckdb_or_pg_workspace

D = datetime(2026, 1, 1)
SNAPSHOT = D + timedelta(days=10)
PIPELINE = """\
name: {name}
warehouse: default
nodes:
  src:
    type: segment_source
    schema: web
{identity}
"""
# (anonymous_id, user_id, time, event): a1 browses logged out 10 and 5 days before the
# snapshot, signs up (identify a1 -> u1) and goes on browsing as u1; u1 orders 2 days before.
# b1 only ever browses logged in.
TRACKS = [
    ("a1", None, D, "product_viewed"),
    ("a1", None, D + timedelta(days=5), "product_viewed"),
    ("a1", "u1", D + timedelta(days=5, minutes=10), "product_viewed"),  # same session
    ("a1", "u1", D + timedelta(days=8), "product_viewed"),  # a new session
    ("a1", "u1", D + timedelta(days=8, minutes=5), "order_completed"),
    ("a1", "u1", D + timedelta(days=11), "product_viewed"),  # after the snapshot: not counted
    ("b1", "u2", D + timedelta(days=1), "product_viewed"),  # 9 days before: 14 days, not 7
]

workspace = duckdb_or_pg_workspace  # DuckDB, then a throwaway PostgreSQL database


def _calls(rows: list[tuple[Any, ...]], prefix: str, **extra: Any) -> pa.Table:
    return pa.table({
        "id": [f"{prefix}{i}" for i in range(len(rows))],
        "anonymous_id": pa.array([r[0] for r in rows], pa.string()),
        "user_id": pa.array([r[1] for r in rows], pa.string()),
        "timestamp": pa.array([r[2] for r in rows], pa.timestamp("us")),
        "received_at": pa.array([r[2] for r in rows], pa.timestamp("us")),
        **extra,
    })


def features(root: Path, stitched: bool) -> dict[str, dict[str, Any]]:
    name = "stitched" if stitched else "unstitched"
    path = root / "pipelines" / f"{name}.yml"
    path.write_text(PIPELINE.format(name=name, identity="    identity: stitch" if stitched else ""))
    p = Pipeline.load(path)
    with p.connect() as wh:
        if "web" not in wh.list_schemas():
            wh.create_table("tracks", _calls(TRACKS, "t-", event=[r[3] for r in TRACKS]), schema="web")
            identify = [("a1", "u1", D + timedelta(days=5, minutes=5)), ("b1", "u2", D)]
            wh.create_table("identifies", _calls(identify, "i-"), schema="web")
    result = p.run()
    assert result.ok, [n.error for n in result.nodes]
    customer = "canonical_user_id" if stitched else "user_id"
    config = PropensityConfig(type="propensity", input="ev", customer_id=customer, window_days=5)
    with p.connect() as wh:
        builder = FeatureBuilder(wh, wh.table(f"{name}__src__tracks"), None, config,
                                 ["product_viewed", "order_completed"])
        return {r["_cid"]: r for r in wh.to_arrow(builder.features(SNAPSHOT)).to_pylist()}


def test_views_before_sign_up_count_in_recent_browsing_only_when_stitched(workspace: Path) -> None:
    stitched = features(workspace, stitched=True)
    unstitched = features(workspace, stitched=False)
    u1 = stitched["u1"]
    # product views: 7 days (days 5, 5 +10 min, 8), 14 days (also day 0), all before the snapshot
    assert (u1["ev0_7d"], u1["ev0_14d"], u1["ev0_30d"], u1["ev0_count"]) == (3, 4, 4, 4)
    assert (u1["events_7d"], u1["events_14d"]) == (4, 5)
    # sessions starting in the last 7 days: day 5 (anonymous, then logged in) and day 8
    assert (u1["sessions_7d"], u1["sessions_14d"], u1["sessions"]) == (2, 3, 3)
    assert (u1["ev1_7d"], u1["ev1_14d"]) == (1, 1)
    # Without stitching the views before sign-up belong to nobody.
    v1 = unstitched["u1"]
    assert (v1["ev0_7d"], v1["ev0_14d"], v1["events_14d"], v1["sessions_7d"], v1["sessions_14d"]) == (2, 2, 3, 2, 2)
    for rows in (stitched, unstitched):
        u2 = rows["u2"]
        assert (u2["ev0_7d"], u2["ev0_14d"], u2["sessions_7d"], u2["sessions_14d"]) == (0, 1, 0, 1)
    assert set(stitched) == {"u1", "u2"} and set(unstitched) == {"u1", "u2"}
