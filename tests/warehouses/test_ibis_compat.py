"""Ibis 12 on duckdb 2 and sqlglot 30 (segloop.warehouses.ibis_compat): the calls Ibis still
makes that the current duckdb and sqlglot changed work again, through Ibis itself."""

from __future__ import annotations

import ibis
import pyarrow as pa
import sqlglot
import sqlglot.expressions as sge

from segloop.operators.segment_source import products_expr
from segloop.warehouses import Warehouse
from segloop.warehouses.ibis_compat import install


def test_ibis_drop_statements_name_what_they_drop() -> None:
    install()
    drop = sge.Drop(this=sqlglot.table("t", db="s", quoted=True), kind="VIEW", exists=True)
    assert drop.sql("duckdb") == 'DROP VIEW IF EXISTS "s"."t"'
    assert drop.sql("snowflake") == 'DROP VIEW IF EXISTS "s"."t"'
    parsed = sqlglot.parse_one("DROP TABLE a.b, a.c", read="duckdb")  # sqlglot's own form stays
    assert parsed.sql("duckdb") == "DROP TABLE a.b, a.c"


def test_ibis_reads_and_replaces_duckdb_tables(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with Warehouse.duckdb(tmp_path / "w.duckdb") as wh:
        wh.create_table("t", pa.table({"a": [1, 2]}), schema="shop")  # Ibis creates the schema
        con = wh.con
        con.create_table("u", ibis.memtable({"a": [3]}), database="shop", overwrite=True)
        con.create_table("u", ibis.memtable({"a": [4, 5]}), database="shop", overwrite=True)  # DROP + rename
        assert con.table("u", database="shop").to_pyarrow().to_pylist() == [{"a": 4}, {"a": 5}]
        batches = list(con.table("t", database="shop").to_pyarrow_batches(chunk_size=1))
        assert sum(b.num_rows for b in batches) == 2
        assert ibis.memtable({"x": [1]}).to_pyarrow().to_pylist() == [{"x": 1}]  # Ibis's default backend


def test_postgres_json_text_is_the_function_not_a_broken_operator() -> None:
    install()
    table = ibis.table({"user_id": "string", "products": "string"}, name="oc", database="s")
    sql = ibis.to_sql(products_expr(table, "products"), dialect="postgres")
    assert "->> VARIADIC" not in sql
    assert "JSON_EXTRACT_PATH_TEXT(" in sql.upper()
    sqlglot.parse_one(sql, read="postgres")  # and it parses
