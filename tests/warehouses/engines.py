"""The warehouse engines the cross-engine tests run on: one `Engine` entry each in `ENGINES`.

An engine is a session-scoped pytest fixture that starts the engine once per test run (a
PostgreSQL cluster, the JVM of local Spark, an emulator) and returns a `NewWarehouse`:
called with a label, it gives the `segloop.yml` block of a fresh warehouse on that engine
(its own DuckDB file, PostgreSQL database, Spark output schema). tests/warehouses/conftest.py
hands the fixture of every engine in `ENGINES` to the tests there (``__all__`` below).

Adding an engine: write its fixture (here, or in its own module imported here) and add one
`Engine` line to `ENGINES`; tests/warehouses/test_demo_engines.py then runs the demo on it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures_pg import PgCluster
from tests.requirements import require_java, require_module
from tests.warehouses.snowflake_server import SnowflakeServer, snowflake_server

# label -> the lines under `warehouses: default:` in segloop.yml (indented four spaces).
NewWarehouse = Callable[[str], str]


@dataclass(frozen=True)
class Engine:
    name: str  # the test id; also the Ibis backend name the warehouse reports
    fixture: str  # a session fixture returning a NewWarehouse
    marks: tuple[Any, ...] = field(default=())  # pytest marks of the tests on this engine


ENGINES: list[Engine] = [
    Engine("duckdb", "duckdb_engine"),
    Engine("postgres", "postgres_engine", (pytest.mark.postgres,)),
    # The demo on local Spark: a query costs it 0.1-1 s (a job each), minutes on two busy cores.
    Engine("pyspark", "spark_engine", (pytest.mark.slow, pytest.mark.timeout(900))),
    # Snowflake emulated by fakesnow (tests/warehouses/snowflake_server.py), through the real
    # Snowflake connector: a request costs it ~0.05-0.5 s, a minute or two for the demo.
    Engine("snowflake", "snowflake_engine", (pytest.mark.slow, pytest.mark.timeout(900))),
]


def engine_params(names: set[str] | None = None) -> list[Any]:
    """`ENGINES` as pytest params (id and marks of each), optionally only those in ``names``."""
    return [pytest.param(engine, id=engine.name, marks=engine.marks)
            for engine in ENGINES if names is None or engine.name in names]


@pytest.fixture(scope="session")
def duckdb_engine(tmp_path_factory: pytest.TempPathFactory) -> NewWarehouse:
    """A DuckDB file of its own per warehouse."""
    root = tmp_path_factory.mktemp("duckdb-engine")
    return lambda label: f"    type: duckdb\n    path: {root / label}.duckdb\n"


@pytest.fixture(scope="session")
def postgres_engine(pg_cluster: PgCluster) -> NewWarehouse:
    """A database of its own per warehouse, on the session's throwaway cluster."""

    def new(label: str) -> str:
        database = pg_cluster.new_database(label)
        return (f"    type: postgres\n    host: {pg_cluster.host}\n    port: {pg_cluster.port}\n"
                f"    user: {pg_cluster.user}\n    database: {database}\n")

    return new


SPARK_SCHEMAS = itertools.count(1)


@pytest.fixture(scope="session")
def spark_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NewWarehouse]:
    """Local Spark, started once per test run (the JVM takes ~20 s or more on two cores).

    A process has one Spark session, so the warehouses share its catalog: each gets an
    output schema of its own, and source schemas (`demo_shop`) are shared: a test loads
    its source data before it runs.
    """
    require_module("pyspark", "pip install 'segloop[pyspark]'")
    require_java(17)
    from segloop.warehouses import PySparkConfig, Warehouse

    # Spark's Python workers (propensity scores in a UDF) import segloop: in local mode the
    # warehouse gives them this interpreter itself (warehouses/pyspark.py), as for a user.
    folder = tmp_path_factory.mktemp("spark-engine")
    block = (f"    type: pyspark\n    master: local[2]\n    metastore: in-memory\n"
             f"    warehouse_dir: {folder / 'warehouse'}\n"
             "    conf:\n      spark.sql.shuffle.partitions: '2'\n")
    config = PySparkConfig(master="local[2]", metastore="in-memory", warehouse_dir=str(folder / "warehouse"),
                           conf={"spark.sql.shuffle.partitions": "2"})
    with Warehouse.connect(config, Path(folder)) as wh:  # starts the JVM, once
        wh.con._session.sparkContext.setLogLevel("ERROR")  # type: ignore[attr-defined]
    yield lambda label: block + f"    schema: {label}_{next(SPARK_SCHEMAS)}\n"


SNOWFLAKE_DATABASES = itertools.count(1)


@pytest.fixture(scope="session")
def snowflake_engine(snowflake_server: SnowflakeServer) -> NewWarehouse:
    """A database of its own per warehouse, on the session's fakesnow server.

    The server (``snowflake_server``, started once per test run) keeps its test-only adapters
    for the fakesnow gaps (monkeypatches, module docstring of snowflake_server.py) active for
    as long as it runs, so for every test using this engine.
    """

    def new(label: str) -> str:
        database = f"{label.upper()}_{next(SNOWFLAKE_DATABASES)}"
        block = snowflake_server.workspace_yml(database)
        return block.split("  default:\n", 1)[1]  # the lines under `default:`

    return new


# What `from tests.warehouses.engines import *` (the conftest) gives: each engine's fixture,
# and the fakesnow server the Snowflake engine runs on (one per test run for the tests here).
__all__ = [engine.fixture for engine in ENGINES] + ["snowflake_server"]
