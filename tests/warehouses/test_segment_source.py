"""The segment_source node: checks the source schema, exposes its tables as views, windows."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from segloop.config import parse_pipeline
from segloop.demo import write_demo_data
from segloop.errors import ConfigErrors
from segloop.pipeline import Pipeline
from segloop.warehouses import DuckDBConfig, Warehouse
from tests.pipeline_fixtures import SQL_RFM_KNOWN

SOURCE_PIPELINE = """\
name: shop
nodes:
  src:
    type: segment_source
    schema: demo_shop
  orders:
    type: sql
    sql: select user_id, "timestamp", revenue from src.order_completed where user_id is not null
  rfm:
    type: rfm
    input: orders
"""

DIRECT_PIPELINE = "name: direct\nnodes:\n" + SQL_RFM_KNOWN


@pytest.fixture
def shop(make_workspace) -> Path:
    """A DuckDB workspace holding a small demo Segment source `demo_shop`."""
    root = make_workspace({"shop": SOURCE_PIPELINE, "direct": DIRECT_PIPELINE})
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        write_demo_data(wh, customers=150, days=120, seed=3)
    return root


def run(root: Path, name: str):  # type: ignore[no-untyped-def]
    return Pipeline.load(root / "pipelines" / f"{name}.yml").run()


def rows(root: Path, query: str) -> list[dict]:
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        return wh.sql(query).to_pyarrow().to_pylist()


def test_source_tables_are_views_and_rfm_matches_reading_the_schema_directly(shop: Path) -> None:
    via_source, direct = run(shop, "shop"), run(shop, "direct")
    assert via_source.ok and direct.ok, [n.error for n in via_source.nodes + direct.nodes]
    assert rows(shop, "select * from shop__rfm") == rows(shop, "select * from direct__rfm")
    catalog = {r["table"]: r for r in rows(shop, "select * from shop__src")}
    assert list(catalog)[:3] == ["tracks", "identifies", "users"]
    assert set(catalog) == {"tracks", "identifies", "users", "product_viewed", "product_added",
                            "checkout_started", "order_completed", "order_refunded",
                            "order_completed_products"}  # Order Completed's products[], one row each
    kinds = {r["table_name"]: r["table_type"] for r in rows(
        shop, "select table_name, table_type from information_schema.tables "
              "where table_name like 'shop__src__%'")}
    assert kinds and set(kinds.values()) == {"VIEW"}, kinds  # nothing copied
    assert rows(shop, "select count(*) as n from shop__src__tracks") == \
        rows(shop, "select count(*) as n from demo_shop.tracks")


def test_short_names_resolve_through_a_declared_input(shop: Path, make_workspace) -> None:
    (shop / "pipelines" / "short.yml").write_text(
        "name: short\nnodes:\n  src:\n    type: segment_source\n    schema: demo_shop\n"
        "  counts:\n    type: sql\n    input: src\n"
        "    sql: select (select count(*) from tracks) as t, (select count(*) from users) as u\n"
    )
    assert run(shop, "short").ok
    expected = rows(shop, "select (select count(*) from demo_shop.tracks) as t, "
                          "(select count(*) from demo_shop.users) as u")
    assert rows(shop, "select * from short__counts") == expected


def test_ambiguous_short_name_and_unknown_node_table_are_clear_errors(shop: Path) -> None:
    (shop / "pipelines" / "two.yml").write_text(
        "name: two\nnodes:\n  a:\n    type: segment_source\n    schema: demo_shop\n"
        "  b:\n    type: segment_source\n    schema: demo_shop\n    tables: [tracks]\n"
        "  both:\n    type: sql\n    inputs: [a, b]\n    sql: select count(*) as n from tracks\n"
        "  typo:\n    type: sql\n    sql: select count(*) as n from a.trakcs\n"
    )
    result = run(shop, "two")
    assert result.node("a").status == "success" and result.node("b").status == "success"
    both = result.node("both").error
    assert "`tracks`" in both and "a, b" in both and "a.tracks" in both
    typo = result.node("typo").error
    assert "`a.trakcs`" in typo and "tracks" in typo and "order_completed" in typo


def test_missing_tables_are_listed_with_what_exists(shop: Path) -> None:
    (shop / "pipelines" / "missing.yml").write_text(
        "name: missing\nnodes:\n  src:\n    type: segment_source\n    schema: demo_shop\n"
        "    tables: [tracks, pages, order_completed, screens]\n"
    )
    error = run(shop, "missing").node("src").error
    assert "node `src`" in error and "pages, screens" in error
    assert "it has: checkout_started, identifies" in error


def test_unknown_schema_lists_the_segment_sources_present(shop: Path) -> None:
    (shop / "pipelines" / "bad.yml").write_text(
        "name: bad\nnodes:\n  src:\n    type: segment_source\n    schema: demo_shoop\n"
    )
    error = run(shop, "bad").node("src").error
    assert "`demo_shoop` does not exist" in error and "demo_shop" in error.split("(", 1)[1]


def test_schema_without_tracks_or_identifies_is_not_a_source(shop: Path) -> None:
    (shop / "pipelines" / "truth.yml").write_text(
        "name: truth\nnodes:\n  src:\n    type: segment_source\n    schema: demo_shop_truth\n"
    )
    error = run(shop, "truth").node("src").error
    assert "neither `tracks` nor `identifies`" in error and "customers" in error


def test_since_window_keeps_only_recent_rows(make_workspace) -> None:
    root = make_workspace({"recent": (
        "name: recent\nnodes:\n  src:\n    type: segment_source\n    schema: demo_shop\n"
        "    tables: [tracks, order_completed]\n    since: 30d\n")})
    end = datetime.now().replace(microsecond=0)
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        write_demo_data(wh, customers=120, days=90, seed=5, end=end)
    assert run(root, "recent").ok
    cutoff = (datetime.utcnow() - timedelta(days=30)).isoformat(sep=" ")
    for table in ("tracks", "order_completed"):
        got = rows(root, f"select count(*) as n, min(received_at) as first from recent__src__{table}")[0]
        all_rows = rows(root, f"select count(*) as n from demo_shop.{table}")[0]["n"]
        expected = rows(root, f"select count(*) as n from demo_shop.{table} "
                              f"where received_at > timestamp '{cutoff}' - interval 1 minute")[0]["n"]
        assert 0 < got["n"] < all_rows
        assert abs(got["n"] - expected) <= 2  # the run's clock and the test's differ by seconds
        assert got["first"] >= datetime.utcnow() - timedelta(days=30, minutes=5)


def _append_tracks(root: Path, ids: list[str], received: datetime) -> None:
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        template = wh.sql("select * from demo_shop.tracks limit 1").to_pyarrow().to_pylist()[0]
        new = [{**template, "id": i, "received_at": received} for i in ids]
        wh.insert("tracks", pa.Table.from_pylist(new, schema=wh.table("tracks", "demo_shop").schema().to_pyarrow()),
                  schema="demo_shop")


def test_incremental_reads_rows_received_since_the_last_successful_run(make_workspace) -> None:
    root = make_workspace({"inc": (
        "name: inc\nnodes:\n  src:\n    type: segment_source\n    schema: demo_shop\n"
        "    tables: [tracks]\n    incremental: true\n"
        "  new_ids:\n    type: sql\n    sql: select t.id from src.tracks t, ctl.gate g\n")})
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        stats = write_demo_data(wh, customers=60, days=30, seed=2)
        wh.create_table("gate", pa.table({"ok": [1]}), schema="ctl")
    assert run(root, "inc").ok
    assert len(rows(root, "select * from inc__new_ids")) == stats.events  # first run: everything

    _append_tracks(root, ["late-1", "late-2"], datetime(2030, 1, 1))
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        wh.drop_table("gate", schema="ctl")  # the downstream node fails: this run does not count
    failed = run(root, "inc")
    assert failed.node("src").status == "success" and failed.node("new_ids").status == "failed"

    _append_tracks(root, ["late-3"], datetime(2030, 1, 2))
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        wh.create_table("gate", pa.table({"ok": [1]}), schema="ctl")
    assert run(root, "inc").ok
    assert sorted(r["id"] for r in rows(root, "select * from inc__new_ids")) == ["late-1", "late-2", "late-3"]
    assert run(root, "inc").ok  # nothing new since
    assert rows(root, "select * from inc__new_ids") == []


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ("    since: yesterday\n", "neither a duration"),
        ("    since: 7d\n    incremental: true\n", "either `since` or `incremental"),
        ("    tables: []\n", "`tables` is empty"),
        ("    input: other\n", "at most 0 input"),
        ("    tabels: [tracks]\n", "unknown key `tabels`"),
    ],
)
def test_config_problems_name_the_line(node: str, message: str) -> None:
    text = ("name: p\nnodes:\n  other:\n    type: sql\n    sql: select 1 as x\n"
            "  src:\n    type: segment_source\n    schema: demo_shop\n" + node)
    with pytest.raises(ConfigErrors) as info:
        parse_pipeline(text, "p.yml")
    assert message in str(info.value)
    assert any(err.line and err.line >= 6 for err in info.value.errors)


def test_upper_case_schema_and_tables_match_like_snowflake(make_workspace) -> None:
    root = make_workspace({"upper": (
        "name: upper\nnodes:\n  src:\n    type: segment_source\n    schema: web_prod\n"
        "    tables: [tracks]\n    since: 2026-03-01\n")})
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        wh.create_table("TRACKS", pa.table({
            "ID": ["a", "b", "c"],
            "RECEIVED_AT": [datetime(2026, 1, 5), datetime(2026, 3, 2), datetime(2026, 4, 1)],
        }), schema="WEB_PROD")
    result = run(root, "upper")
    assert result.ok, result.node("src").error
    assert sorted(r["ID"] for r in rows(root, "select * from upper__src__tracks")) == ["b", "c"]
    [entry] = rows(root, "select * from upper__src")
    assert entry["source"] == "WEB_PROD.TRACKS" and entry["window"].startswith("RECEIVED_AT > 2026-03-01")


# -- products[]: one row per product -------------------------------------------------------

PRODUCTS_PIPELINE = """\
name: shop
nodes:
  src:
    type: segment_source
    schema: web
    tables: [order_completed]
  items:
    type: sql
    input: src
    sql: select * from order_completed_products
