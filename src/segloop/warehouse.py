"""Warehouse connections through Ibis: an embedded DuckDB file by default, PostgreSQL and more.

A ``Warehouse`` wraps one Ibis backend and gives the engine and operators what they need:
read tables, run SQL, materialize node outputs in the output schema, and stream results
to Python as bounded Arrow batches (counting rows fetched, so pushdown can be checked).
Each backend's settings are a frozen pydantic model chosen by its ``type``; those live in
``segloop.warehouses`` (one module per backend) and are re-exported here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from segloop.errors import WarehouseError, database_message
from segloop.warehouses import (
    SQL_DIALECTS,
    WAREHOUSE_TYPES,
    AnyWarehouseConfig,
    BigQueryConfig,
    DuckDBConfig,
    PostgresConfig,
    PySparkConfig,
    SnowflakeConfig,
    WarehouseConfig,
)

log = logging.getLogger("segloop")

# (backend, expression) -> SQL of recently compiled expressions; see Warehouse.compile.
_COMPILED: dict[tuple[str, Any], str] = {}
_COMPILED_MAX = 64
_COMPILED_LOCK = threading.Lock()
# The kind of a relation that was not looked up: ``CREATE OR REPLACE`` finds out (DuckDB).
UNLISTED = "unlisted"

if TYPE_CHECKING:  # pragma: no cover
    import ibis
    import ibis.expr.types as ir
    import pyarrow as pa

    from segloop.sql_cache import SqlCache


class Warehouse:
    """One open connection to a warehouse, with the operations segloop needs."""

    STREAM_BATCH_ROWS: ClassVar[int] = 50_000

    def __init__(
        self,
        con: ibis.BaseBackend,
        config: WarehouseConfig,
        name: str = "default",
        create_schema: bool = True,
    ):
        self.con = con
        self.config = config
        self.name = name
        self.schema = config.output_schema
        self.rows_fetched = 0  # rows moved into Python; lets tests check pushdown
        self._schemas_ready: set[str] = set()  # schemas known to exist (one look-up each)
        # schema -> {name: "table" | "view"}: one catalog query per schema, kept up to date by
        # this connection's own writes (see relation_kind).
        self._kinds: dict[str, dict[str, str]] = {}
        self._wrote: set[tuple[str, str]] = set()  # (schema, name) this connection wrote; see written_table
        self.sql_cache: SqlCache | None = None  # compiled SQL on disk; the engine sets the workspace's
        self._checkpoint: threading.Thread | None = None  # see checkpoint_in_background
        if create_schema:
            self._ensure_schema(self.schema)

    @classmethod
    def connect(
        cls,
        config: WarehouseConfig,
        root: Path | str = ".",
        name: str = "default",
        create_schema: bool = True,
    ) -> Warehouse:
        """Open ``config``'s warehouse; ``create_schema=False`` only reads (check-warehouse)."""
        return cls(config.connect(Path(root)), config, name, create_schema)

    @classmethod
    def duckdb(cls, path: str | Path = ":memory:", schema: str | None = None) -> Warehouse:
        """A DuckDB warehouse, mostly for tests and notebooks."""
        config = DuckDBConfig(path=str(path), schema=schema)
        return cls.connect(config, Path("."))

    # -- introspection -------------------------------------------------------------------

    @property
    def backend(self) -> str:
        """The Ibis backend name: duckdb, postgres, snowflake, bigquery, pyspark."""
        return str(self.con.name)

    @property
    def dialect(self) -> str:
        """The sqlglot dialect of the warehouse's SQL (``spark`` for the pyspark backend)."""
        return SQL_DIALECTS.get(self.backend, self.backend)

    def _ensure_schema(self, schema: str) -> None:
        if (self.backend == "duckdb" and schema == "main") or schema in self._schemas_ready:
            return
        try:
            if schema not in self.list_schemas():
                self.con.create_database(schema, force=True)  # type: ignore[attr-defined]
            self._schemas_ready.add(schema)
        except Exception as exc:
            raise WarehouseError(
                f"cannot create schema {schema} in warehouse `{self.name}` ({self.config.describe()}): "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}. "
                "Create it yourself, or grant segloop's user the right to create schemas, or set "
                "`schema:` of the warehouse to one it may write to."
            ) from exc

    def ensure_schema(self, schema: str) -> None:
        self._ensure_schema(schema)

    def quote(self, ident: str) -> str:
        """An identifier quoted for this warehouse's dialect (backticks on Spark and BigQuery)."""
        import sqlglot.expressions as exp

        return exp.to_identifier(ident, quoted=True).sql(dialect=self.dialect)

    def qualified(self, name: str, schema: str | None = None) -> str:
        return f"{self.quote(schema or self.schema)}.{self.quote(name)}"

    def list_tables(self, schema: str | None = None) -> list[str]:
        """Names of the tables and views in ``schema`` (default: the output schema)."""
        target = schema or self.schema
        if self.backend == "duckdb":
            # What Ibis asks, without its three catalog queries (~3-100 ms; this ~1 ms).
            rows = self._fetch("SELECT DISTINCT table_name FROM information_schema.tables "
                               "WHERE table_catalog IN (current_database(), 'temp') "
                               f"AND table_schema = {_literal(target)}")
            return [str(row[0]) for row in rows]
        return list(self.con.list_tables(database=target))

    def list_schemas(self) -> list[str]:
        return list(self.con.list_databases())

    def has_table(self, name: str, schema: str | None = None) -> bool:
        """Whether a table or view of that name exists."""
        try:
            return name in self.list_tables(schema)
        except Exception:
            return False

    def relation_kind(self, name: str, schema: str | None = None, fresh: bool = False) -> str | None:
        """``"table"``, ``"view"`` or None (nothing of that name) in ``schema``.

        Replacing a table by a view (or back) needs the right DROP on every warehouse:
        ``DROP TABLE`` of a view (and ``CREATE OR REPLACE VIEW`` over a table) is an error.
        The first call per schema lists the whole schema in one catalog query; this
        connection's own writes keep that listing current, so a run asks the catalog once
        instead of once per node (``raw_sql`` forgets it: any SQL may create or drop).
        ``fresh=True`` asks the catalog again (after a write failed on a stale listing).
        """
        target = schema or self.schema
        kinds = None if fresh else self._kinds.get(target)
        if kinds is None:
            kinds = self._load_kinds(target)
        if kinds is not None:
            return kinds.get(name)
        return self._relation_kind_of(name, target)

    def relations(self, schema: str | None = None) -> dict[str, str]:
        """``{name: "table" | "view"}`` of ``schema`` (default: the output schema)."""
        target = schema or self.schema
        kinds = self._kinds.get(target)
        if kinds is None:
            kinds = self._load_kinds(target)
        if kinds is None:
            return dict.fromkeys(self.list_tables(target), "table")
        return dict(kinds)

    def _load_kinds(self, target: str) -> dict[str, str] | None:
        """One catalog query for every table and view of ``target``; None where there is none."""
        backend = self.backend
        if backend == "pyspark":  # the metastore lists views apart (see _relation_kind_of)
            return None
        if backend == "bigquery":
            query = f"SELECT table_name, table_type FROM {self.quote(target)}.INFORMATION_SCHEMA.TABLES"
        else:
            query = ("SELECT table_name, table_type FROM information_schema.tables "
                     f"WHERE table_schema = {_literal(target)}")
            if backend == "duckdb":
                query += " AND table_catalog = current_database()"
        try:
            rows = self._fetch(query)
        except Exception:  # no information_schema: _relation_kind_of finds names one by one
            return None
        kinds = {str(row[0]): "view" if "VIEW" in str(row[1]).upper() else "table" for row in rows}
        self._kinds[target] = kinds
        return kinds

    def _noted(self, name: str, schema: str, kind: str | None) -> None:
        """Keep the listing of ``schema`` current after this connection wrote ``name``."""
        if kind is None:
            self._wrote.discard((schema, name))
        else:
            self._wrote.add((schema, name))
        kinds = self._kinds.get(schema)
        if kinds is None:
            return
        if kind is None:
            kinds.pop(name, None)
        else:
            kinds[name] = kind

    def _relation_kind_of(self, name: str, target: str) -> str | None:
        """The kind of one name where no listing exists: Spark's metastore lists views apart,
        and a warehouse without the information_schema listing still finds names."""
        if self.backend == "pyspark":
            try:
                rows = self.raw_sql(f"SHOW VIEWS IN {self.quote(target)} LIKE {_literal(name)}").collect()
            except Exception:
                rows = []
            # The metastore keeps names in lower case.
            if any(row["viewName"].lower() == name.lower() and not row["isTemporary"] for row in rows):
                return "view"
        return "table" if self.has_table(name, target) else None

    def _fetch(self, query: str) -> list[tuple[Any, ...]]:
        """Rows of a small catalog query, without Ibis compiling (or pandas)."""
        if self.backend == "duckdb":
            return list(self.con.con.execute(query).fetchall())  # type: ignore[attr-defined]
        result = self.con.raw_sql(query)
        try:
            rows = result.fetchall() if hasattr(result, "fetchall") else list(result)
        finally:
            close = getattr(result, "close", None)
            if callable(close):
                close()
        return [tuple(row) for row in rows]

    # -- reading -------------------------------------------------------------------------

    def table(self, name: str, schema: str | None = None) -> ir.Table:
        try:
            target = schema or self.schema
            if self.backend == "duckdb" and "." not in target:  # not `database.schema`: Ibis splits that
                return self._duckdb_table(name, target)
            return self.con.table(name, database=target)
        except Exception as exc:
            raise WarehouseError(
                f"table {schema or self.schema}.{name} not found in warehouse `{self.name}`: "
                f"{type(exc).__name__}"
            ) from exc

    def written_table(self, name: str, schema: str | None = None) -> ir.Table | None:
        """``table(name)`` when this connection wrote it (DuckDB; None otherwise): a run's
        report shows what the run wrote, not what an earlier run left behind."""
        target = schema or self.schema
        return self.table(name, target) if (target, name) in self._wrote else None

    def table_if_exists(self, name: str, schema: str | None = None) -> ir.Table | None:
        """``table(name)``, or None when there is no table or view of that name."""
        target = schema or self.schema
        if (target, name) in self._wrote:
            return self.table(name, target)
        if self.backend == "duckdb" and target not in self._kinds and "." not in target:
            from duckdb import CatalogException

            try:  # one look-up instead of listing the schema
                return self._duckdb_table(name, target)
            except CatalogException:
                return None
        return self.table(name, target) if name in self.relations(target) else None

    def _duckdb_table(self, name: str, schema: str) -> ir.Table:
        """``con.table`` on DuckDB, with column types parsed once per process (see ``describe``).

        Always DuckDB's own account of the columns, also for what this run just wrote: the
        schema Ibis infers for an expression can differ from what DuckDB stores (a sum of
        integers is int64 to Ibis, DECIMAL(38,0) in DuckDB).
        """
        import ibis.expr.operations as ops

        from segloop.warehouses.base import quote_ident
        from segloop.warehouses.duckdb import describe

        # Quoted for DuckDB itself (a test may give the connection another dialect).
        found = describe(self.con.con, f"{quote_ident(schema)}.{quote_ident(name)}")  # type: ignore[attr-defined]
        if found.geospatial:  # Ibis loads DuckDB's spatial extension first
            return self.con.table(name, database=schema)
        return ops.DatabaseTable(name, schema=found, source=self.con,
                                 namespace=ops.Namespace(catalog=None, database=schema)).to_expr()

    def sql(self, query: str, dialect: str | None = None) -> ir.Table:
        """An Ibis expression over a SQL query (nothing runs until it is materialized)."""
        if dialect:
            return self.con.sql(query, dialect=dialect)
        if self.backend == "duckdb":  # the query's schema as Ibis finds it, types parsed once
            from segloop.warehouses.duckdb import describe

            return self.con.sql(query, schema=describe(self.con.con, query))  # type: ignore[attr-defined]
        return self.con.sql(query)

    def query(self, query: str, schema: ibis.Schema) -> ir.Table:
        """An Ibis expression over a SQL query whose schema is known (no look-up)."""
        return self.con.sql(query, schema=schema)

    def raw_sql(self, query: str) -> Any:
        """Run any SQL; the cached catalog listings are dropped (it may create or drop anything)."""
        self._kinds.clear()
        return self._raw_sql(query)

    def _raw_sql(self, query: str) -> Any:
        """Run SQL whose effect on the catalog the caller notes itself."""
        result = self.con.raw_sql(query)
        # Some backends (postgres) hand back an open cursor; close it so locks are released.
        close = getattr(result, "close", None)
        if callable(close) and self.backend not in ("duckdb", "pyspark"):
            close()
        return result

    def count(self, expr: ir.Table) -> int:
        """Rows of ``expr``, counted in the warehouse (one number crosses the wire)."""
        if self.backend == "duckdb":
            # Ibis's result path imports pandas (half a second per process) for one number;
            # and counting the query's SQL needs no new expression to build and compile.
            sql = f"SELECT count(*) FROM (\n{self.compile(expr)}\n) AS t"  # own lines: a query may end in a -- comment
            row = self.con.con.execute(sql).fetchone()  # type: ignore[attr-defined]
            return int(row[0]) if row else 0
        return int(self.con.to_pyarrow(expr.count()).as_py())  # this connection, always

    def scalar(self, expr: ir.Scalar) -> Any:
        """The value of a one-value expression (``t.ts.max()``) as a Python object.

        Instead of ``expr.execute()``/``to_pyarrow()``, whose DuckDB path imports pandas
        (0.5-0.75 s in a fresh process) for one value.
        """
        table = self._arrow(expr.as_table())  # one value: not counted in rows_fetched
        return table.column(0)[0].as_py() if table.num_rows else None

    def rows(self, expr: ir.Table) -> list[dict[str, Any]]:
        """A small result (an aggregate) as Python dicts; counted in ``rows_fetched``.

        On DuckDB straight from the cursor: no Arrow conversion (~2 ms less per query).
        """
        if self.backend != "duckdb":
            return list(self.to_arrow(expr).to_pylist())
        cursor = self.con.con.execute(self.compile(expr))  # type: ignore[attr-defined]
        names = [column[0] for column in cursor.description]
        result = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        self.rows_fetched += len(result)
        return result

    def to_arrow(self, expr: ir.Table, limit: int | None = None) -> pa.Table:
        """Fetch a (small) result into Python; counted in ``rows_fetched``."""
        table = self._arrow(expr, limit)
        self.rows_fetched += table.num_rows
        return table

    def _arrow(self, expr: ir.Table, limit: int | None = None) -> pa.Table:
        if self.backend == "duckdb":
            # Ibis's DuckDB result path imports pandas (~0.5 s per process) even for Arrow.
            return _duckdb_to_arrow(self, expr, limit)
        return self.con.to_pyarrow(expr, limit=limit)  # this connection, always

    def to_batches(self, expr: ir.Table, batch_rows: int | None = None) -> Iterator[pa.RecordBatch]:
        """Stream a result in bounded Arrow record batches; never holds the whole result."""
        reader = expr.to_pyarrow_batches(chunk_size=batch_rows or self.STREAM_BATCH_ROWS)
        for batch in reader:
            self.rows_fetched += batch.num_rows
            yield batch

    # -- writing -------------------------------------------------------------------------

    def create_table(
        self,
        name: str,
        obj: ir.Table | pa.Table | Any,
        schema: str | None = None,
        overwrite: bool = True,
    ) -> ir.Table:
        """Materialize an expression (runs inside the warehouse) or an Arrow table."""
        target = schema or self.schema
        self._ensure_schema(target)
        try:
            if self.backend == "postgres" and is_arrow_table(obj):
                from segloop.warehouses.postgres import copy_arrow

                if copy_arrow(self.con, obj, name, target, overwrite):
                    self._noted(name, target, "table")
                    return self.con.table(name, database=target)
            table = self.con.create_table(name, obj, database=target, overwrite=overwrite)
        except Exception as exc:
            self._kinds.pop(target, None)  # whatever happened, ask the catalog next time
            raise WarehouseError(f"could not write table {target}.{name}: {exc}") from exc
        self._noted(name, target, "table")
        return table

    def replace_table(
        self, name: str, obj: ir.Table | pa.Table | Any, schema: str | None = None, count: bool = True
    ) -> int | None:
        """Materialize ``obj`` as table ``name`` (replacing a table or view); returns its rows.

        On DuckDB an expression becomes one ``CREATE OR REPLACE TABLE ... AS`` whose result
        is the row count (Ibis would create, insert, drop and rename: four statements plus
        a count query); on PostgreSQL one transaction of ``CREATE TABLE AS`` (its row count
        is the count) and a rename. There a table that views depend on is refilled in place
        (same columns) or dropped with them (see ``segloop.warehouses.postgres``).
        """
        target = schema or self.schema
        self._ensure_schema(target)
        query = not is_arrow_table(obj) and _is_ibis_table(obj)
        listed, kind = self._kind_to_replace(name, target, one_statement=query)
        try:
            rows = self._replace_table(name, obj, target, count, kind)
        except WarehouseError:
            # A listing from earlier in this connection's life may be out of date (another
            # process replaced the object since), or there was none (DuckDB, see
            # _kind_to_replace): when the catalog now says otherwise, once more.
            if not listed or not _retry(kind, actual := self.relation_kind(name, target, fresh=True), "table"):
                raise
            rows = self._replace_table(name, obj, target, count, actual)
        self._noted(name, target, "table")
        return rows

    def _kind_to_replace(self, name: str, target: str, one_statement: bool = True) -> tuple[bool, str | None]:
        """(whether a failed write should ask the catalog again, the kind of ``name`` now).

        DuckDB replaces a table by a table and a view by a view in one statement (``CREATE
        OR REPLACE``), and says so when the other kind is in the way; so there, without a
        listing at hand, a write that is one such statement is tried first and the catalog
        only asked when it fails (a catalog query costs a few ms of a small pipeline's run).
        Elsewhere, and for Arrow data (Ibis writes it in several steps that could leave a
        half-done table behind), the listing says which DROP is needed first.
        """
        if self.backend == "duckdb" and target not in self._kinds and one_statement:
            return True, UNLISTED
        return target in self._kinds, self.relation_kind(name, target)

    def _replace_table(self, name: str, obj: Any, target: str, count: bool, kind: str | None) -> int | None:
        if kind == "view":
            try:
                self._drop(name, target, "view")
            except Exception as exc:
                raise WarehouseError(f"could not replace view {target}.{name} by a table: {database_message(exc)}. "
                                     "Drop the views that read it, or keep this node `materialize: view`") from exc
        expr = not is_arrow_table(obj) and _is_ibis_table(obj)
        if expr and self.backend == "duckdb":
            sql = self.compile(obj)
            try:
                row = self.con.con.execute(  # type: ignore[attr-defined]
                    f"CREATE OR REPLACE TABLE {self.qualified(name, target)} AS {sql}").fetchone()
            except Exception as exc:
                raise WarehouseError(f"could not write table {target}.{name}: {database_message(exc)}") from exc
            return int(row[0]) if row else (self.count_rows(name, target) if count else None)
        if expr and self.backend == "postgres":
            from segloop.warehouses.postgres import (
                dependent_views,
                replace_table_as,
                replace_under_views,
            )

            try:
                if kind == "table" and dependent_views(self.con, name, target):
                    if replace_under_views(self.con, self.compile(obj), obj.schema(), name, target):
                        self._kinds.pop(target, None)  # views were dropped with it (CASCADE)
                    return self.count_rows(name, target) if count else None
                return replace_table_as(self.con, self.compile(obj), name, target)
            except Exception as exc:
                raise WarehouseError(f"could not write table {target}.{name}: {database_message(exc)}") from exc
        self.create_table(name, obj, target)
        return self.count_rows(name, target) if count else None

    def replace_view(self, name: str, expr: ir.Table, schema: str | None = None) -> None:
        """Materialize an expression as view ``name`` (replacing a table or view of that name).

        Written as plain ``CREATE [OR REPLACE] VIEW schema.name AS <query>``, so the view is
        persistent on every warehouse (Ibis makes temporary views on Spark) and readable by a
        person. PostgreSQL cannot change a view's columns in place, so there the old view is
        dropped first when ``OR REPLACE`` fails.
        """
        target = schema or self.schema
        self._ensure_schema(target)
        if _has_memtable(expr):
            raise WarehouseError(
                f"view {target}.{name} would read data held in this Python process; "
                "only a query over warehouse tables can be a view (use `materialize: table`)"
            )
        sql = self.compile(expr)
        listed, kind = self._kind_to_replace(name, target)
        try:
            self._replace_view(name, sql, target, kind)
        except WarehouseError:  # as in replace_table: once more when the listing was out of date
            if not listed or not _retry(kind, actual := self.relation_kind(name, target, fresh=True), "view"):
                raise
            self._replace_view(name, sql, target, actual)
        self._noted(name, target, "view")

    def _replace_view(self, name: str, sql: str, target: str, kind: str | None) -> None:
        qualified = self.qualified(name, target)
        try:
            if kind == "table":
                self._drop(name, target, "table")
            if kind in ("view", UNLISTED):
                try:
                    self._raw_sql(f"CREATE OR REPLACE VIEW {qualified} AS {sql}")
                    return
                except Exception:
                    if self.backend != "postgres":
                        raise
                    self._drop(name, target, "view")
            self._raw_sql(f"CREATE VIEW {qualified} AS {sql}")
        except WarehouseError:
            raise
        except Exception as exc:
            raise WarehouseError(
                f"could not create view {target}.{name}: {database_message(exc)}. segloop's user needs "
                "CREATE on the output schema; if other views depend on it, drop them or make this "
                "node `materialize: table`"
            ) from exc

    def _drop(self, name: str, schema: str, kind: str) -> None:
        """Drop a table or view to put the other kind in its place.

        PostgreSQL binds views to what they read, so there the views of later nodes that
        read this one are dropped with it (``CASCADE``) and logged: they come back when
        their nodes run. Other warehouses resolve a view's names when it is read.
        """
        if self.backend != "postgres":
            if kind == "view":
                self.drop_view(name, schema)
            else:
                self.drop_table(name, schema)
            return
        from segloop.warehouses.postgres import dependent_views

        dropped = dependent_views(self.con, name, schema)
        self._raw_sql(f"DROP {'VIEW' if kind == 'view' else 'TABLE'} IF EXISTS {self.qualified(name, schema)} CASCADE")
        self._noted(name, schema, None)
        if dropped:
            self._kinds.pop(schema, None)
            log.warning("%s.%s is replaced; the views reading it were dropped with it and come back when "
                        "their nodes run: %s", schema, name, ", ".join(dropped))

    def compile(self, expr: ir.Expr) -> str:
        """The SQL of an expression in this warehouse's dialect.

        Compiling is the slowest step in Python (~20 ms for the RFM query), and a
        scheduler or the web UI builds the same expressions run after run; Ibis
        expressions compare by structure (reading the same tables with the same
        columns), so the SQL is kept for the last few of them; with ``sql_cache`` set
        (engine runs), also on disk for the next process (see ``segloop.sql_cache``).
        """
        op = expr.op()
        if type(op).__name__ == "SQLQueryResult" and getattr(op.source, "name", None) == self.backend:
            # A query in this warehouse's SQL is its own SQL (Ibis would re-format it); without
            # a final `;`, so that it can be wrapped (CREATE ... AS, count).
            return str(op.query).strip().rstrip(";").rstrip()
        hooks = getattr(self.con, "_run_pre_execute_hooks", None)
        if callable(hooks):  # registers in-memory tables the query reads
            hooks(expr)
        if _has_memtable(expr):  # unique names and data held in Python: nothing to reuse
            return str(self.con.compile(expr))
        key = (self.backend, expr.op())
        sql = _COMPILED.get(key)
        if sql is None:
            if self.sql_cache is not None:  # a fresh process: the SQL of an earlier run's compile
                sql = self.sql_cache.compile(key[1], lambda: str(self.con.compile(expr)))
            else:
                sql = str(self.con.compile(expr))
            with _COMPILED_LOCK:  # runs of the scheduler and the UI share it from threads
                _COMPILED[key] = sql
                while len(_COMPILED) > _COMPILED_MAX:
                    del _COMPILED[next(iter(_COMPILED))]
        return sql

    def count_rows(self, name: str, schema: str | None = None) -> int:
        """Rows of a table or view, counted in the warehouse."""
        target = schema or self.schema
        if self.backend == "duckdb":
            row = self.con.con.execute(f"SELECT count(*) FROM {self.qualified(name, target)}").fetchone()  # type: ignore[attr-defined]
            return int(row[0]) if row else 0
        return self.count(self.con.table(name, database=target))

    def insert(self, name: str, obj: ir.Table | pa.Table | Any, schema: str | None = None) -> None:
        """Append rows; an Arrow table goes straight into DuckDB (no pandas) or PostgreSQL (COPY)."""
        import pyarrow as pa

        if self.dialect == "duckdb" and isinstance(obj, pa.Table):
            raw = self.con.con  # the duckdb connection under Ibis
            view = f"_segloop_insert_{id(obj):x}"
            raw.register(view, obj)
            try:
                raw.execute(f"INSERT INTO {self.qualified(name, schema)} BY NAME SELECT * FROM {view}")
            finally:
                raw.unregister(view)
            return
        if self.backend == "postgres" and isinstance(obj, pa.Table):
            from segloop.warehouses.postgres import copy_insert

            if copy_insert(self.con, obj, name, schema or self.schema):
                return
        self.con.insert(name, obj, database=schema or self.schema)

    def drop_table(self, name: str, schema: str | None = None) -> None:
        self.con.drop_table(name, database=schema or self.schema, force=True)
        self._noted(name, schema or self.schema, None)

    def drop_view(self, name: str, schema: str | None = None) -> None:
        self._raw_sql(f"DROP VIEW IF EXISTS {self.qualified(name, schema)}")
        self._noted(name, schema or self.schema, None)

    def checkpoint_in_background(self) -> None:
        """DuckDB: start writing what this connection wrote into the database file now.

        DuckDB logs writes ahead and folds them into the file at a checkpoint, which a
        connection does when it closes: ~20-30 ms even for a small pipeline, during which
        nothing else happens. Started in a background thread (on its own cursor; DuckDB
        releases Python's lock and lets reads go on meanwhile) when the run has written
        everything, it overlaps with the report and the run history. ``close`` waits for
        it. A checkpoint that cannot run now (another write in progress) is left to close.
        """
        if self.backend != "duckdb" or self._checkpoint is not None:
            return
        cursor = self.con.con.cursor()  # type: ignore[attr-defined]

        def checkpoint() -> None:
            try:
                cursor.execute("CHECKPOINT")
            except Exception as exc:
                log.debug("background checkpoint not done (closing does it): %s", exc)
            finally:
                cursor.close()

        self._checkpoint = threading.Thread(target=checkpoint, name="segloop-checkpoint", daemon=True)
        self._checkpoint.start()

    def close(self) -> None:
        if self._checkpoint is not None:
            self._checkpoint.join()
            self._checkpoint = None
        if self.backend == "pyspark":
            # The Spark session lives as long as the process: other connections in this
            # process share it (getOrCreate), and an in-memory catalog would be lost.
            return
        disconnect = getattr(self.con, "disconnect", None)
        if callable(disconnect):
            disconnect()

    def __enter__(self) -> Warehouse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()



