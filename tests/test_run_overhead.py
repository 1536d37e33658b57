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
from segloop.warehouses import DuckDBConfig, Warehouse
from segloop.warehouses.base import _COMPILED

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


# -- a fresh process skips building what an earlier one built --------------------------------


def _fresh_process() -> None:
    """Forget what this process compiled and built, as a new `segloop run` starts."""
    from segloop import sql_cache

    _COMPILED.clear()
    sql_cache._BUILT.clear()


def test_a_fresh_process_builds_no_rfm_expression_and_writes_the_same_table(make_workspace, monkeypatch) -> None:
    root = make_workspace({"o": PIPELINE})
    pipeline_file = root / "pipelines" / "o.yml"
    _fresh_process()
    assert Pipeline.load(pipeline_file).run().ok
    with Warehouse.connect(DuckDBConfig(path=".segloop/warehouse.duckdb"), root) as wh:
        first = wh.table("o__rfm").to_pyarrow()
    assert list((root / ".segloop" / "cache" / "sql").glob("*/*.json"))

    import segloop.operators.rfm as rfm

    _fresh_process()
    monkeypatch.setattr(rfm, "rfm_expr", lambda *a: pytest.fail("built the RFM expressions again"))
    again = Pipeline.load(pipeline_file).run()
    assert again.ok, [n.error for n in again.nodes]
    assert again.node("rfm").metrics["rejected_rows"] == 1
    with Warehouse.connect(DuckDBConfig(path=".segloop/warehouse.duckdb"), root) as wh:
        assert wh.table("o__rfm").to_pyarrow().equals(first)  # same rows, order, columns and types
        assert wh.table("o__rfm__rejects").count().execute() == 1


@pytest.mark.parametrize("change", ["config", "input columns", "segloop's code", "a damaged file"])
def test_the_expression_cache_builds_afresh_when_anything_it_depends_on_changes(
    change: str, make_workspace, monkeypatch
) -> None:
    from segloop import sql_cache

    root = make_workspace({"o": PIPELINE})
    pipeline_file = root / "pipelines" / "o.yml"
    _fresh_process()
    assert Pipeline.load(pipeline_file).run().ok
    if change == "config":
        pipeline_file.write_text(PIPELINE + "    as_of: 2026-03-01\n")
    elif change == "input columns":
        pipeline_file.write_text(PIPELINE.replace("as t(user_id, \"timestamp\", revenue)",
                                                  "as t(user_id, \"timestamp\", revenue) cross join (select 1 as extra)"))
    elif change == "segloop's code":
        sql_cache.code_version.cache_clear()
        monkeypatch.setattr(sql_cache, "code_version", lambda: "another version of segloop")
    else:
        for file in (root / ".segloop" / "cache" / "sql").glob("*/*.json"):
            file.write_text('[{"sql": "select 1 as nothing", "schema": {"nothing": ["NoSuchType", {}]}}]')
    built = []
    import segloop.operators.rfm as rfm

    real = rfm.rfm_expr
    monkeypatch.setattr(rfm, "rfm_expr", lambda *a: (built.append(1), real(*a))[1])
    _fresh_process()
    result = Pipeline.load(pipeline_file).run()
    assert result.ok, [n.error for n in result.nodes]
    assert built == [1]
    with Warehouse.connect(DuckDBConfig(path=".segloop/warehouse.duckdb"), root) as wh:
        recency = dict(wh.table("o__rfm").select("user_id", "recency_days").to_pyarrow().to_pylist()[i].values()
                       for i in range(2))
    assert recency == ({"u1": 28, "u2": 45} if change == "config" else {"u1": 0, "u2": 17})


# -- DuckDB look-ups: the same schemas as Ibis's, fewer queries --------------------------------


def test_plain_duckdb_type_names_map_to_what_ibis_parses() -> None:
    from ibis.backends.sql.datatypes import DuckDBType

    from segloop.warehouses.duckdb import PLAIN_TYPES, _dtype

    for name in [*PLAIN_TYPES, "DECIMAL(38,6)", "DECIMAL(9,0)", "VARCHAR[]", "STRUCT(a INTEGER, b VARCHAR)"]:
        for nullable in (True, False):
            ours, ibis_own = _dtype(name, nullable), DuckDBType.from_string(name, nullable=nullable)
            assert ours == ibis_own and repr(ours) == repr(ibis_own), name


