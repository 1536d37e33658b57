"""Snowflake executed on the fakesnow server (tests/warehouses/snowflake_server.py), and
Segment's upper-case Snowflake schema read right, proven on the SQL segloop sends.

fakesnow ignores the case of names, real Snowflake does not: Segment's Snowflake destination
creates ``TRACKS`` with ``USER_ID`` (unquoted, so upper-case), which a quoted ``"user_id"``
never matches. The emulated runs below show that segloop works; the statements recorded on
the real Snowflake connector (parsed with sqlglot's snowflake dialect) show which names it
sends: the source's own upper-case names, quoted exactly, read as lower-case columns, in a
session with QUOTED_IDENTIFIERS_IGNORE_CASE, so that Ibis's quoted lower-case names resolve
as Snowflake's unquoted ones do.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlglot
from sqlglot import exp
from typer.testing import CliRunner

from segloop.cli import app
from segloop.pipeline import Pipeline
from segloop.warehouses import SnowflakeConfig, Warehouse
from tests.warehouses.snowflake_server import SnowflakeServer, snowflake_config  # noqa: F401
from tests.warehouses.test_postgres import write_workspace

# The fixture snowflake_server (one fakesnow server per test run) is tests/warehouses/conftest.py's.

# Segment's Snowflake destination: unquoted DDL, so upper-case names (a tiny source).
SEGMENT_DDL = [
    'CREATE SCHEMA IF NOT EXISTS "SHOP"',
    'CREATE TABLE "SHOP"."TRACKS" ("ID" VARCHAR, "USER_ID" VARCHAR, "EVENT" VARCHAR, '
    '"TIMESTAMP" TIMESTAMP_NTZ, "RECEIVED_AT" TIMESTAMP_NTZ)',
    'CREATE TABLE "SHOP"."IDENTIFIES" ("ID" VARCHAR, "USER_ID" VARCHAR, "EMAIL" VARCHAR, '
    '"RECEIVED_AT" TIMESTAMP_NTZ)',
    'CREATE TABLE "SHOP"."ORDER_COMPLETED" ("ID" VARCHAR, "USER_ID" VARCHAR, "REVENUE" DOUBLE, '
    '"PRODUCTS" VARCHAR, "TIMESTAMP" TIMESTAMP_NTZ, "RECEIVED_AT" TIMESTAMP_NTZ)',
    """INSERT INTO "SHOP"."TRACKS" VALUES ('t1', 'u1', 'order_completed', '2026-01-02 10:00:00', '2026-01-02 10:00:01'),
       ('t2', 'u2', 'order_completed', '2026-01-03 10:00:00', '2026-01-03 10:00:01')""",
    """INSERT INTO "SHOP"."IDENTIFIES" VALUES ('i1', 'u1', 'a@example.com', '2026-01-01 09:00:00')""",
    """INSERT INTO "SHOP"."ORDER_COMPLETED" VALUES
       ('o1', 'u1', 30.5, '[{"product_id": "p1", "price": 10.5, "quantity": 1}, {"product_id": 7, "price": 20}]',
        '2026-01-02 10:00:00', '2026-01-02 10:00:01'),
       ('o2', 'u2', 12, '[]', '2026-01-03 10:00:00', '2026-01-03 10:00:01'),
       ('o3', 'u2', 5, NULL, '2026-01-04 10:00:00', '2026-01-04 10:00:01')""",
]

SOURCE_PIPELINE = """\
name: shop
nodes:
  src:
    type: segment_source
    schema: shop
  orders:
    type: sql
    sql: select user_id, "timestamp", revenue from src.order_completed where user_id is not null
  rfm:
    type: rfm
    input: orders
"""


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every statement the real Snowflake connector sends, in order."""
    from snowflake.connector.cursor import SnowflakeCursor

    statements: list[str] = []
    execute = SnowflakeCursor.execute

    def recording(self: SnowflakeCursor, command: str, *args: Any, **kwargs: Any) -> Any:
        statements.append(command)
        return execute(self, command, *args, **kwargs)

    monkeypatch.setattr(SnowflakeCursor, "execute", recording)
    yield statements


def segment_source(wh: Warehouse) -> None:
    for statement in SEGMENT_DDL:
        wh.raw_sql(statement)


def tables_read(view_sql: str) -> set[tuple[str, str]]:
    """(schema, table) of every table the query of a CREATE VIEW reads."""
    query = sqlglot.parse_one(view_sql, read="snowflake").expression
    return {(t.db, t.name) for t in query.find_all(exp.Table)}


def test_config_reaches_a_local_server_by_host_port_and_protocol(
        snowflake_server: SnowflakeServer, sent: list[str]) -> None:  # noqa: F811
    config = snowflake_server.config("HOSTED")
    assert (config.host, config.port, config.protocol) == ("127.0.0.1", snowflake_server.port, "http")
    assert f"at 127.0.0.1:{snowflake_server.port}" in config.describe()
    with Warehouse.connect(config) as wh:
        assert wh.backend == "snowflake" and "SEGLOOP" in wh.list_schemas()
    session = [s for s in sent if s.startswith("ALTER SESSION")]
    assert session and "QUOTED_IDENTIFIERS_IGNORE_CASE = True" in session[0]


def test_protocol_is_https_or_http() -> None:
    base = {"account": "a", "user": "u", "password": "${P}", "database": "D"}
    config = SnowflakeConfig.model_validate({**base, "host": "sf.internal", "port": 8443, "protocol": "https"})
    assert config.describe() == "Snowflake account a at sf.internal:8443, database D"
    with pytest.raises(ValueError, match="protocol"):
        SnowflakeConfig.model_validate({"account": "a", "user": "u", "password": "${P}",
                                        "database": "D", "protocol": "ftp"})


