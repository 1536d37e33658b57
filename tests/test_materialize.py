"""How node outputs are kept: views for SQL steps, tables for what people query or send.

Every output stays readable as ``<pipeline>__<node>``, whether a view or a table, and a
node can switch between the two from one run to the next on DuckDB and PostgreSQL.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from segloop.cli import app
from segloop.config import parse_pipeline
from segloop.errors import ConfigError
from segloop.pipeline import Pipeline
from segloop.store import MIGRATIONS, RunStore
from segloop.warehouses import DuckDBConfig, Warehouse
from tests.fixtures_pg import PgCluster
from tests.requirements import require_java, require_module

# Plain SQL that DuckDB and PostgreSQL both read.
CHAIN = """\
name: m
nodes:
  src:
    type: sql
    sql: select * from (values (1, 'a'), (2, 'b'), (3, 'a'), (4, 'c')) as t(id, grp)
  picked:
    type: sql
    sql: select id, grp from src where id >= 2
  summary:
    type: sql
    sql: select grp, count(*) as n from picked group by grp
"""


def with_materialize(text: str, **kinds: str) -> str:
    """The pipeline text with `materialize:` set on some nodes."""
    for node, kind in kinds.items():
        text = text.replace(f"  {node}:\n    type: sql\n", f"  {node}:\n    type: sql\n    materialize: {kind}\n")
    return text


def kinds(wh: Warehouse, pipeline: str) -> dict[str, str]:
    """Node -> VIEW / BASE TABLE, from the warehouse's own catalog."""
    rows = wh.sql(
        "select table_name, table_type from information_schema.tables "
        f"where table_schema = '{wh.schema}' and table_name like '{pipeline}\\_\\_%' escape '\\'"
    ).to_pyarrow().to_pylist()
    return {row["table_name"].split("__", 1)[1]: row["table_type"] for row in rows}


def summary_rows(wh: Warehouse) -> dict[str, int]:
    return {row["grp"]: int(row["n"]) for row in wh.table("m__summary").to_pyarrow().to_pylist()}


def run_ok(pipeline: Pipeline, **options: Any) -> Any:
    result = pipeline.run(**options)
    assert result.ok, [n.error for n in result.nodes]
    return result


def duck(root: Path) -> Warehouse:
    return Warehouse.connect(DuckDBConfig(), root)


def test_sql_steps_are_views_and_the_last_output_is_a_table(make_workspace) -> None:
    root = make_workspace({"m": CHAIN})
    result = run_ok(Pipeline.load(root / "pipelines" / "m.yml"))
    assert {n.name: n.rows for n in result.nodes} == {"src": 4, "picked": 3, "summary": 3}
    assert result.node("picked").metrics["materialized"] == "view"
    with duck(root) as wh:
        assert kinds(wh, "m") == {"src": "VIEW", "picked": "VIEW", "summary": "BASE TABLE"}
        # A person reads every node by its name, views included.
        assert wh.count(wh.sql("select * from main.m__picked")) == 3
        assert summary_rows(wh) == {"a": 1, "b": 1, "c": 1}
    run = RunStore(root / ".segloop" / "state.db").get_run("latest")
    assert {n.node: n.rows for n in run.nodes} == {"src": 4, "picked": 3, "summary": 3}


def test_a_node_switches_between_table_and_view_across_runs(make_workspace) -> None:
    root = make_workspace({"m": CHAIN})
    file = root / "pipelines" / "m.yml"
    expected = {"src": "VIEW", "picked": "VIEW", "summary": "BASE TABLE"}
    run_ok(Pipeline.load(file))
    for change, now in (
        ({"picked": "table", "summary": "view"}, {"picked": "BASE TABLE", "summary": "VIEW"}),
        ({}, {"picked": "VIEW", "summary": "BASE TABLE"}),
        ({"src": "table", "picked": "table"}, {"src": "BASE TABLE", "picked": "BASE TABLE"}),
    ):
        file.write_text(with_materialize(CHAIN, **change))
        result = run_ok(Pipeline.load(file))
        assert result.node("summary").rows == 3
        with duck(root) as wh:
            assert kinds(wh, "m") == {**expected, **now}
            assert summary_rows(wh) == {"a": 1, "b": 1, "c": 1}


def test_one_node_run_reads_the_view_of_its_upstream_node(make_workspace) -> None:
    root = make_workspace({"m": CHAIN})
    pipeline = Pipeline.load(root / "pipelines" / "m.yml")
    run_ok(pipeline)
    again = run_ok(pipeline, node="summary")
    assert [n.name for n in again.nodes] == ["summary"] and again.node("summary").rows == 3


def test_sql_read_by_a_model_sent_to_segment_or_read_by_nobody_is_a_table(monkeypatch) -> None:
    monkeypatch.setenv("SEGMENT_WRITE_KEY", "test-key")
    config = parse_pipeline("""\
name: p
nodes:
  orders:
    type: sql
    sql: select user_id, "timestamp", revenue from shop.order_completed
  rfm:
    type: rfm
    input: orders
  purchases:
    type: sql
    sql: select user_id, "timestamp", revenue from shop.order_completed where revenue > 0
  ltv:
    type: clv
    input: purchases
    horizon: 120 days
  audience:
    type: sql
    sql: select user_id, segment from rfm where segment = 'champions'
  to_segment:
    type: segment
    input: audience
    write_key: ${SEGMENT_WRITE_KEY}
    call: identify
    customer_id: user_id
    traits: [segment]
  leftover:
    type: sql
    sql: select count(*) as n from orders
""")
    assert {node: config.materialization(node) for node in config.nodes} == {
        "orders": "view", "rfm": "table", "purchases": "table", "ltv": "table", "audience": "table",
        "to_segment": "table", "leftover": "table"}