"""
ORDERS = pa.table({
    "id": ["o1", "o2", "o3", "o4", "o5"],
    "user_id": ["u1", "u1", "u2", "u3", None],
    "received_at": [datetime(2026, 5, d) for d in range(1, 6)],
    "event_text": ["Order Completed"] * 5,
    "coupon": ["SPRING", None, None, None, None],  # the order's coupon; products have their own
    "products": [
        '[{"product_id": "p1", "sku": "S1", "category": "audio", "price": 19.5, "quantity": 2,'
        ' "coupon": "P10", "colour": "red"}, {"product_id": 507, "price": 3}]',
        "[]", None, '[{"product_id": "p2", "name": "Mug", "quantity": 1.5}]', '[{"sku": "S9"}]'],
})
EXPECTED_ITEMS = [  # (id, user_id, coupon, product_id, sku, category, name, price, quantity, product_coupon)
    ("o1", "u1", "SPRING", "507", None, None, None, 3.0, None, None),
    ("o1", "u1", "SPRING", "p1", "S1", "audio", None, 19.5, 2.0, "P10"),
    ("o4", "u3", None, "p2", None, None, "Mug", None, 1.5, None),
    ("o5", None, None, None, "S9", None, None, None, None, None),
]
ITEM_COLUMNS = ["id", "user_id", "coupon", "product_id", "sku", "category", "name", "price",
                "quantity", "product_coupon"]


def item_rows(wh: Warehouse, table: str) -> list[tuple]:
    rows = wh.table(table).to_pyarrow().to_pylist()
    return sorted((tuple(r[c] for c in ITEM_COLUMNS) for r in rows), key=lambda r: (r[0], str(r[3])))


def test_products_json_becomes_one_row_per_product(make_workspace) -> None:
    root = make_workspace({"shop": PRODUCTS_PIPELINE})
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        wh.create_table("order_completed", ORDERS, schema="web")
    result = run(root, "shop")
    assert result.ok, [n.error for n in result.nodes]
    assert result.node("src").metrics["tables"] == ["order_completed", "order_completed_products"]
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        assert item_rows(wh, "shop__items") == EXPECTED_ITEMS
        assert "products" not in wh.table("shop__items").columns  # the JSON itself stays out
        catalog = {r["table"]: r for r in wh.table("shop__src").to_pyarrow().to_pylist()}
    assert catalog["order_completed_products"]["source"] == "web.order_completed.products"


def test_products_rows_match_every_product_of_the_demo_orders(shop: Path) -> None:
    assert run(shop, "shop").ok
    with Warehouse.connect(DuckDBConfig(), shop) as wh:
        orders = wh.table("order_completed", schema="demo_shop").to_pyarrow()
        items = wh.table("shop__src__order_completed_products").to_pyarrow()
    import orjson

    expected = sorted((o, p["product_id"], p["quantity"]) for o, text in zip(
        orders["id"].to_pylist(), orders["products"].to_pylist(), strict=True) for p in orjson.loads(text))
    got = sorted(zip(items["id"].to_pylist(), items["product_id"].to_pylist(),
                     items["quantity"].to_pylist(), strict=True))
    assert len(got) > len(orders) and got == expected


def test_a_real_table_named_like_the_products_view_wins(make_workspace) -> None:
    root = make_workspace({"shop": PRODUCTS_PIPELINE.replace(
        "tables: [order_completed]", "tables: [order_completed, order_completed_products]")})
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        wh.create_table("order_completed", ORDERS, schema="web")
        wh.create_table("order_completed_products", pa.table({"id": ["own"]}), schema="web")
    result = run(root, "shop")
    assert result.ok, [n.error for n in result.nodes]
    assert any("web.order_completed_products exists" in w for w in result.node("src").warnings)
    assert rows(root, "select id from shop__items") == [{"id": "own"}]


def test_products_off_exposes_only_the_tables(make_workspace) -> None:
    root = make_workspace({"shop": PRODUCTS_PIPELINE.replace(
        "tables: [order_completed]", "tables: [order_completed]\n    products: false").replace(
        "order_completed_products", "order_completed")})
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        wh.create_table("order_completed", ORDERS, schema="web")
    result = run(root, "shop")
    assert result.ok and result.node("src").metrics["tables"] == ["order_completed"]


@pytest.mark.postgres
def test_products_rows_are_the_same_on_postgres(tmp_path: Path, pg_warehouse: Warehouse) -> None:
    from segloop.operators.base import RunContext
    from segloop.operators.segment_source import SegmentSourceConfig, SegmentSourceOperator

    config = SegmentSourceConfig(type="segment_source", schema="web", tables=["order_completed"])
    found = {}
    with Warehouse.duckdb(tmp_path / "duck.duckdb") as duck:
        for label, wh in (("postgres", pg_warehouse), ("duckdb", duck)):
            wh.create_table("order_completed", ORDERS, schema="web")
            ctx = RunContext(warehouse=wh, pipeline="p", node="src", run_id="r")
            SegmentSourceOperator(config).run({}, ctx)
            found[label] = item_rows(wh, "p__src__order_completed_products")
    assert found["postgres"] == found["duckdb"] == EXPECTED_ITEMS


def test_warehouse_without_the_products_view_warns_and_runs_on(
    make_workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    # BigQuery has no rule for unnesting JSON: the tables must still come.
    from segloop.warehouses import DuckDBWarehouse

    monkeypatch.setattr(DuckDBWarehouse, "UNNESTS_JSON", False)
    root = make_workspace({"shop": PRODUCTS_PIPELINE.replace("order_completed_products", "order_completed")})
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        wh.create_table("order_completed", ORDERS, schema="web")
    result = run(root, "shop")
    assert result.ok, [n.error for n in result.nodes]
    assert result.node("src").metrics["tables"] == ["order_completed"]
    assert any("cannot be built on duckdb" in w for w in result.node("src").warnings)


def _loaded_source(root: Path) -> None:
    """A source schema `web` loaded from an archive: segloop's own tables sit beside Segment's."""
    import orjson

    from segloop.segment.archive.files import ArchiveWriter
    from segloop.segment.archive.loader import load_archive

    messages = [
        {"type": "track", "messageId": "m1", "userId": "u1", "event": "Order Completed",
         "receivedAt": "2025-11-24T10:00:00Z", "properties": {"qty": 1}},
        {"type": "track", "messageId": "m2", "userId": "u1", "event": "Order Completed",
         "receivedAt": "2025-11-24T10:00:01Z", "properties": {"qty": "many"}},
        {"type": "group", "messageId": "m3", "userId": "u1", "groupId": "acme",
         "receivedAt": "2025-11-24T10:00:02Z", "traits": {"plan": "pro"}},
    ]
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        for batch in (messages[:1], messages[1:]):  # the second load widens nothing: "many" is rejected
            writer = ArchiveWriter(root / "archive")
            writer.append({("web", 1763942400000): [orjson.dumps(m) for m in batch]})
            writer.close()
            load_archive(wh, root / "archive")
        assert {"_segloop_loaded_files", "_segloop_load_rejects"} <= set(wh.list_tables("web"))


def test_segloops_own_tables_are_never_shown_as_segment_data(make_workspace, monkeypatch) -> None:
    from typer.testing import CliRunner

    from segloop.cli import app
    from segloop.segment.sources import segment_sources

    root = make_workspace({"web": "name: web\nnodes:\n  src:\n    type: segment_source\n    schema: web\n"})
    _loaded_source(root)
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        (source,) = segment_sources(wh)
    assert source.event_tables == ["order_completed"]
    assert not [t for t in source.tables if t.startswith("_segloop")]
    monkeypatch.chdir(root)
    listed = CliRunner().invoke(app, ["check-warehouse"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.output.splitlines() if "web " in line)
    # tracks, groups, accounts, order_completed: 4 tables, 1 of them an event table
    cells = [cell.strip() for cell in row.split("│") if cell.strip()]
    assert cells[:3] == ["web", "4", "1"], row
    result = run(root, "web")
    assert result.ok, [n.error for n in result.nodes]
    catalog = [r["table"] for r in rows(root, "select * from web__src")]
    assert sorted(catalog) == ["accounts", "groups", "order_completed", "tracks"]
    assert rows(root, "select id, plan from web__src__accounts") == [{"id": "acme", "plan": "pro"}]
