"""Warehouse settings in segloop.yml: one model per type, secrets as ${ENV}, missing drivers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from segloop.cli import app
from segloop.config import Workspace
from segloop.demo import write_demo_data
from segloop.errors import ConfigErrors, MissingDriverError
from segloop.warehouses import (
    WAREHOUSE_TYPES,
    BigQueryConfig,
    DuckDBConfig,
    PostgresConfig,
    PySparkConfig,
    SnowflakeConfig,
    Warehouse,
)

ALL_TYPES = """\
warehouses:
  default:
    type: duckdb
  pg:
    type: postgres
    host: db.internal
    user: segloop
    password: ${PGPASSWORD}
    database: analytics
    schema: segloop_out
  sf:
    type: snowflake
    account: myorg-acct
    user: SEGLOOP
    private_key_path: keys/segloop.p8
    private_key_passphrase: ${SNOWFLAKE_KEY_PASSPHRASE}
    database: SEGMENT
    warehouse: TRANSFORMING
    role: SEGLOOP_ROLE
  bq:
    type: bigquery
    project_id: acme-data
    dataset_id: segloop
    credentials_file: keys/bq.json
  spark:
    type: pyspark
    connect_url: sc://spark.internal:15002
    token: ${SPARK_TOKEN}
    schema: segloop
"""


def load(tmp_path: Path, text: str) -> Workspace:
    (tmp_path / "segloop.yml").write_text(text)
    return Workspace.load(tmp_path)


def test_every_warehouse_type_is_read_from_the_workspace_file(tmp_path: Path) -> None:
    ws = load(tmp_path, ALL_TYPES)
    configs = {name: ws.warehouse_config(name) for name in ("default", "pg", "sf", "bq", "spark")}
    assert [type(c) for c in configs.values()] == [DuckDBConfig, PostgresConfig, SnowflakeConfig,
                                                   BigQueryConfig, PySparkConfig]
    assert set(WAREHOUSE_TYPES) == {"duckdb", "postgres", "snowflake", "bigquery", "pyspark"}
    # Where node outputs and sync state go, per type.
    assert {n: c.output_schema for n, c in configs.items()} == {
        "default": "main", "pg": "segloop_out", "sf": "SEGLOOP", "bq": "segloop", "spark": "segloop"}
    assert configs["pg"].password == "${PGPASSWORD}"  # the reference, never the value
    with pytest.raises(Exception, match="frozen"):
        configs["pg"].host = "elsewhere"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("block", "line", "message"),
    [
        ("  w:\n    type: postgres\n    password: hunter2\n", 4, "name an environment variable"),
        ("  w:\n    type: snowflake\n    account: a\n    user: u\n    database: d\n", 2,
         "give one way to log in"),
        ("  w:\n    type: snowflake\n    account: a\n    user: u\n    database: d\n"
         "    password: ${P}\n    private_key_path: k.p8\n", 2, "either `password` or `private_key_path`"),
        ("  w:\n    type: bigquery\n    dataset_id: d\n", 2, "missing required key `warehouses.w.bigquery.project_id`"),
        ("  w:\n    type: pyspark\n    connect_url: http://spark:15002\n", 4, "starts with sc://"),
        ("  w:\n    type: pyspark\n    connect_url: sc://spark:15002/;token=abc\n", 4, "do not write the token"),
        ("  w:\n    type: redshift\n", 2, "'redshift'"),
        ("  w:\n    type: postgres\n    prot: 5432\n", 4, "unknown key `prot`"),
    ],
)
def test_bad_warehouse_settings_are_reported_with_their_line(
    tmp_path: Path, block: str, line: int, message: str
) -> None:
    with pytest.raises(ConfigErrors) as info:
        load(tmp_path, "warehouses:\n" + block)
    assert message in str(info.value)
    assert f"segloop.yml:{line}:" in str(info.value)


@pytest.mark.parametrize(
    ("config", "module", "extra"),
    [
        (PostgresConfig(), "psycopg", "postgres"),
        (SnowflakeConfig(account="a", user="u", database="d", password="${X}"), "snowflake.connector", "snowflake"),
        (BigQueryConfig(project_id="p", dataset_id="d"), "google.cloud.bigquery", "bigquery"),
        (PySparkConfig(), "pyspark", "pyspark"),
    ],
)
def test_missing_driver_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, config: object, module: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # as if the package were not installed
    with pytest.raises(MissingDriverError) as info:
        Warehouse.connect(config, tmp_path)  # type: ignore[arg-type]
    assert f"pip install 'segloop[{extra}]'" in str(info.value)


def test_missing_secret_names_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SEGLOOP_NO_SUCH_PASSWORD", raising=False)
    config = PostgresConfig(password="${SEGLOOP_NO_SUCH_PASSWORD}")
    with pytest.raises(Exception, match="SEGLOOP_NO_SUCH_PASSWORD is not set"):
        Warehouse.connect(config, tmp_path)


def test_check_warehouse_on_duckdb_lists_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "segloop.yml").write_text("warehouses:\n  default:\n    type: duckdb\n")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    empty = runner.invoke(app, ["check-warehouse"])
    assert empty.exit_code == 0 and "No Segment source found" in empty.output
    with Warehouse.connect(DuckDBConfig(), tmp_path) as wh:
        stats = write_demo_data(wh, schema="shop_web", customers=40, days=30, seed=9)
    listed = runner.invoke(app, ["check-warehouse", "default"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.output.splitlines() if "shop_web " in line)
    assert f"{stats.events:,}" in row and "shop_web_truth" not in listed.output
    unknown = runner.invoke(app, ["check-warehouse", "nope"])
    assert unknown.exit_code == 1 and "warehouse `nope` is not defined" in unknown.output


def test_quoting_follows_the_dialect() -> None:
    with Warehouse.duckdb() as wh:
        assert wh.quote('we"ird') == '"we""ird"' and wh.dialect == "duckdb"


@pytest.mark.parametrize(("required", "outcome"), [("1", "fail"), ("", "skip")])
def test_missing_postgres_binaries_skip_or_fail_as_ci_demands(
    monkeypatch: pytest.MonkeyPatch, required: str, outcome: str
) -> None:
    from _pytest.outcomes import Failed, Skipped

    from tests import fixtures_pg

    monkeypatch.setattr(fixtures_pg, "find_pg_bin", lambda: None)
    monkeypatch.setenv("SEGLOOP_REQUIRE_PG", required)
    expected = Failed if outcome == "fail" else Skipped
    with pytest.raises(expected) as info:
        next(fixtures_pg._start_cluster())
    assert "initdb/pg_ctl/postgres not found" in str(info.value)
