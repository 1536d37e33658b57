"""Snowflake executed offline: the fakesnow emulator in server mode, started once per test run.

``snowflake_server`` (session fixture) runs fakesnow's HTTP server (the one ``fakesnow -s``
starts) on a free loopback port in a thread of the test process; segloop reaches it through
the real Snowflake connector (``SnowflakeConfig`` with ``host``/``port``/``protocol: http``),
exactly as it reaches Snowflake. ``snowflake_config`` (function fixture) gives each test its
own database, so tests share the server, not their tables.

fakesnow emulates Snowflake on DuckDB; where it differs, segloop's code does what is also
right on real Snowflake (``SnowflakeWarehouse``: views listed from
``information_schema.views``, query schemas from a describe-only request instead of
``DESCRIBE RESULT LAST_QUERY_ID()``, Arrow uploads as array-bound INSERTs instead of a
multi-statement stage + PUT + COPY INTO). What is left is this test-only adapter, each part
naming the fakesnow (0.12) gap it covers:

- ``ALTER SESSION SET a = 1 b = 2 ...`` (Ibis's session setup after login, with
  ``MULTI_STATEMENT_COUNT``, ``TIMEZONE``, ``QUOTED_IDENTIFIERS_IGNORE_CASE``): fakesnow cannot
  parse it (``Parser Error: syntax error at or near "SESSION"``). It runs as a no-op
  through fakesnow's own ``nop_regexes``; fakesnow already answers in UTC and ignores case.
- Ibis's Arrow upload (one request holding ``CREATE TEMP STAGE`` and ``CREATE TEMP TABLE``,
  then ``PUT`` and ``COPY INTO ... FROM @stage``): fakesnow does not split multi-statement
  requests. ``_upload_arrow_into_the_emulator`` writes Arrow tables into the emulator's
  DuckDB directly (on Snowflake, Ibis's stage + COPY INTO is the fast path, so segloop keeps it).
- ``DESCRIBE TABLE`` of a temporary table answers no columns, so Ibis's ``.cache()``
  (propensity) loses them: ``_describe_temporary_tables``.
- Exact sums: fakesnow sums every NUMBER argument of SUM/AVG as DOUBLE
  (``_exact_sums_of_numbers``).

What it cannot show: real Snowflake keeps the case of names, fakesnow does not; that is
proven on the SQL sent instead (tests/warehouses/test_snowflake_names.py).

snowflake-connector-python 5.x cannot log in to this server: 5.2.0 fails with ``250001 (08001):
Failed to login: Missing response field: master token`` (fakesnow 0.12.1's login answer has
no master token; 4.8.1 logs in). pyproject pins 4.x in the dev extra only.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from segloop.warehouses import SnowflakeConfig
from tests.requirements import require_module

# fakesnow gap: multi-parameter ALTER SESSION (see the module docstring).
NOP_STATEMENTS = [r"^\s*ALTER\s+SESSION\s+SET\b"]
PASSWORD_ENV = "SEGLOOP_FAKESNOW_PASSWORD"
START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class SnowflakeServer:
    """A running fakesnow server on the loopback interface."""

    host: str
    port: int

    def config(self, database: str, schema: str | None = None) -> SnowflakeConfig:
        """A segloop warehouse config for ``database`` on this server (password from the env)."""
        return SnowflakeConfig.model_validate({
            "type": "snowflake", "account": "fakesnow", "user": "fake",
            "password": "${" + PASSWORD_ENV + "}", "database": database,
            "host": self.host, "port": self.port, "protocol": "http",
            **({"schema": schema} if schema else {}),
        })

    def workspace_yml(self, database: str, name: str = "default") -> str:
        """A segloop.yml ``warehouses:`` block naming this server."""
        return (f"warehouses:\n  {name}:\n    type: snowflake\n    account: fakesnow\n"
                f"    user: fake\n    password: ${{{PASSWORD_ENV}}}\n    database: {database}\n"
                f"    host: {self.host}\n    port: {self.port}\n    protocol: http\n")


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _upload_arrow_into_the_emulator(monkeypatch: pytest.MonkeyPatch) -> None:
    """fakesnow gap: Ibis's Arrow upload (one request with ``CREATE TEMP STAGE`` and ``CREATE
    TEMP TABLE``, then ``PUT`` and ``COPY INTO ... FROM @stage``) fails on fakesnow (multi-
    statement requests are not split; the stage's INSERT cannot be described). Arrow tables
    (demo data, models' outputs) go straight into the emulator's DuckDB instead; everything
    else segloop sends still goes through the connector and the server.
    """
    import fakesnow.server
    import pyarrow as pa

    from segloop.warehouses.snowflake import SnowflakeWarehouse

    def write(wh: SnowflakeWarehouse, name: str, table: pa.Table, target: str, create: bool) -> None:
        duck = fakesnow.server.shared_fs.duck_conn.cursor()
        try:
            duck.register("_segloop_upload", table)
            qualified = f'"{wh.config.database}"."{target}"."{name}"'  # type: ignore[attr-defined]
            # Nested columns as JSON: fakesnow keeps Snowflake's ARRAY/OBJECT/VARIANT as JSON.
            nested = [f'to_json("{f.name}") AS "{f.name}"' for f in table.schema
                      if pa.types.is_nested(f.type)]
            columns = f"* REPLACE ({', '.join(nested)})" if nested else "*"
            duck.execute(f"CREATE OR REPLACE TABLE {qualified} AS SELECT {columns} FROM _segloop_upload"
                         if create else
                         f"INSERT INTO {qualified} BY NAME SELECT {columns} FROM _segloop_upload")
            duck.unregister("_segloop_upload")
        finally:
            duck.close()

    def create_from_arrow(self: SnowflakeWarehouse, name: str, table: pa.Table, target: str,
                          overwrite: bool) -> bool:
        write(self, name, table, target, create=True)
        return True

    original_insert = SnowflakeWarehouse.insert

    def insert(self: SnowflakeWarehouse, name: str, obj: Any, schema: str | None = None) -> None:
        if isinstance(obj, pa.Table):
            write(self, name, obj, schema or self.schema, create=False)
        else:
            original_insert(self, name, obj, schema)

    monkeypatch.setattr(SnowflakeWarehouse, "_create_from_arrow", create_from_arrow)
    monkeypatch.setattr(SnowflakeWarehouse, "insert", insert)


TEMP_DESCRIBE = """
SELECT column_name, CASE
    WHEN data_type IN ('BIGINT', 'INTEGER', 'SMALLINT', 'TINYINT', 'HUGEINT') THEN 'NUMBER(38,0)'
    WHEN data_type LIKE 'DECIMAL%' THEN replace(data_type, 'DECIMAL', 'NUMBER')
    WHEN data_type IN ('DOUBLE', 'FLOAT') THEN 'FLOAT'
    WHEN data_type = 'VARCHAR' THEN 'VARCHAR(16777216)'
    WHEN data_type = 'TIMESTAMP' THEN 'TIMESTAMP_NTZ(9)'
    WHEN data_type = 'TIMESTAMP WITH TIME ZONE' THEN 'TIMESTAMP_TZ(9)'
    WHEN data_type = 'JSON' THEN 'VARIANT'
    ELSE data_type END,
  'COLUMN', CASE WHEN is_nullable THEN 'Y' ELSE 'N' END, NULL, 'N', 'N',
  NULL::VARCHAR, NULL::VARCHAR, NULL::VARCHAR, NULL::VARCHAR, NULL::JSON
FROM duckdb_columns() WHERE database_name = 'temp' AND table_name = '{table}'
"""


def _describe_temporary_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    """fakesnow gap: ``DESCRIBE TABLE`` of a temporary table answers no columns (it reads
    fakesnow's information_schema, which leaves out DuckDB's ``temp`` catalog), so Ibis's
    ``.cache()`` (a temporary table, then DESCRIBE) loses every column (propensity:
    ``Column '_ev' is not found``). The describe query also reads the ``temp`` catalog.
    """
    import sqlglot
    from fakesnow import transforms

    original = transforms.describe_table

    def describe_table(expression: Any, current_database: str | None = None,
                       current_schema: str | None = None) -> Any:
        described = original(expression, current_database, current_schema)
        table = expression.find(sqlglot.exp.Table) if described is not expression else None
        if table is None or "_fs_columns" not in described.sql(dialect="duckdb"):
            return described
        temp = TEMP_DESCRIBE.format(table=table.name.replace("'", "''"))
        return sqlglot.parse_one(f"SELECT * FROM ({described.sql(dialect='duckdb')}) UNION ALL "
                                 f"({temp})", read="duckdb")

    monkeypatch.setattr(transforms, "describe_table", describe_table)


def _exact_sums_of_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    """fakesnow gap: every argument of SUM/AVG/MEDIAN/VARIANCE/STDDEV that is not itself a cast
    is rewritten to ``TRY_CAST(... AS DOUBLE)`` (fakesnow's stand-in for Snowflake's implicit
    cast of VARCHAR arguments), so a sum of a NUMBER column is summed as DOUBLE: the clv node's
    per-day purchase values (``SUM("_amount")`` of ``CAST(revenue AS DECIMAL(38, 6))`` in a
    subquery) came back as 696.5749999999999 instead of 696.575, and the clv fit, its
    ``predicted_clv`` and the messages sent with it differed from the tenth digit on.
    Snowflake sums NUMBER exactly, and segloop casts what it sums explicitly (money is
    ``DECIMAL(38, 6)``, see segloop.operators.columns.money), never relying on the VARCHAR
    cast: the emulator keeps fakesnow's Snowflake-style column names but not its cast.
    """
    from fakesnow import transforms
    from fakesnow.transforms import transforms as rules

    original = transforms.numeric_agg_implicit_cast

    def numeric_agg_implicit_cast(expression: Any) -> Any:
        arg = expression.this if isinstance(expression, rules._NUMERIC_ONLY_AGGS) else None
        result = original(expression)
        if arg is not None and expression.this is not arg:  # fakesnow's TRY_CAST(arg AS DOUBLE)
            expression.set("this", arg)
        return result

    monkeypatch.setattr(transforms, "numeric_agg_implicit_cast", numeric_agg_implicit_cast)


@contextmanager
def running_server(host: str = "127.0.0.1", port: int | None = None) -> Iterator[SnowflakeServer]:
    """fakesnow's HTTP server (what ``fakesnow -s`` runs) in a thread of this process, with
    the adapters above; stopped on leaving. Also used by bench/pipeline.py."""
    import fakesnow.server
    import uvicorn

    fakesnow.server.shared_fs.nop_regexes = NOP_STATEMENTS
    patches = pytest.MonkeyPatch()
    _upload_arrow_into_the_emulator(patches)
    _describe_temporary_tables(patches)
    _exact_sums_of_numbers(patches)
    port = port or _free_port(host)
    server = uvicorn.Server(uvicorn.Config(fakesnow.server.app, host=host, port=port,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, name="fakesnow", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"fakesnow did not start on {host}:{port}")
            time.sleep(0.05)
        yield SnowflakeServer(host, port)
    finally:
        patches.undo()
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def snowflake_server() -> Iterator[SnowflakeServer]:
    """One fakesnow server for the whole test run, on 127.0.0.1, stopped at the end.

    ``snowflake_server.config(database)`` is a ``SnowflakeConfig`` for it and
    ``snowflake_server.workspace_yml(database)`` a segloop.yml block naming it (the password
    is read from ``SEGLOOP_FAKESNOW_PASSWORD``, set here); the cross-engine demo suite uses
    the same. Use a database per test (``snowflake_config`` does).
    """
    require_module("fakesnow", "pip install -e '.[dev]' (fakesnow runs Snowflake offline)")
    previous = os.environ.get(PASSWORD_ENV)
    os.environ[PASSWORD_ENV] = "emulator-secret"  # fakesnow takes any password
    try:
        with running_server() as server:
            yield server
    finally:
        if previous is None:
            os.environ.pop(PASSWORD_ENV, None)


@pytest.fixture
def snowflake_config(snowflake_server: SnowflakeServer) -> SnowflakeConfig:
    """A warehouse config on the shared fakesnow server, in a database of this test's own."""
    return snowflake_server.config(f"T_{uuid.uuid4().hex[:12].upper()}")
