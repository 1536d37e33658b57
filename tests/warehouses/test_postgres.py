"""segloop on a real PostgreSQL server (a throwaway cluster, see tests/fixtures_pg.py).

The demo pipeline gives the same RFM segments on PostgreSQL as on DuckDB, and RFM over a
million purchase events moves only a handful of rows into Python.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml
from typer.testing import CliRunner

from segloop.cli import app
from segloop.demo import write_demo_data
from segloop.errors import WarehouseError
from segloop.pipeline import Pipeline
from segloop.warehouses import DuckDBConfig, PostgresConfig, Warehouse
from tests.fixtures_pg import PgCluster

pytestmark = pytest.mark.postgres

DEMO_PIPELINE = Path(__file__).resolve().parents[2] / "examples" / "demo" / "pipelines" / "demo.yml"
WAREHOUSE_NODES = {"sql", "rfm", "segment_source"}  # the demo's nodes that run in the warehouse
RFM_COLUMNS = ["user_id", "recency_days", "frequency", "monetary", "last_purchase_at",
               "r_score", "f_score", "m_score", "rfm_score", "segment"]

SOURCE_PIPELINE = """\
name: via_source
nodes:
  src:
    type: segment_source
    schema: demo_shop
    tables: [tracks, identifies, users, order_completed]
  orders:
    type: sql
    sql: select user_id, "timestamp", revenue from src.order_completed where user_id is not null
  rfm:
    type: rfm
    input: orders
