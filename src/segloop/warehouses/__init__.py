"""Warehouse types: one module per backend, each a frozen pydantic config with a ``type``.

``segloop.yml`` names warehouses; each block is read into the model of its ``type``
(a discriminated union). ``segloop.warehouse.Warehouse`` wraps the Ibis backend a config
connects to. Drivers other than DuckDB's are optional extras (``pip install
'segloop[postgres]'``, ``[snowflake]``, ``[bigquery]``, ``[pyspark]``).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from segloop.warehouses.base import WarehouseConfig
from segloop.warehouses.bigquery import BigQueryConfig
from segloop.warehouses.duckdb import DuckDBConfig
from segloop.warehouses.postgres import PostgresConfig
from segloop.warehouses.pyspark import PySparkConfig
from segloop.warehouses.snowflake import SnowflakeConfig

WAREHOUSE_TYPES: dict[str, type[WarehouseConfig]] = {
    cls.model_fields["type"].default: cls
    for cls in (DuckDBConfig, PostgresConfig, SnowflakeConfig, BigQueryConfig, PySparkConfig)
}

AnyWarehouseConfig = Annotated[
    DuckDBConfig | PostgresConfig | SnowflakeConfig | BigQueryConfig | PySparkConfig,
    Field(discriminator="type"),
]

# Ibis backend name -> sqlglot dialect name (they differ only for Spark).
SQL_DIALECTS: dict[str, str] = {"pyspark": "spark"}

__all__ = [
    "SQL_DIALECTS",
    "WAREHOUSE_TYPES",
    "AnyWarehouseConfig",
    "BigQueryConfig",
    "DuckDBConfig",
    "PostgresConfig",
    "PySparkConfig",
    "SnowflakeConfig",
    "WarehouseConfig",
]
