"""Warehouse types: one module per backend, each a config and a ``Warehouse`` subclass.

``segloop.yml`` names warehouses; each block is read into the frozen pydantic config of
its ``type`` (a discriminated union). A config opens its backend's ``Warehouse``
subclass (``Warehouse.connect``), which declares what the backend can do and overrides
what it does its own way; the generic Ibis part is ``warehouses/base.py``. Adding a
warehouse is one module and one line in ``WAREHOUSE_TYPES``. Drivers other than DuckDB's
are optional extras (``pip install 'segloop[postgres]'``, ``[snowflake]``, ``[bigquery]``,
``[pyspark]``).
"""

from __future__ import annotations

import functools
import operator
from typing import TYPE_CHECKING, Annotated

from pydantic import Field

from segloop.warehouses.base import Warehouse, is_arrow_table
from segloop.warehouses.bigquery import BigQueryConfig, BigQueryWarehouse
from segloop.warehouses.config import WarehouseConfig
from segloop.warehouses.duckdb import DuckDBConfig, DuckDBWarehouse
from segloop.warehouses.exprs import is_arrow_stream
from segloop.warehouses.postgres import PostgresConfig, PostgresWarehouse
from segloop.warehouses.pyspark import PySparkConfig, PySparkWarehouse
from segloop.warehouses.snowflake import SnowflakeConfig, SnowflakeWarehouse

# The registry: warehouse type (the `type:` of a config, also the Ibis backend name) -> config.
WAREHOUSE_TYPES: dict[str, type[WarehouseConfig]] = {
    cls.model_fields["type"].default: cls
    for cls in (DuckDBConfig, PostgresConfig, SnowflakeConfig, BigQueryConfig, PySparkConfig)
}

if TYPE_CHECKING:  # pragma: no cover
    AnyWarehouseConfig = WarehouseConfig
else:
    AnyWarehouseConfig = Annotated[functools.reduce(operator.or_, WAREHOUSE_TYPES.values()),
                                   Field(discriminator="type")]

# Ibis backend name -> sqlglot dialect name, where they differ (Spark).
SQL_DIALECTS: dict[str, str] = {
    name: dialect
    for name, cls in WAREHOUSE_TYPES.items()
    if (dialect := cls.warehouse_class().DIALECT) is not None and dialect != name
}

__all__ = [
    "SQL_DIALECTS",
    "WAREHOUSE_TYPES",
    "AnyWarehouseConfig",
    "BigQueryConfig",
    "BigQueryWarehouse",
    "DuckDBConfig",
    "DuckDBWarehouse",
    "PostgresConfig",
    "PostgresWarehouse",
    "PySparkConfig",
    "PySparkWarehouse",
    "SnowflakeConfig",
    "SnowflakeWarehouse",
    "Warehouse",
    "WarehouseConfig",
    "is_arrow_stream",
    "is_arrow_table",
]
