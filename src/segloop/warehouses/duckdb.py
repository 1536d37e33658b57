"""The embedded default warehouse: a DuckDB file in the workspace (or ``:memory:``).

``DuckDBConfig`` is its settings; ``DuckDBWarehouse`` runs in this process, so it reads
and writes through DuckDB's own connection where Ibis would take a slower path (pandas
imports, several statements, catalog queries), and it checkpoints in the background.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator

from segloop.errors import WarehouseError, WarehouseLockedError, database_message
from segloop.memory import duckdb_memory_limit, parse_size
from segloop.warehouses import ibis_compat
from segloop.warehouses.base import Warehouse, WarehouseClass
from segloop.warehouses.config import WarehouseConfig, quote_ident, workspace_path
from segloop.warehouses.exprs import sql_literal

if TYPE_CHECKING:  # pragma: no cover
    import ibis
    import ibis.expr.types as ir
    import pyarrow as pa

log = logging.getLogger("segloop")

SCAN_BATCH_ROWS = 122_880  # DuckDB's row group: Arrow batches its threads scan in parallel


class DuckDBConfig(WarehouseConfig):
    """The embedded default: a DuckDB file in the workspace (or ``:memory:``).

    DuckDB lets one process at a time open a file. ``lock_timeout`` is how long ``connect``
    waits, retrying, for another process (a collector loading, another run) to let go of
    it before failing; 0 fails at once. ``memory_limit`` bounds DuckDB's own memory
    (default: ``segloop.memory.duckdb_memory_limit``, a quarter of the machine's, at most
    3 GiB); beyond it DuckDB spills to ``temp_directory`` (in the workspace's ``.segloop/``).
    """

    type: Literal["duckdb"] = "duckdb"
    path: str = ".segloop/warehouse.duckdb"
    threads: int | None = None
    memory_limit: str | None = None  # None: segloop.memory.duckdb_memory_limit()
    temp_directory: str = ".segloop/duckdb_tmp"
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

    @field_validator("memory_limit", mode="before")
    @classmethod
    def _size(cls, value: object) -> object:
        """A size as segloop writes them (``2GB``, ``512MiB``, bytes), checked here so a typo
        is a config error naming the field, not DuckDB's error when the file opens."""
        if value is None:
            return None
        if not isinstance(value, str | int) or isinstance(value, bool):
            raise ValueError(f"`{value}` is not a size; write it like 512MB, 2GB or 2GiB")
        parse_size(value)
        return str(value)

    def describe(self) -> str:
        return f"duckdb file {self.path}"

    @classmethod
    def warehouse_class(cls) -> WarehouseClass:
        return DuckDBWarehouse

    def connect(self, root: Path) -> ibis.BaseBackend:
        import ibis

        ibis_compat.install()  # Ibis 12 on duckdb 2, also as Ibis's default backend
        if self.path == ":memory:":
            target = ":memory:"
        else:
            file = workspace_path(self.path, root)
            file.parent.mkdir(parents=True, exist_ok=True)
            target = str(file)
        kwargs: dict[str, Any] = {}
        if self.threads:
            kwargs["threads"] = self.threads
        kwargs["memory_limit"] = f"{parse_size(self.memory_limit)}B" if self.memory_limit else duckdb_memory_limit()
        if target != ":memory:":  # an in-memory database keeps DuckDB's own (./.tmp)
            spill = workspace_path(self.temp_directory, root)
            spill.parent.mkdir(parents=True, exist_ok=True)  # DuckDB creates the last level only
            kwargs["temp_directory"] = str(spill)
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
        # The pointer under it: one ^ (duckdb 1.x) or a run of them (duckdb 2).
        lines = [line[len("DESCRIBE "):] if set(line.strip()) == {"^"} and line.startswith(" " * 9) else line
                 for line in lines]
        try:
            fixed = type(exc)("\n".join(lines))
        except Exception:  # an exception type that takes other arguments: as it was
            raise exc from None
        raise fixed from exc
    # DESCRIBE's columns: column_name, column_type, null ('YES'/'NO'), key, default, extra.
    return ibis.schema({str(row[0]): _dtype(str(row[1]), row[2] == "YES") for row in rows})



# -- the warehouse ---------------------------------------------------------------------------


class DuckDBWarehouse(Warehouse):
    """DuckDB in this process: its own connection (``con.con``) where Ibis is slow."""

    BUILTIN_SCHEMAS: ClassVar[frozenset[str]] = frozenset({"main"})
    RAW_SQL_RETURNS_CURSOR: ClassVar[bool] = False
    REPLACES_IN_ONE_STATEMENT: ClassVar[bool] = True
    EMBEDDED: ClassVar[bool] = True
    UNNESTS_JSON: ClassVar[bool] = True
    APPEND_ROWS: ClassVar[int] = SCAN_BATCH_ROWS  # a partial row group is merged, re-compressed, logged
    # DuckDB's own statements that are not queries (`query` shows their result as it is).
    RAW_STATEMENTS: ClassVar[frozenset[str]] = frozenset({"describe", "show", "summarize", "pragma"})

    def list_tables(self, schema: str | None = None) -> list[str]:
        # What Ibis asks, without its three catalog queries (~3-100 ms; this ~1 ms).
        rows = self._fetch("SELECT DISTINCT table_name FROM information_schema.tables "
                           "WHERE table_catalog IN (current_database(), 'temp') "
                           f"AND table_schema = {sql_literal(schema or self.schema)}")
        return [str(row[0]) for row in rows]

    def _kinds_query(self, target: str) -> str | None:
        return f"{super()._kinds_query(target)} AND table_catalog = current_database()"

    def _fetch(self, query: str) -> list[tuple[Any, ...]]:
        # Every row, never fetchone(): duckdb 2 refuses other work on the connection (Ibis's
        # relations) while a result from execute() has not been read to its end.
        return list(self.raw.execute(query).fetchall())

    # -- reading ---------------------------------------------------------------------------

    def _table(self, name: str, target: str) -> ir.Table:
        if "." in target:  # `database.schema`: Ibis splits that
            return super()._table(name, target)
        return self._duckdb_table(name, target)

    def table_if_exists(self, name: str, schema: str | None = None) -> ir.Table | None:
        target = schema or self.schema
        if (target, name) not in self._wrote and target not in self._kinds and "." not in target:
            from duckdb import CatalogException

            try:  # one look-up instead of listing the schema
                return self._duckdb_table(name, target)
            except CatalogException:
                return None
        return super().table_if_exists(name, schema)

    def output_of_run(self, name: str, schema: str | None = None) -> ir.Table | None:
        # Right after the run, on its connection: what it wrote, known without a look-up.
        return self.written_table(name, schema)

    def _duckdb_table(self, name: str, schema: str) -> ir.Table:
        """``con.table`` on DuckDB, with column types parsed once per process (see ``describe``).

        Always DuckDB's own account of the columns, also for what this run just wrote: the
        schema Ibis infers for an expression can differ from what DuckDB stores (a sum of
        integers is int64 to Ibis, DECIMAL(38,0) in DuckDB).
        """
        import ibis.expr.operations as ops

        # Quoted for DuckDB itself (a test may give the connection another dialect).
        found = describe(self.raw, f"{quote_ident(schema)}.{quote_ident(name)}")
        if found.geospatial:  # Ibis loads DuckDB's spatial extension first
            return self.con.table(name, database=schema)
        return ops.DatabaseTable(name, schema=found, source=self.con,
                                 namespace=ops.Namespace(catalog=None, database=schema)).to_expr()

    def sql(self, query: str, dialect: str | None = None) -> ir.Table:
        if dialect:
            return super().sql(query, dialect)
        # The query's schema as Ibis finds it, types parsed once.
        return self.con.sql(query, schema=describe(self.raw, query))

    def count(self, expr: ir.Table) -> int:
        # Ibis's result path imports pandas (half a second per process) for one number;
        # and counting the query's SQL needs no new expression to build and compile.
        sql = f"SELECT count(*) FROM (\n{self.compile(expr)}\n) AS t"  # own lines: a query may end in a -- comment
        return int(self._fetch(sql)[0][0])

    def rows(self, expr: ir.Table) -> list[dict[str, Any]]:
        # Straight from the cursor: no Arrow conversion (~2 ms less per query).
        cursor = self.raw.execute(self.compile(expr))
        names = [column[0] for column in cursor.description]
        result = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        self.rows_fetched += len(result)
        return result

    def _arrow(self, expr: ir.Table, limit: int | None = None) -> pa.Table:
        # Ibis's DuckDB result path imports pandas (~0.5 s per process) even for Arrow.
        return _duckdb_to_arrow(self, expr, limit)

    def count_rows(self, name: str, schema: str | None = None) -> int:
        return int(self._fetch(f"SELECT count(*) FROM {self.qualified(name, schema or self.schema)}")[0][0])

    def preview_query(self, sql: str, limit: int | None) -> pa.Table:
        if not self._raw_statement(sql):
            return super().preview_query(sql, limit)
        relation = self.raw.sql(sql)
        return (relation.limit(limit) if limit is not None else relation).to_arrow_table()

    def stream_query(self, sql: str, limit: int | None) -> pa.RecordBatchReader:
        if not self._raw_statement(sql):
            return super().stream_query(sql, limit)
        relation = self.raw.sql(sql)
        return (relation.limit(limit) if limit is not None else relation).to_arrow_reader()

    def _batch_reader(self, expr: ir.Table, rows: int) -> Iterator[pa.RecordBatch]:
        # On a cursor of its own: DuckDB drops a connection's pending result when another
        # statement runs on that connection, and the stream just ends (no error), which is
        # what a node streaming its output back while it reads its input would hit.
        schema = expr.as_table().schema().to_pyarrow()
        cursor = self.raw.cursor()
        try:
            for batch in cursor.sql(self.compile(expr)).to_arrow_reader(rows):
                yield batch.cast(schema) if batch.schema != schema else batch
        finally:
            cursor.close()

    def _raw_statement(self, sql: str) -> bool:
        words = sql.split(None, 1)
        return bool(words) and words[0].lower() in self.RAW_STATEMENTS

    # -- writing ---------------------------------------------------------------------------

    def _replace_table_as(self, name: str, expr: ir.Table, target: str, count: bool,
                          kind: str | None) -> Any:
        # One statement whose result is the row count (Ibis would create, insert, drop and
        # rename: four statements plus a count query).
        sql = self.compile(expr)
        try:
            rows = self._fetch(f"CREATE OR REPLACE TABLE {self.qualified(name, target)} AS {sql}")
        except Exception as exc:
            raise WarehouseError(f"could not write table {target}.{name}: {database_message(exc)}") from exc
        return int(rows[0][0]) if rows else (self.count_rows(name, target) if count else None)

    def insert(self, name: str, obj: ir.Table | pa.Table | Any, schema: str | None = None) -> None:
        import pyarrow as pa

        if not isinstance(obj, pa.Table):
            super().insert(name, obj, schema)
            return
        raw = self.raw  # an Arrow table goes straight into DuckDB (no pandas)
        view = f"_segloop_insert_{id(obj):x}"
        raw.register(view, _in_scan_batches(obj))
        try:
            raw.execute(f"INSERT INTO {self.qualified(name, schema)} BY NAME SELECT * FROM {view}")
        finally:
            raw.unregister(view)

    def execute_atomically(self, statements: Sequence[str]) -> None:
        # DuckDB needs an explicit transaction (rolled back if any statement fails).
        self.raw_sql("BEGIN TRANSACTION")
        try:
            for statement in statements:
                self.raw_sql(statement)
        except Exception:
            self.raw_sql("ROLLBACK")
            raise
        self.raw_sql("COMMIT")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        raw = self.raw
        raw.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            raw.execute("ROLLBACK")
            raise
        raw.execute("COMMIT")

    def add_columns(self, table: str, adds: Sequence[str]) -> None:
        # One column per ALTER here; one transaction is ~3x faster than one at a time.
        self.execute_atomically([f"ALTER TABLE {table} {add}" for add in adds])

    def alter_column_type(self, table: str, column: str, sql_type: str, using: str) -> None:
        self.raw_sql(f"ALTER TABLE {table} ALTER COLUMN {column} SET DATA TYPE {sql_type}")

    def group_state_memory(self) -> tuple[int, int] | None:
        # fetchall, not fetchone: duckdb 2 blocks the connection until a result is read out.
        limit, threads = self.raw.execute(
            "SELECT current_setting('memory_limit'), current_setting('threads')").fetchall()[0]
        return parse_size(str(limit)), max(1, int(threads))

    def lower_memory_limit(self, limit: int) -> None:
        config = self.config
        allowed = parse_size(getattr(config, "memory_limit", None) or duckdb_memory_limit())
        if limit < allowed:
            self.raw.execute(f"SET memory_limit = '{int(limit)}B'")

    def checkpoint_in_background(self) -> None:
        """Start writing what this connection wrote into the database file now.

        DuckDB logs writes ahead and folds them into the file at a checkpoint, which a
        connection does when it closes: ~20-30 ms even for a small pipeline, during which
        nothing else happens. Started in a background thread (on its own cursor; DuckDB
        releases Python's lock and lets reads go on meanwhile) when the run has written
        everything, it overlaps with the report and the run history. ``close`` waits for
        it. A checkpoint that cannot run now (another write in progress) is left to close.
        """
        if self._checkpoint is not None:
            return
        cursor = self.raw.cursor()

        def checkpoint() -> None:
            try:
                cursor.execute("CHECKPOINT")
            except Exception as exc:
                log.debug("background checkpoint not done (closing does it): %s", exc)
            finally:
                cursor.close()

        self._checkpoint = threading.Thread(target=checkpoint, name="segloop-checkpoint", daemon=True)
        self._checkpoint.start()


def _in_scan_batches(table: pa.Table) -> pa.Table:
    """``table`` as record batches of ``SCAN_BATCH_ROWS`` rows (the last one: the rest).

    DuckDB's threads scan an Arrow table one record batch each: a table of one big batch
    (what ``pa.table`` builds) is stored mostly by one thread, the same rows in row-group
    sized batches by all of them (~1.3x less wall time on two cores for the demo's tables).
    Each batch but the last fills a row group exactly: a smaller one (where the table's
    chunks end, e.g. after ``pa.concat_tables``) is merged with its neighbours and compressed
    again. Batches are slices of the table (no copy) except those across its chunks' ends
    (one batch's rows copied).
    """
    import pyarrow as pa

    batches = table.to_batches()
    if all(batch.num_rows == SCAN_BATCH_ROWS for batch in batches[:-1]) and (
            not batches or batches[-1].num_rows <= SCAN_BATCH_ROWS):
        return table
    whole = []
    for start in range(0, table.num_rows, SCAN_BATCH_ROWS):
        rows = table.slice(start, SCAN_BATCH_ROWS)
        parts = rows.to_batches()
        whole.append(parts[0] if len(parts) == 1 else rows.combine_chunks().to_batches()[0])
    return pa.Table.from_batches(whole, schema=table.schema)


def _duckdb_to_arrow(warehouse: DuckDBWarehouse, expr: ir.Table, limit: int | None) -> pa.Table:
    """``expr.to_pyarrow(limit=limit)`` on DuckDB, with Ibis's own type mapping but no pandas.

    The SQL comes from ``Warehouse.compile`` (kept for repeated expressions: the report
    asks the same aggregates run after run).
    """
    import pyarrow as pa
    from ibis.formats.pyarrow import PyArrowData

    class NullColumnsData(PyArrowData):  # what ibis.backends.duckdb.converter adds
        @classmethod
        def convert_column(cls, column: pa.Array, dtype: Any) -> pa.Array:
            return pa.nulls(len(column)) if dtype.is_null() else super().convert_column(column, dtype)

    table_expr = expr.as_table()
    if limit is not None:
        table_expr = table_expr.limit(limit)
    if table_expr.schema().geospatial:  # Ibis loads DuckDB's spatial extension first
        return expr.to_pyarrow(limit=limit)
    table = warehouse.raw.sql(warehouse.compile(table_expr)).to_arrow_table()
    return expr.__pyarrow_result__(table, data_mapper=NullColumnsData)