def test_tables_and_queries_look_as_ibis_makes_them(tmp_path: Path) -> None:
    from segloop.demo import write_demo_data

    with Warehouse.duckdb(tmp_path / "w.duckdb") as wh:
        write_demo_data(wh, schema="shop", customers=30, days=30, seed=1)
        for name in ("tracks", "order_completed", "users", "identifies"):
            ours, theirs = wh.table(name, "shop"), wh.con.table(name, database="shop")
            assert ours.op() == theirs.op() and ours.schema() == theirs.schema()
        query = 'select user_id, "timestamp", revenue, products from shop.order_completed'
        assert wh.sql(query).op() == wh.con.sql(query).op()
        assert wh.compile(wh.sql(query)) == query  # a query is its own SQL


# -- the warehouse file is written while the report is -------------------------------------------


def test_the_outputs_are_in_the_duckdb_file_before_it_is_closed(make_workspace, monkeypatch) -> None:
    """The background checkpoint wrote the run's outputs into the file by the time the run
    closes its connection (closing no longer has that work to do)."""
    root = make_workspace({"o": PIPELINE})
    wal = Path(f"{root / '.segloop' / 'warehouse.duckdb'}.wal")
    at_close: list[int] = []
    real_close = Warehouse.close

    def close(wh: Warehouse) -> None:
        if wh._checkpoint is not None:  # the checkpoint is done, the connection still open
            wh._checkpoint.join()
        at_close.append(wal.stat().st_size if wal.exists() else 0)
        real_close(wh)

    monkeypatch.setattr(Warehouse, "close", close)
    result = Pipeline.load(root / "pipelines" / "o.yml").run()
    assert result.ok and result.report is not None and "RFM grid" in result.report.read_text()
    assert at_close == [0]
    import duckdb

    con = duckdb.connect(str(root / ".segloop" / "warehouse.duckdb"), read_only=True)
    try:
        assert con.execute("select count(*) from main.o__rfm").fetchone() == (2,)
    finally:
        con.close()


