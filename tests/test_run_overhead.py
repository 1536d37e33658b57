"""What keeps a run's fixed cost low must not change what a run does.

- one catalog listing per schema per connection: still right when another connection
  replaced a node's table or view behind this one's back;
- compiled SQL kept on disk between processes: the same SQL as Ibis compiles, and never
  the SQL of another expression.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ibis
import pytest

from segloop.operators.rfm import RfmConfig, rfm_expr
from segloop.pipeline import Pipeline
from segloop.sql_cache import SqlCache, fingerprint
from segloop.warehouse import _COMPILED, DuckDBConfig, Warehouse

PIPELINE = """\
name: o
nodes:
  orders:
    type: sql
    sql: >
      select * from (values ('u1', timestamp '2026-01-01', 10.0), ('u1', timestamp '2026-02-01', 5.5),
      ('u2', timestamp '2026-01-15', 20.0), (null, timestamp '2026-01-20', 1.0)) as t(user_id, "timestamp", revenue)
  rfm:
    type: rfm
    input: orders
"""


def kind_in_catalog(wh: Warehouse, name: str) -> str | None:
    rows = wh.con.con.execute(  # type: ignore[attr-defined]
        "select table_type from information_schema.tables where table_schema = 'main' and table_name = ?", [name]
    ).fetchall()
    return rows[0][0] if rows else None


def test_a_listing_made_stale_by_another_connection_is_asked_again(tmp_path: Path) -> None:
    file = tmp_path / "w.duckdb"
    mine, other = Warehouse.duckdb(file), Warehouse.duckdb(file)
    try:
        expr = mine.sql("select 1 as a union all select 2")
        assert mine.relation_kind("x") is None  # listed now, and kept
        other.raw_sql("create view x as select 42 as a")
        assert mine.replace_table("x", expr) == 2  # the view is dropped, not an error
        assert kind_in_catalog(mine, "x") == "BASE TABLE"

        assert mine.relation_kind("y") is None
        other.raw_sql("create table y as select 42 as a")
        mine.replace_view("y", expr)
        assert kind_in_catalog(mine, "y") == "VIEW"
        assert mine.count_rows("y") == 2
    finally:
        mine.close()
        other.close()


def test_a_query_that_fails_is_not_run_twice(tmp_path: Path) -> None:
    wh = Warehouse.duckdb(tmp_path / "w.duckdb")
    try:
        wh.relation_kind("x")
        calls = []
        execute = wh.con.con.execute  # type: ignore[attr-defined]

        class Counting:
            def __getattr__(self, name: str) -> object:
                return getattr(wh.con.con, name)  # type: ignore[attr-defined]

        counting = Counting()
        counting.execute = lambda sql, *a: (calls.append(sql), execute(sql, *a))[1]  # type: ignore[attr-defined]
        bad = wh.sql("select 1 as a").mutate(b=ibis.literal("x").cast("int64"))
        raw, wh.con.con = wh.con.con, counting  # type: ignore[attr-defined]
        try:
            with pytest.raises(Exception, match="could not write table"):
                wh.replace_table("x", bad)
        finally:
            wh.con.con = raw  # type: ignore[attr-defined]
        assert sum("CREATE OR REPLACE TABLE" in sql for sql in calls) == 1
    finally:
        wh.close()


def test_fingerprints_are_stable_and_tell_expressions_apart(tmp_path: Path) -> None:
    wh = Warehouse.duckdb(tmp_path / "w.duckdb")
    try:
        wh.raw_sql("create table orders (user_id varchar, ts timestamp, revenue double, amount double)")
        source = wh.table("orders")
        base = RfmConfig(input="orders", timestamp="ts")
        variants = [
            base,
            RfmConfig(input="orders", timestamp="ts", amount="amount"),
            RfmConfig(input="orders", timestamp="ts", as_of="2026-01-01"),
            RfmConfig(input="orders", timestamp="ts", as_of="2026-01-02"),
        ]
        prints = [fingerprint(rfm_expr(source, config)[0].op()) for config in variants]
        assert None not in prints and len(set(prints)) == len(prints)
        assert fingerprint(rfm_expr(wh.table("orders"), base)[0].op()) == prints[0]  # rebuilt: the same
        literals = [source.mutate(x=ibis.literal(v)) for v in (1, 1.0, True, "1")]
        assert len({fingerprint(e.op()) for e in literals}) == 4
        assert fingerprint(ibis.memtable({"a": [1, 2]}).op()) is None  # data held in Python
    finally:
        wh.close()


def test_sql_from_the_disk_cache_is_what_ibis_compiles(tmp_path: Path) -> None:
    file, folder = tmp_path / "w.duckdb", tmp_path / "cache"
    with Warehouse.duckdb(file) as wh:
        wh.raw_sql("create table orders (user_id varchar, ts timestamp, revenue double)")
        expr = rfm_expr(wh.table("orders"), RfmConfig(input="orders", timestamp="ts"))[0]
        compiled = str(wh.con.compile(expr))
        assert SqlCache(folder, "duckdb").compile(expr.op(), lambda: compiled) == compiled
    with Warehouse.duckdb(file) as wh:  # another connection, as in the next process
        expr = rfm_expr(wh.table("orders"), RfmConfig(input="orders", timestamp="ts"))[0]

        def must_not_compile() -> str:
            raise AssertionError("compiled again")

        assert SqlCache(folder, "duckdb").compile(expr.op(), must_not_compile) == compiled
        other = rfm_expr(wh.table("orders"), RfmConfig(input="orders", timestamp="ts", as_of="2026-01-01"))[0]
        assert SqlCache(folder, "duckdb").compile(other.op(), lambda: "fresh") == "fresh"


def test_a_run_in_a_fresh_process_reads_its_sql_from_the_workspace(make_workspace, monkeypatch) -> None:
    root = make_workspace({"o": PIPELINE})
    first = Pipeline.load(root / "pipelines" / "o.yml").run()
    assert first.ok, [n.error for n in first.nodes]
    assert list((root / ".segloop" / "cache" / "sql").glob("*/*.sql"))
    _COMPILED.clear()  # what a new process starts with
    monkeypatch.setattr(type(ibis.duckdb.connect()), "compile", lambda *a, **k: pytest.fail("compiled again"))
    again = Pipeline.load(root / "pipelines" / "o.yml").run()
    assert again.ok, [n.error for n in again.nodes]
    assert again.node("rfm").rows == first.node("rfm").rows == 2
    assert again.report is not None and again.report.exists()


def test_an_unusable_cache_folder_only_means_compiling(make_workspace) -> None:
    root = make_workspace({"o": PIPELINE})
    (root / ".segloop" / "cache").mkdir(parents=True)
    (root / ".segloop" / "cache" / "sql").write_text("not a folder")
    _COMPILED.clear()
    result = Pipeline.load(root / "pipelines" / "o.yml").run()
    assert result.ok, [n.error for n in result.nodes]
    assert result.node("rfm").rows == 2


RFM_ON_TABLE = """\
name: o
nodes:
  orders:
    type: sql
    sql: select user_id, "timestamp", revenue from shop_orders
  rfm:
    type: rfm
    input: orders