"""


def demo_pipeline_text() -> str:
    """The repository's demo pipeline, keeping the nodes that run inside the warehouse.

    A kept node must have only kept nodes upstream (a sql node over a model's output goes).
    """
    from segloop.config import parse_pipeline

    config = parse_pipeline(DEMO_PIPELINE.read_text(), DEMO_PIPELINE)
    kept = {name for name, node in config.nodes.items() if node.type in WAREHOUSE_NODES}
    changed = True
    while changed:
        dropped = {name for name in kept if not set(config.upstream_of(name)) <= kept}
        kept -= dropped
        changed = bool(dropped)
    data = yaml.safe_load(DEMO_PIPELINE.read_text())
    data["nodes"] = {k: v for k, v in data["nodes"].items() if k in kept}
    assert {"orders", "rfm"} <= set(data["nodes"])
    return yaml.safe_dump(data, sort_keys=False)


def write_workspace(root: Path, workspace_yml: str, pipelines: dict[str, str]) -> Path:
    (root / "pipelines").mkdir(parents=True, exist_ok=True)
    (root / "segloop.yml").write_text(workspace_yml)
    for name, text in pipelines.items():
        (root / "pipelines" / f"{name}.yml").write_text(text)
    return root


def rfm_rows(wh: Warehouse, table: str) -> list[dict[str, Any]]:
    rows = wh.table(table).select(*RFM_COLUMNS).order_by("user_id").to_pyarrow().to_pylist()
    for row in rows:
        row["monetary"] = round(row["monetary"], 6)
    return rows


def test_arrow_tables_round_trip_through_copy(pg_warehouse: Warehouse) -> None:
    awkward = pa.table({
        "s": ["plain", "", None, 'quote " and, comma', "new\nline", "ünïcødé ✓", "\\N", "NULL"],
        "i": pa.array([1, None, -3, 2**40, 0, 7, 8, 9], pa.int64()),
        "f": [1.5, None, -0.0, 1e-9, 3.25, 2.0, float("inf"), 6.0],
        "b": [True, False, None, True, False, True, False, True],
        "t": pa.array([datetime(2026, 1, 2, 3, 4, 5, 678901), None] + [datetime(2025, 12, 31)] * 6,
                      pa.timestamp("us")),
    })
    created = pg_warehouse.create_table("awkward", awkward, schema="io")
    back = created.order_by(created.i.isnull(), created.i).to_pyarrow()
    expected = sorted(awkward.to_pylist(), key=lambda row: (row["i"] is None, row["i"] or 0))
    assert back.to_pylist() == expected
    # Loading again replaces the table rather than appending to it.
    again = pg_warehouse.create_table("awkward", awkward.slice(0, 2), schema="io")
    assert pg_warehouse.count(again) == 2


def test_insert_appends_arrow_rows_even_with_an_all_null_column(pg_warehouse: Warehouse) -> None:
    first = pa.table({"key": ["a"], "error": ["boom"], "n": pa.array([1], pa.int64())})
    pg_warehouse.create_table("log", first, schema="state")
    # An all-NULL column arrives as Arrow type `null`, which Ibis cannot insert into PostgreSQL.
    pg_warehouse.insert("log", pa.table({"key": ["b", "c"], "error": [None, None], "n": [2, 3]}),
                        schema="state")
    rows = pg_warehouse.table("log", "state").order_by("key").to_pyarrow().to_pylist()
    assert rows == [{"key": "a", "error": "boom", "n": 1}, {"key": "b", "error": None, "n": 2},
                    {"key": "c", "error": None, "n": 3}]


def test_demo_pipeline_gives_the_same_rfm_segments_on_postgres_and_duckdb(
    tmp_path: Path, pg_cluster: PgCluster, pg_database: str
) -> None:
    pipelines = {"demo": demo_pipeline_text(), "via_source": SOURCE_PIPELINE}
    pg_root = write_workspace(tmp_path / "pg", pg_cluster.workspace_yml(pg_database, "default"), pipelines)
    duck_root = write_workspace(tmp_path / "duck", "warehouses:\n  default:\n    type: duckdb\n", pipelines)
    results = {}
    for label, root in (("postgres", pg_root), ("duckdb", duck_root)):
        pipeline = Pipeline.load(root / "pipelines" / "demo.yml")
        with pipeline.connect() as wh:
            assert wh.backend == label
            write_demo_data(wh, customers=1_200, days=365, seed=11)
        results[label] = (pipeline.run(), Pipeline.load(root / "pipelines" / "via_source.yml").run())
        assert all(r.ok for r in results[label]), [n.error for r in results[label] for n in r.nodes]

    with Warehouse.connect(pg_cluster.config(pg_database), pg_root) as pg, \
            Warehouse.connect(DuckDBConfig(), duck_root) as duck:
        on_pg, on_duck = rfm_rows(pg, "demo__rfm"), rfm_rows(duck, "demo__rfm")
        assert len(on_pg) > 900
        assert on_pg == on_duck
        assert rfm_rows(pg, "via_source__rfm") == on_pg
        segments = {row["segment"] for row in on_pg}
        assert len(segments) >= 8, segments  # the comparison covers most of the segment map
        kinds = dict(pg.sql("select table_name, table_type from information_schema.tables "
                            "where table_name like 'via_source__src__%'").to_pyarrow()
                     .to_pylist()[i].values() for i in range(4))
        assert set(kinds.values()) == {"VIEW"}


def test_source_can_be_reloaded_while_segment_source_views_point_at_it(
    tmp_path: Path, pg_cluster: PgCluster, pg_database: str
) -> None:
    root = write_workspace(tmp_path, pg_cluster.workspace_yml(pg_database, "default"),
                           {"via_source": SOURCE_PIPELINE})
    pipeline = Pipeline.load(root / "pipelines" / "via_source.yml")
    with pipeline.connect() as wh:
        write_demo_data(wh, customers=60, days=60, seed=1)
    assert pipeline.run().ok
    with pipeline.connect() as wh:  # views now depend on demo_shop.tracks and friends
        second = write_demo_data(wh, customers=90, days=60, seed=2)
        assert wh.count(wh.table("via_source__src__tracks")) == second.events
    again = pipeline.run()
    assert again.ok and again.node("rfm").rows is not None and again.node("rfm").rows > 60


class FetchCounter:
    """Counts rows psycopg hands to Python through any cursor (client- or server-side)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import psycopg

        self.rows = 0
        for cls in (psycopg.Cursor, psycopg.ServerCursor):
            for method in ("fetchall", "fetchmany", "fetchone"):
                monkeypatch.setattr(cls, method, self._counting(getattr(cls, method)))

    def _counting(self, original: Any) -> Any:
        def wrapper(cursor: Any, *args: Any, **kwargs: Any) -> Any:
            result = original(cursor, *args, **kwargs)
            if isinstance(result, list):
                self.rows += len(result)
            elif result is not None:
                self.rows += 1
            return result

        return wrapper


def test_rfm_on_a_million_events_moves_no_events_into_python(
    tmp_path: Path, pg_cluster: PgCluster, pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    events, customers = 1_000_000, 20_000
    with Warehouse.connect(pg_cluster.config(pg_database), tmp_path) as wh:
        wh.raw_sql("create schema shop")
        wh.raw_sql(
            f"create table shop.order_completed as select 'u' || (i % {customers}) as user_id, "
            "timestamp '2025-01-01' + i * interval '31 seconds' as \"timestamp\", "
            f"((i::bigint * 7919) % 500)::float8 / 10 as revenue from generate_series(1, {events}) as i"
        )
    root = write_workspace(tmp_path / "ws", pg_cluster.workspace_yml(pg_database, "default"), {
        "big": "name: big\nnodes:\n  orders:\n    type: sql\n"
               "    sql: select user_id, \"timestamp\", revenue from shop.order_completed\n"
               "  rfm:\n    type: rfm\n    input: orders\n"})
    pipeline = Pipeline.load(root / "pipelines" / "big.yml")
    opened: list[Warehouse] = []
    connect = Pipeline.connect
    monkeypatch.setattr(Pipeline, "connect", lambda self: opened.append(connect(self)) or opened[-1])
    counter = FetchCounter(monkeypatch)

    # No report: it reads its charts' aggregates on the run's connection.
    result = pipeline.run(options={"report": False})

    assert result.ok, [n.error for n in result.nodes]
    assert result.node("orders").rows == events and result.node("rfm").rows == customers
    assert opened[0].rows_fetched == 0  # the engine streamed nothing into Python
    assert counter.rows < 200, counter.rows  # only counts and catalog look-ups crossed the wire
    # The counter sees rows when they do move: reading the scores is one row per customer.
    with Warehouse.connect(pg_cluster.config(pg_database), root) as wh:
        before = counter.rows
        scores = sum(batch.num_rows for batch in wh.to_batches(wh.table("big__rfm"), batch_rows=5_000))
        assert scores == customers == wh.rows_fetched
        assert counter.rows - before >= customers


def test_check_warehouse_lists_segment_sources_with_counts(
    tmp_path: Path, pg_cluster: PgCluster, pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_workspace(tmp_path, pg_cluster.workspace_yml(pg_database, "pg"), {})
    with Warehouse.connect(pg_cluster.config(pg_database), root) as wh:
        stats = write_demo_data(wh, schema="web_prod", customers=80, days=60, seed=4)
        wh.create_table("tracks", pa.table({"id": ["x"]}), schema="ios_prod")
        wh.create_table("orders", pa.table({"id": ["x"]}), schema="erp")
    monkeypatch.chdir(root)
    result = CliRunner().invoke(app, ["check-warehouse", "pg"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    lines = {line.split()[1]: line for line in result.output.splitlines() if line.startswith("│")}
    assert set(lines) & {"web_prod", "ios_prod", "erp", "web_prod_truth"} == {"web_prod", "ios_prod"}
    assert f"{stats.events:,}" in lines["web_prod"] and f"{stats.customers:,}" in lines["web_prod"]


def test_unreachable_server_is_a_clear_error_without_the_password(
    pg_cluster: PgCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEGLOOP_TEST_PGPASSWORD", "hunter2-very-secret")
    config = PostgresConfig(host="127.0.0.1", port=pg_cluster.port, user="nobody_here",
                            password="${SEGLOOP_TEST_PGPASSWORD}", database="no_such_db",
                            connect_timeout=5)
    with pytest.raises(WarehouseError) as info:
        Warehouse.connect(config, ".")
    message = str(info.value)
    assert "cannot connect to PostgreSQL at 127.0.0.1" in message and "no_such_db" in message
    assert "hunter2" not in message and os.environ["SEGLOOP_TEST_PGPASSWORD"] not in repr(config)


def test_a_server_that_is_not_there_is_one_error_line_with_what_to_check() -> None:
    import socket

    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = PostgresConfig(host="127.0.0.1", port=port, user="u", database="d", connect_timeout=3)
    with pytest.raises(WarehouseError) as info:
        Warehouse.connect(config, ".")
    message = str(info.value)
    assert "\n" not in message and "?." not in message, message  # psycopg's hint joined, not a second line
    assert "cannot connect to PostgreSQL at 127.0.0.1" in message and "Check host, port" in message