def is_arrow_table(obj: object) -> bool:
    return type(obj).__module__.startswith("pyarrow") and type(obj).__name__ == "Table"


def _duckdb_to_arrow(warehouse: Warehouse, expr: ir.Table, limit: int | None) -> pa.Table:
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
    table = warehouse.con.con.sql(warehouse.compile(table_expr)).to_arrow_table()  # type: ignore[attr-defined]
    return expr.__pyarrow_result__(table, data_mapper=NullColumnsData)


def _is_ibis_table(obj: object) -> bool:
    return type(obj).__module__.startswith("ibis.") and hasattr(obj, "op")


def _has_memtable(expr: ir.Expr) -> bool:
    import ibis.expr.operations as ops

    return bool(expr.op().find(ops.InMemoryTable))


def _retry(kind: str | None, actual: str | None, writing: str) -> bool:
    """Whether a write that failed is worth a second try: the catalog now tells another
    story than the one it was written for. Without a listing (UNLISTED: DuckDB's one
    statement), only when the other kind of object was in the way; any other failure
    (a bad query, an interrupted one) is not run twice."""
    if kind == UNLISTED:
        return actual is not None and actual != writing
    return actual != kind


def _literal(text: str) -> str:
    """A SQL string literal (names segloop builds; quotes doubled all the same)."""
    return "'" + text.replace("'", "''") + "'"



__all__ = [
    "WAREHOUSE_TYPES",
    "AnyWarehouseConfig",
    "BigQueryConfig",
    "DuckDBConfig",
    "PostgresConfig",
    "PySparkConfig",
    "SnowflakeConfig",
    "Warehouse",
    "WarehouseConfig",
]