def test_view_of_a_python_output_is_refused_with_what_to_do(make_workspace) -> None:
    root = make_workspace({"p": """\
name: p
nodes:
  src:
    type: segment_source
    schema: shop
    materialize: view
"""})
    # Refused when the file is loaded, with its line, before any node runs.
    with pytest.raises(ConfigError) as caught:
        Pipeline.load(root / "pipelines" / "p.yml")
    error = str(caught.value)
    assert "p.yml:6: node `src`" in error and "`materialize: table`" in error and "Python" in error


def test_unknown_materialize_value_is_a_config_error_with_its_line() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_pipeline(with_materialize(CHAIN, picked="ephemeral"), "m.yml")
    text = str(caught.value)
    assert "picked" in text and "materialize" in text and "m.yml:8" in text


# -- run history -----------------------------------------------------------------------


def test_runs_started_within_one_second_are_told_apart(make_workspace) -> None:
    root = make_workspace({"m": CHAIN})
    pipeline = Pipeline.load(root / "pipelines" / "m.yml")
    ids = [run_ok(pipeline, options={"report": False}).run_id for _ in range(3)]
    assert len(set(ids)) == 3 and sorted(ids) == ids
    store = RunStore(root / ".segloop" / "state.db")
    assert store.get_run("latest").id == ids[-1]
    assert [run.id for run in store.list_runs("m")] == ids[::-1]
    assert store.last_node_run("m", "summary") is not None


def test_many_processes_opening_a_new_history_at_once_migrate_it_once(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def open_store() -> None:
        start.wait()
        try:
            RunStore(path).close()  # its own connection, as another process would have
        except BaseException as exc:  # noqa: BLE001 - collected and reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    db = sqlite3.connect(path)
    versions = [row[0] for row in db.execute("select version from schema_version order by version")]
    assert versions == [number for number, _ in MIGRATIONS]


def test_a_folder_given_as_pipeline_is_a_clear_error(make_workspace, monkeypatch) -> None:
    root = make_workspace({"m": CHAIN})
    monkeypatch.chdir(root)
    result = CliRunner().invoke(app, ["run", "pipelines"])
    assert result.exit_code != 0
    assert "is a folder, not a pipeline file" in result.output and "m.yml" in result.output


# -- PostgreSQL: views are bound to the tables they read ----------------------------------


@pytest.mark.postgres
def test_postgres_tables_under_views_and_switches_across_runs(
    tmp_path: Path, pg_cluster: PgCluster, pg_database: str
) -> None:
    root = tmp_path / "pg"
    (root / "pipelines").mkdir(parents=True)
    (root / "segloop.yml").write_text(pg_cluster.workspace_yml(pg_database, "default"))
    file = root / "pipelines" / "m.yml"
    # `src` a table that the view `picked` reads: PostgreSQL will not drop it under the view.
    base = with_materialize(CHAIN, src="table")
    file.write_text(base)
    config = pg_cluster.config(pg_database)
    for _ in range(2):
        run_ok(Pipeline.load(file))
    with Warehouse.connect(config, root) as wh:
        assert kinds(wh, "m") == {"src": "BASE TABLE", "picked": "VIEW", "summary": "BASE TABLE"}
        assert summary_rows(wh) == {"a": 1, "b": 1, "c": 1}
    # New columns in `src`: the view goes with the old table and comes back when `picked` runs.
    file.write_text(base.replace("select * from (values", "select *, id * 2 as twice from (values"))
    run_ok(Pipeline.load(file))
    default = {"src": "VIEW", "picked": "VIEW", "summary": "BASE TABLE"}
    for change, now in (({"picked": "table", "summary": "view"}, {"picked": "BASE TABLE", "summary": "VIEW"}),
                        ({}, {}),
                        ({"src": "table"}, {"src": "BASE TABLE"})):
        file.write_text(with_materialize(CHAIN, **change))
        run_ok(Pipeline.load(file))
        with Warehouse.connect(config, root) as wh:
            assert kinds(wh, "m") == {**default, **now}
            assert summary_rows(wh) == {"a": 1, "b": 1, "c": 1}


# -- Spark: views are persistent (not Ibis's temporary views) and switch like tables ----


@pytest.mark.slow
def test_spark_views_and_tables_switch_across_runs(tmp_path: Path) -> None:
    require_module("pyspark", "pip install 'segloop[pyspark]'")
    require_java(17)
    root = tmp_path / "spark"
    (root / "pipelines").mkdir(parents=True)
    (root / "segloop.yml").write_text(
        "warehouses:\n  default:\n    type: pyspark\n    master: local[2]\n    metastore: in-memory\n"
        f"    warehouse_dir: {tmp_path / 'spark-warehouse'}\n"
        "    conf:\n      spark.sql.shuffle.partitions: '2'\n")
    file = root / "pipelines" / "m.yml"
    default = {"src": "VIEW", "picked": "VIEW", "summary": "MANAGED"}
    for change, now in (({}, {}), ({"picked": "table", "summary": "view"}, {"picked": "MANAGED", "summary": "VIEW"}),
                        ({}, {})):
        file.write_text(with_materialize(CHAIN, **change))
        pipeline = Pipeline.load(file)
        run_ok(pipeline, options={"report": False})
        with pipeline.connect() as wh:
            session = wh.con._session  # type: ignore[attr-defined]
            found = {t.name.split("__", 1)[1]: t.tableType for t in session.catalog.listTables(wh.schema)
                     if t.name.startswith("m__")}
            assert found == {**default, **now}
            assert summary_rows(wh) == {"a": 1, "b": 1, "c": 1}
