"""Every query the sql, rfm and segment_source nodes generate compiles to each warehouse's dialect.

Snowflake and BigQuery cannot be reached from the tests, so their SQL is checked offline:
Ibis compiles the node's expression to the dialect, sqlglot parses it back in that dialect,
and then translates it to DuckDB and runs it on the demo data: the result must equal what the
node computes on DuckDB. No driver is needed for this (the tests run without the
[snowflake] and [bigquery] extras).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import ibis
import pytest
import sqlglot

from segloop.demo import write_demo_data
from segloop.operators.rfm import RfmConfig, rfm_expr
from segloop.operators.sql import rewrite_node_refs
from segloop.warehouses import SQL_DIALECTS, WAREHOUSE_TYPES, Warehouse
from tests.requirements import require_module

# Ibis backend name of each warehouse type; pyspark needs its backend registered.
DIALECTS = ["snowflake", "bigquery", "postgres", "duckdb", "pyspark"]
# sqlglot cannot translate every Spark function to DuckDB; Spark runs for real in test_spark.
ROUND_TRIPPED = ["snowflake", "bigquery", "postgres", "duckdb"]

ORDERS_SQL = 'select user_id, "timestamp", revenue from demo_shop.order_completed where user_id is not null'


def sqlglot_dialect(backend: str) -> str:
    return SQL_DIALECTS.get(backend, backend)


def compile_to(expr: Any, backend: str) -> str:
    if backend == "pyspark":
        require_module("pyspark", "compiling to Spark SQL needs the [pyspark] extra: pip install 'segloop[pyspark]'")
        ibis.pyspark  # noqa: B018 - loading the backend registers its compiler options
    sql = ibis.to_sql(expr, dialect=backend)
    sqlglot.parse_one(sql, read=sqlglot_dialect(backend))  # raises on SQL the dialect rejects
    return str(sql)


@pytest.fixture(scope="module")
def demo() -> Iterator[Warehouse]:
    wh = Warehouse.duckdb()
    write_demo_data(wh, customers=300, days=200, seed=1)
    # BigQuery's float division, for running BigQuery SQL translated to DuckDB.
    wh.raw_sql("create macro ieee_divide(a, b) as a::double / b::double")
    wh.create_table("orders", wh.sql(ORDERS_SQL))
    yield wh
    wh.close()


def run_translated(wh: Warehouse, sql: str, backend: str) -> list[dict[str, Any]]:
    duck_sql = sqlglot.transpile(sql, read=sqlglot_dialect(backend), write="duckdb")[0]
    return wh.sql(duck_sql).to_pyarrow().to_pylist()


@pytest.mark.parametrize("backend", DIALECTS)
@pytest.mark.parametrize("as_of", [None, datetime(2026, 7, 15)])
def test_rfm_sql_compiles_and_means_the_same(demo: Warehouse, backend: str, as_of: datetime | None) -> None:
    config = RfmConfig(as_of=as_of)
    expected_scored, expected_rejects = rfm_expr(demo.table("orders"), config)
    unbound = ibis.table(demo.table("orders").schema(), name="orders")
    scored, rejects = rfm_expr(unbound, config)
    scored_sql, rejects_sql = compile_to(scored, backend), compile_to(rejects, backend)
    if backend not in ROUND_TRIPPED:
        return
    expected = expected_scored.to_pyarrow().to_pylist()
    assert len(expected) > 250
    assert run_translated(demo, scored_sql, backend) == expected
    assert run_translated(demo, rejects_sql, backend) == expected_rejects.to_pyarrow().to_pylist() == []


@pytest.mark.parametrize("backend", DIALECTS)
def test_sql_node_rewrite_stays_in_the_dialect(demo: Warehouse, backend: str) -> None:
    dialect = sqlglot_dialect(backend)
    query = ("select o.user_id, count(*) as n from orders o join src.users u on u.id = o.user_id "
             "group by o.user_id")
    rewritten = rewrite_node_refs(query, {"orders": ("main", "orders")}, dialect,
                                  {("src", "users"): ("demo_shop", "users")})
    tree = sqlglot.parse_one(rewritten, read=dialect)
    tables = {(t.db, t.name) for t in tree.find_all(sqlglot.exp.Table)}
    assert tables == {("main", "orders"), ("demo_shop", "users")}
    quote = "`" if dialect in ("bigquery", "spark") else '"'
    assert f"{quote}orders{quote}" in rewritten
    if backend in ROUND_TRIPPED:
        got = run_translated(demo, rewritten, backend)
        expected = demo.sql("select o.user_id, count(*) as n from main.orders o join demo_shop.users u "
                            "on u.id = o.user_id group by o.user_id").to_pyarrow().to_pylist()
        assert sorted(got, key=str) == sorted(expected, key=str) and len(got) > 250


@pytest.mark.parametrize("backend", DIALECTS)
def test_segment_source_window_compiles(demo: Warehouse, backend: str) -> None:
    tracks = demo.table("tracks", "demo_shop")
    start, end = datetime(2026, 5, 1), datetime(2026, 6, 1)
    expr = tracks.filter(tracks.received_at > ibis.literal(start).cast(tracks.received_at.type()),
                         tracks.received_at <= ibis.literal(end).cast(tracks.received_at.type()))
    unbound = ibis.table(tracks.schema(), name="tracks", database="demo_shop")
    sql = compile_to(unbound.filter(
        unbound.received_at > ibis.literal(start).cast(unbound.received_at.type()),
        unbound.received_at <= ibis.literal(end).cast(unbound.received_at.type())).count(), backend)
    if backend in ROUND_TRIPPED:
        [row] = run_translated(demo, sql, backend)
        assert list(row.values()) == [demo.count(expr)] and demo.count(expr) > 0


# A sql node's query as the demo writes it: "double quotes" around a column, 'single' around text.
QUOTED_NODE_SQL = ('select user_id, "timestamp", revenue, \'Order Completed\' as event from orders '
                   'where "revenue" > 0')
# Where a sql node that names no `dialect:` reads "timestamp" as text, as the warehouse does.
DOUBLE_QUOTED_STRINGS = {"bigquery"}


@pytest.mark.parametrize("backend", DIALECTS)
def test_sql_node_double_quotes_name_columns_and_single_quotes_text(demo: Warehouse, backend: str) -> None:
    wh = _as_dialect(demo, backend)
    dialect = sqlglot_dialect(backend)
    rewritten = rewrite_node_refs(QUOTED_NODE_SQL, {"orders": ("main", "orders")}, dialect, read=wh.node_sql_dialect)
    tree = sqlglot.parse_one(rewritten, read=dialect)  # what the warehouse will read
    columns = [column.name for column in tree.find_all(sqlglot.exp.Column)]
    texts = [literal.this for literal in tree.find_all(sqlglot.exp.Literal) if literal.is_string]
    if backend in DOUBLE_QUOTED_STRINGS:
        assert texts == ["timestamp", "Order Completed", "revenue"], rewritten
        return
    assert columns == ["user_id", "timestamp", "revenue", "revenue"], rewritten
    assert texts == ["Order Completed"], rewritten
    if backend in ROUND_TRIPPED:
        got = run_translated(demo, rewritten, backend)
        expected = demo.sql(QUOTED_NODE_SQL.replace("from orders", "from main.orders")).to_pyarrow().to_pylist()
        assert got == expected and len(got) > 250
        assert isinstance(got[0]["timestamp"], datetime)


def test_a_sql_node_in_spark_dialect_keeps_sparks_double_quoted_strings() -> None:
    # `dialect: spark` says the query is Spark SQL as Spark reads it: "..." is text there.
    rewritten = rewrite_node_refs('select "timestamp" as t from orders', {"orders": ("s", "o")}, "spark",
                                  read="spark")
    assert rewritten == "SELECT 'timestamp' AS t FROM `s`.`o` AS orders"


class _InDialect(Warehouse):
    """The same DuckDB warehouse, reporting another dialect, with the methods of that
    backend's Warehouse class (``md5_hex``: what SyncState's SQL differs by)."""

    target = "duckdb"
    # Reading and writing go to the DuckDB connection underneath, not the backend's own way
    # (Spark's reads Arrow from its session).
    _table = Warehouse._table
    _arrow = Warehouse._arrow
    count = Warehouse.count
    to_batches = Warehouse.to_batches
    list_schemas = Warehouse.list_schemas
    _raw_sql = Warehouse._raw_sql
    _create_from_arrow = Warehouse._create_from_arrow
    _replace_table_as = Warehouse._replace_table_as

    @property
    def dialect(self) -> str:
        return self.target


def _as_dialect(wh: Warehouse, backend: str) -> Warehouse:
    clone = copy.copy(wh)
    kind = WAREHOUSE_TYPES[backend].warehouse_class()
    clone.__class__ = type("InDialect", (_InDialect, kind), {"target": sqlglot_dialect(backend)})
    return clone


@pytest.mark.parametrize(
    "backend",
    [
        "snowflake",
        "bigquery",
        "postgres",
        "pyspark",
    ],
)
def test_sync_diff_compiles_and_means_the_same(demo: Warehouse, backend: str) -> None:
    from segloop.segment.sync import SyncState

    demo.create_table("people", demo.sql("select id as user_id, plan, email from demo_shop.users"))
    state = SyncState(demo, "parity", "to_segment")
    state.ensure()
    people = demo.table("people")
    expected = state.classify(people, ["user_id"], ["plan", "email"], "fp").order_by("_key")
    in_dialect = SyncState(_as_dialect(demo, backend), "parity", "to_segment")
    expr = in_dialect.classify(people, ["user_id"], ["plan", "email"], "fp").order_by("_key")
    sql = compile_to(expr, backend)
    if backend in ROUND_TRIPPED:
        got = run_translated(demo, sql, backend)
        assert got == expected.to_pyarrow().to_pylist() and len(got) > 250


@pytest.mark.parametrize("backend", DIALECTS)
def test_clv_summary_compiles_and_means_the_same(demo: Warehouse, backend: str) -> None:
    from datetime import date

    from segloop.operators.clv import ClvConfig, summary_expr

    config = ClvConfig(time_unit="weeks")
    as_of, until = date(2026, 4, 30), date(2026, 6, 30)
    expected = summary_expr(demo.table("orders"), config, as_of, until).to_pyarrow().to_pylist()
    expected.sort(key=lambda row: row["user_id"])  # the node sorts in Python, not in SQL
    unbound = ibis.table(demo.table("orders").schema(), name="orders")
    sql = compile_to(summary_expr(unbound, config, as_of, until), backend)
    if backend in ROUND_TRIPPED:
        got = sorted(run_translated(demo, sql, backend), key=lambda row: row["user_id"])
        assert len(got) > 200
        assert _close(got, expected)


def _close(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> bool:
    """Equal rows, floats equal to 1e-9 relative (engines may sum in another order)."""
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(b[key], float):
                assert a[key] == pytest.approx(b[key], rel=1e-9), (key, a, b)
            else:
                assert a[key] == b[key], (key, a, b)
    return True
