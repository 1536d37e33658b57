"""The demo data's split identities (`segloop demo-data`'s default) and the demo pipeline's
stitching put every event back on the customer the generator made it for."""

from __future__ import annotations

from pathlib import Path

import pytest

from segloop.demo import write_demo_data
from segloop.pipeline import Pipeline
from segloop.warehouses import DuckDBConfig, Warehouse

PIPELINE = """\
name: d
nodes:
  shop:
    type: segment_source
    schema: demo_shop
    identity: stitch
"""


@pytest.fixture(scope="module")
def stitched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo_identity")
    (root / "pipelines").mkdir()
    (root / "segloop.yml").write_text("warehouses:\n  default:\n    type: duckdb\n")
    (root / "pipelines" / "d.yml").write_text(PIPELINE)
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        write_demo_data(wh, customers=400, days=200, seed=5, split_ids=True)
    result = Pipeline.load(root / "pipelines" / "d.yml").run()
    assert result.ok, [n.error for n in result.nodes]
    return root


def one(root: Path, sql: str) -> dict:
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        return wh.sql(sql).to_pyarrow().to_pylist()[0]


def test_ids_are_split_as_in_real_segment_data(stitched: Path) -> None:
    counts = one(stitched, """
        select count(*) filter (where user_id is null and anonymous_id like 'anon-m-%') as phone_logged_out,
               count(*) filter (where id like '%-pre') as before_sign_up,
               count(distinct user_id) filter (where user_id like 'legacy-%') as legacy_ids,
               (select count(*) from demo_shop.aliases) as aliases
        from demo_shop.tracks""")
    assert counts["phone_logged_out"] > 1000 and counts["before_sign_up"] > 100
    assert counts["legacy_ids"] >= 3 and counts["aliases"] == counts["legacy_ids"]


def test_stitching_puts_every_customers_events_back_on_them(stitched: Path) -> None:
    wrong = one(stitched, """
        select count(*) filter (where canonical_user_id is distinct from replace(user_id, 'legacy-', '')
                                and user_id is not null) as known_wrong,
               count(*) filter (where anonymous_id like 'anon-m-%' and canonical_user_id is not null
                                and canonical_user_id <> substr(anonymous_id, 8)
                                and user_id is null) as phone_wrong,
               count(*) filter (where id like '%-pre' and canonical_user_id is null) as pre_unstitched,
               count(distinct canonical_user_id) as people,
               count(distinct user_id) as ids
        from d__shop__tracks""")
    assert wrong["known_wrong"] == 0
    # A phone another customer also logged into (a shared device) may go to its first user.
    assert wrong["phone_wrong"] <= 20
    assert wrong["pre_unstitched"] == 0  # the sign-up identify links the browsing before it
    truth = one(stitched, "select count(*) as n from demo_shop_truth.customers")["n"]
    assert wrong["people"] == truth < wrong["ids"]  # one person, one id; the raw ids count more