"""


def _rfm_rows(root: Path, config: Any) -> dict[str, tuple[int, float]]:
    with Warehouse.connect(config, root) as wh:
        return {r["user_id"]: (r["frequency"], r["monetary"]) for r in wh.table("o__rfm").to_pyarrow().to_pylist()}


@pytest.mark.parametrize("backend", ["duckdb", "postgres"])
def test_runs_in_one_process_reuse_expressions_but_read_the_data_anew(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    root = tmp_path / "ws"
    (root / "pipelines").mkdir(parents=True)
    if backend == "postgres":
        cluster = request.getfixturevalue("pg_cluster")
        database = request.getfixturevalue("pg_database")
        (root / "segloop.yml").write_text(cluster.workspace_yml(database, "default"))
        config = cluster.config(database)
    else:
        config = DuckDBConfig(path=str(root / "w.duckdb"))
        (root / "segloop.yml").write_text(f"warehouses:\n  default:\n    type: duckdb\n    path: {root / 'w.duckdb'}\n")
    (root / "pipelines" / "o.yml").write_text(RFM_ON_TABLE)
    with Warehouse.connect(config, root) as wh:
        wh.raw_sql("create table shop_orders (user_id varchar, \"timestamp\" timestamp, revenue double precision)")
        wh.raw_sql("insert into shop_orders values ('u1', '2026-01-01', 10), ('u2', '2026-01-02', 20)")
    pipeline = Pipeline.load(root / "pipelines" / "o.yml")
    assert pipeline.run().ok
    assert _rfm_rows(root, config) == {"u1": (1, 10.0), "u2": (1, 20.0)}
    with Warehouse.connect(config, root) as wh:  # new rows, and one without a customer id
        wh.raw_sql("insert into shop_orders values ('u1', '2026-01-03', 5), (null, '2026-01-03', 1)")
    again = pipeline.run()  # same config, same input columns: the expressions of the first run
    assert again.ok, [n.error for n in again.nodes]
    assert _rfm_rows(root, config) == {"u1": (2, 15.0), "u2": (1, 20.0)}
    assert again.node("rfm").metrics["rejected_rows"] == 1