def test_segment_upper_case_schema_is_read_by_its_own_names_as_lower_case_columns(
        tmp_path: Path, snowflake_server: SnowflakeServer, sent: list[str]) -> None:  # noqa: F811
    root = write_workspace(tmp_path, snowflake_server.workspace_yml("UPPER"), {"shop": SOURCE_PIPELINE})
    pipeline = Pipeline.load(root / "pipelines" / "shop.yml")
    with pipeline.connect() as wh:
        segment_source(wh)
    sent.clear()
    result = pipeline.run()
    assert result.ok, {n.name: n.error for n in result.nodes if n.error}
    views = {str(sqlglot.parse_one(s, read="snowflake").this.name): s
             for s in sent if s.startswith("CREATE OR REPLACE VIEW") or s.startswith("CREATE VIEW")}
    orders = views["shop__src__order_completed"]
    # The source by its stored names, quoted exactly: "SHOP"."ORDER_COMPLETED".
    assert tables_read(orders) == {("SHOP", "ORDER_COMPLETED")}
    select = sqlglot.parse_one(orders, read="snowflake").expression
    renames = {(a.this.name, a.alias) for a in select.find_all(exp.Alias) if isinstance(a.this, exp.Column)}
    assert {("USER_ID", "user_id"), ("TIMESTAMP", "timestamp"), ("REVENUE", "revenue")} <= renames
    # The products view: LATERAL FLATTEN over the source's PRODUCTS, by Snowflake path syntax.
    products = views["shop__src__order_completed_products"]
    assert "LATERAL FLATTEN" in products and 'f.value:"product_id"::VARCHAR' in products
    with pipeline.connect() as wh:
        rows = sorted(wh.sql("select user_id, product_id, price from shop__src__order_completed_products")
                      .to_pyarrow().to_pylist(), key=lambda r: r["product_id"])
        assert rows == [{"user_id": "u1", "product_id": "7", "price": 20.0},
                        {"user_id": "u1", "product_id": "p1", "price": 10.5}]
        rfm = {r["user_id"]: r["monetary"] for r in wh.table("shop__rfm").to_pyarrow().to_pylist()}
    assert rfm == {"u1": 30.5, "u2": 17.0}


def test_a_second_run_replaces_the_views_it_made(
        tmp_path: Path, snowflake_server: SnowflakeServer) -> None:  # noqa: F811
    """Views are listed (information_schema.views), so a second run replaces them."""
    root = write_workspace(tmp_path, snowflake_server.workspace_yml("RERUN"), {"shop": SOURCE_PIPELINE})
    pipeline = Pipeline.load(root / "pipelines" / "shop.yml")
    with pipeline.connect() as wh:
        segment_source(wh)
    for _ in range(2):
        result = pipeline.run()
        assert result.ok, {n.name: n.error for n in result.nodes if n.error}
    with pipeline.connect() as wh:
        assert wh.relation_kind("shop__src__tracks") == "view"
        assert wh.relation_kind("shop__rfm") == "table"


def test_catalog_listing_reads_views_and_compares_names_without_case(
        snowflake_config: SnowflakeConfig) -> None:  # noqa: F811
    with Warehouse.connect(snowflake_config) as wh:
        query = wh._kinds_query("analytics")
    assert query is not None
    parsed = sqlglot.parse_one(query, read="snowflake")
    assert {(t.db, t.name) for t in parsed.find_all(exp.Table)} == {
        ("information_schema", "tables"), ("information_schema", "views")}
    uppers = [f for f in parsed.find_all(exp.Upper) if isinstance(f.this, exp.Column)]
    assert "table_schema" in {f.this.name for f in uppers}  # UPPER(table_schema) = UPPER('analytics')


def test_sql_node_schema_comes_from_one_describe_only_request(
        snowflake_config: SnowflakeConfig, sent: list[str]) -> None:  # noqa: F811
    with Warehouse.connect(snowflake_config) as wh:
        wh.raw_sql('CREATE TABLE "SEGLOOP"."ORDERS" ("USER_ID" VARCHAR, "REVENUE" DOUBLE)')
        wh.raw_sql("""INSERT INTO "SEGLOOP"."ORDERS" VALUES ('u1', 2.5)""")
        assert wh.has_table("orders") and wh.has_table("ORDERS") and not wh.has_table("order")
        sent.clear()
        query = wh.sql("select user_id, revenue from orders")
        assert dict(query.schema().items()) == {"user_id": query.schema()["user_id"],
                                                "revenue": query.schema()["revenue"]}
        assert not any("LAST_QUERY_ID" in s.upper() for s in sent)
        assert wh.to_arrow(query).to_pylist() == [{"user_id": "u1", "revenue": 2.5}]


def test_check_warehouse_lists_the_upper_case_segment_source(
        tmp_path: Path, snowflake_server: SnowflakeServer, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    root = write_workspace(tmp_path, snowflake_server.workspace_yml("CHECKED"), {})
    with Warehouse.connect(snowflake_server.config("CHECKED"), root) as wh:
        segment_source(wh)
    monkeypatch.chdir(root)
    out = CliRunner().invoke(app, ["check-warehouse"])
    assert out.exit_code == 0, out.output
    assert "SHOP" in out.output and "ok" in out.output
    line = next(line for line in out.output.splitlines() if "SHOP" in line)
    cells = [c.strip() for c in line.strip("│ ").split("│")]
    assert cells[-3:] == ["2", "1", "-"], line  # rows of tracks, identifies; no users table
