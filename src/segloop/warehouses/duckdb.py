"""The embedded default warehouse: a DuckDB file in the workspace (or ``:memory:``)."""

from __future__ import annotations

import re
import time
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from segloop.errors import WarehouseError, WarehouseLockedError
from segloop.warehouses.base import WarehouseConfig, workspace_path

if TYPE_CHECKING:  # pragma: no cover
    import ibis


class DuckDBConfig(WarehouseConfig):
    """The embedded default: a DuckDB file in the workspace (or ``:memory:``).

    DuckDB lets one process at a time open a file. ``lock_timeout`` is how long ``connect``
    waits, retrying, for another process (a collector loading, another run) to let go of
    it before failing; 0 fails at once.
    """

    type: Literal["duckdb"] = "duckdb"
    path: str = ".segloop/warehouse.duckdb"
    threads: int | None = None
    memory_limit: str | None = None
    lock_timeout: float = Field(default=30.0, ge=0.0)

    # DuckDB sets no column limit, but wide tables are slow to write (a row into a
    # 5,000-column table with 100k rows: 3.6 s; at 1,600 columns: 0.08 s). The loader
    # stops adding columns where PostgreSQL and Redshift must, so a load behaves alike.
    MAX_TABLE_COLUMNS: ClassVar[int] = 1600
    EXACT_NUMBER_SQL: ClassVar[str] = "DECIMAL(38,0)"  # DuckDB's widest exact number
    EXACT_NUMBER_DIGITS: ClassVar[int | None] = 38
    EXACT_NUMBER_FRACTIONS: ClassVar[bool] = False
    LOCK_ERROR: ClassVar[str] = "Could not set lock"  # in duckdb's IOException for a held file
    FIRST_RETRY_S: ClassVar[float] = 0.05  # doubles after each try, up to LAST_RETRY_S
    LAST_RETRY_S: ClassVar[float] = 1.0

    def describe(self) -> str:
        return f"duckdb file {self.path}"

    def connect(self, root: Path) -> ibis.BaseBackend:
        import ibis

        if self.path == ":memory:":
            target = ":memory:"
        else:
            file = workspace_path(self.path, root)
            file.parent.mkdir(parents=True, exist_ok=True)
            target = str(file)
        kwargs: dict[str, Any] = {}
        if self.threads:
            kwargs["threads"] = self.threads
        if self.memory_limit:
            kwargs["memory_limit"] = self.memory_limit
        deadline = time.monotonic() + self.lock_timeout
        pause = self.FIRST_RETRY_S
        while True:
            try:
                return ibis.duckdb.connect(target, **kwargs)
            except Exception as exc:  # duckdb raises IOException for locked files
                locked = self.LOCK_ERROR in str(exc)
                left = deadline - time.monotonic()
                if locked and left > 0:
                    time.sleep(min(pause, left))
                    pause = min(pause * 2, self.LAST_RETRY_S)
                    continue
                if not locked:
                    raise WarehouseError(
                        f"cannot open DuckDB file {target}: {exc}; check `path:` of this warehouse"
                    ) from exc
                waited = f" (waited {self.lock_timeout:g} s)" if self.lock_timeout else ""
                raise WarehouseLockedError(
                    f"cannot open DuckDB file {target}{waited}: {exc}. Is another segloop process "
                    "using it (a run, or a collector loading)? Wait for it or stop it, raise "
                    "`lock_timeout:` of this warehouse, or point `path:` at another file."
                ) from exc


# -- schemas without re-parsing type names --------------------------------------------------
#
# Ibis describes a DuckDB table or query with one DESCRIBE, then parses every column's type
# name with its type parser (~0.1 ms a column: most of a look-up). A run asks for the same
# few types again and again (the demo source has 19 columns; a run looks up its input,
# each sql node's query, and the report's tables), so parsed types are kept by name.


# DuckDB's names of the common types -> (Ibis type class, its arguments), as Ibis's parser
# maps them (tests/test_run_overhead.py checks each against it). Other names go
# through the parser, once per process: it builds a SQL parser, ~0.5 ms per new type.
PLAIN_TYPES: dict[str, tuple[str, dict[str, Any]]] = {
    "VARCHAR": ("String", {}),
    "BIGINT": ("Int64", {}),
    "INTEGER": ("Int32", {}),
    "SMALLINT": ("Int16", {}),
    "TINYINT": ("Int8", {}),
    "UBIGINT": ("UInt64", {}),
    "UINTEGER": ("UInt32", {}),
    "DOUBLE": ("Float64", {}),
    "FLOAT": ("Float32", {}),
    "BOOLEAN": ("Boolean", {}),
    "DATE": ("Date", {}),
    "TIMESTAMP": ("Timestamp", {"scale": 6}),
    "TIMESTAMP WITH TIME ZONE": ("Timestamp", {"timezone": "UTC", "scale": 6}),  # Ibis sets TimeZone = 'UTC'
    "TIME": ("Time", {}),
    "BLOB": ("Binary", {}),
    "UUID": ("UUID", {}),
    "JSON": ("JSON", {}),
}
_DECIMAL = re.compile(r"DECIMAL\((\d+),(\d+)\)")


@lru_cache(maxsize=4096)
def _dtype(type_name: str, nullable: bool) -> Any:
    import ibis.expr.datatypes as dt

    plain = PLAIN_TYPES.get(type_name)
    if plain is not None:
        return getattr(dt, plain[0])(nullable=nullable, **plain[1])
    decimal = _DECIMAL.fullmatch(type_name)
    if decimal is not None:
        return dt.Decimal(precision=int(decimal[1]), scale=int(decimal[2]), nullable=nullable)
    from ibis.backends.sql.datatypes import DuckDBType

    return DuckDBType.from_string(type_name, nullable=nullable)


def describe(raw: Any, target: str) -> ibis.Schema:
    """The Ibis schema of ``target`` (a quoted table name, or a query) on the duckdb connection ``raw``.

    The same schema Ibis builds (``Backend.get_schema`` / ``sql``), parsed types reused.
    Raises duckdb's own errors (``CatalogException`` for a missing table).
    """
    import ibis

    try:
        rows = raw.execute(f"DESCRIBE {target}").fetchall()
    except Exception as exc:  # point at the user's query, not at the DESCRIBE around it
        text = str(exc)
        if "LINE 1: DESCRIBE " not in text:
            raise
        lines = text.replace("LINE 1: DESCRIBE ", "LINE 1: ", 1).splitlines()
        lines = [line[len("DESCRIBE "):] if line.strip() == "^" and line.startswith(" " * 9) else line
                 for line in lines]
        try:
            fixed = type(exc)("\n".join(lines))
        except Exception:  # an exception type that takes other arguments: as it was
            raise exc from None
        raise fixed from exc
    # DESCRIBE's columns: column_name, column_type, null ('YES'/'NO'), key, default, extra.
    return ibis.schema({str(row[0]): _dtype(str(row[1]), row[2] == "YES") for row in rows})