def test_a_run_that_cannot_open_its_history_leaves_the_warehouse_free(make_workspace, monkeypatch) -> None:
    import subprocess
    import sys
    import time

    root = make_workspace({"o": PIPELINE})
    real_store = Pipeline.store
    monkeypatch.setattr(Pipeline, "store", lambda self: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        Pipeline.load(root / "pipelines" / "o.yml").run()
    # The connection opened in the background is closed once it is open (the run does not
    # wait for it): another process may open the file within moments.
    opener = f"import duckdb; duckdb.connect({str(root / '.segloop' / 'warehouse.duckdb')!r}).close()"
    deadline = time.monotonic() + 20
    while True:
        proc = subprocess.run([sys.executable, "-c", opener], capture_output=True, text=True, check=False)
        if proc.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert proc.returncode == 0, proc.stderr
    monkeypatch.setattr(Pipeline, "store", real_store)
    assert Pipeline.load(root / "pipelines" / "o.yml").run().ok  # and the pipeline's lock was released


@pytest.mark.parametrize("query", ["select 1 as a union all select 2;", "select 1 as a union all select 2 -- two rows",
                                   "select 1 as a union all select 2 ;\n"])
def test_a_query_written_as_is_still_counts_and_materializes(query: str, tmp_path: Path) -> None:
    with Warehouse.duckdb(tmp_path / "w.duckdb") as wh:
        expr = wh.sql(query)
        assert wh.count(expr) == 2
        wh.replace_view("v", expr)
        assert wh.replace_table("t", expr) == 2
        assert wh.count_rows("v") == 2


# -- writing without a catalog listing (DuckDB) --------------------------------------------------


def _counting_statements(wh: Warehouse) -> list[str]:
    """Every statement ``wh`` sends to DuckDB from now on."""
    calls: list[str] = []
    raw = wh.con.con  # type: ignore[attr-defined]

    class Counting:
        def __getattr__(self, name: str) -> object:
            return getattr(raw, name)

        def execute(self, sql: str, *args: Any) -> Any:
            calls.append(sql)
            return raw.execute(sql, *args)

    wh.con.con = Counting()  # type: ignore[attr-defined]
    return calls


@pytest.mark.parametrize("write", ["table", "view"])
def test_a_failing_write_without_a_listing_runs_once(write: str, tmp_path: Path) -> None:
    with Warehouse.duckdb(tmp_path / "w.duckdb") as wh:
        assert "main" not in wh._kinds  # nothing listed: the write is tried first
        if write == "table":  # fails when it runs: 'x' is no number
            bad = wh.sql("select 'x' as a").mutate(b=ibis.literal("x").cast("int64"))
        else:  # fails when DuckDB binds it: no such column
            bad = wh.query("select no_such_column from (select 1 as a)", ibis.schema({"no_such_column": "int64"}))
        calls = _counting_statements(wh)
        with pytest.raises(Exception, match=f"could not (write|create) {write}"):
            (wh.replace_table if write == "table" else wh.replace_view)("x", bad)
        assert sum(f"CREATE OR REPLACE {write.upper()}" in sql or f"CREATE {write.upper()}" in sql
                   for sql in calls) == 1, calls


def test_tables_and_views_trade_places_on_a_fresh_connection(tmp_path: Path) -> None:
    import pyarrow as pa

    file = tmp_path / "w.duckdb"
    with Warehouse.duckdb(file) as wh:
        wh.replace_view("n", wh.sql("select 1 as a"))
    with Warehouse.duckdb(file) as wh:  # no listing yet: the view is found in the way, dropped
        assert wh.replace_table("n", wh.sql("select 1 as a union all select 2")) == 2
        assert kind_in_catalog(wh, "n") == "BASE TABLE"
    with Warehouse.duckdb(file) as wh:
        wh.replace_view("n", wh.sql("select 3 as a"))
        assert kind_in_catalog(wh, "n") == "VIEW"
    with Warehouse.duckdb(file) as wh:  # data from Python in place of a view: nothing left over
        wh.replace_table("n", pa.table({"a": [1, 2, 3]}))
        assert kind_in_catalog(wh, "n") == "BASE TABLE" and wh.count_rows("n") == 3
        assert wh.list_tables() == ["n"]


def test_what_a_run_wrote_is_read_with_the_types_duckdb_stored(tmp_path: Path) -> None:
    """Ibis's idea of an expression's types is not always DuckDB's (a sum of integers,
    epoch seconds): what a node wrote is read back as DuckDB has it."""
    with Warehouse.duckdb(tmp_path / "w.duckdb") as wh:
        source = wh.sql("select 1 as g, 2 as i, timestamp '2026-01-01 10:00:00' as ts union all "
                        "select 1, 3, timestamp '2026-01-02 10:00:00'")
        agg = source.group_by("g").aggregate(total=source.i.sum(), at=source.ts.max().epoch_seconds(),
                                             one=ibis.literal(1))
        wh.replace_table("agg", agg)
        mine = wh.table("agg")
        assert mine.schema() == wh.con.table("agg", database="main").schema()
        assert wh.to_arrow(mine).to_pylist() == [{"g": 1, "total": 5, "at": 1767348000.0, "one": 1}]


def test_the_code_version_changes_when_a_source_file_does(tmp_path: Path) -> None:
    import os

    from segloop.sql_cache import source_digest

    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    module = tmp_path / "pkg" / "sub" / "m.py"
    module.write_text("X = 1\n")
    before = source_digest(str(tmp_path / "pkg"), "1.0")
    assert source_digest(str(tmp_path / "pkg"), "1.0") == before
    module.write_text("X = 2\n")
    os.utime(module, ns=(1, 1))
    assert source_digest(str(tmp_path / "pkg"), "1.0") != before
    assert source_digest(str(tmp_path / "pkg"), "1.1") != source_digest(str(tmp_path / "pkg"), "1.0")
