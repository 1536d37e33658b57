"""The generic warehouse connection through Ibis; each backend's module subclasses it.

A ``Warehouse`` wraps one Ibis backend and gives the engine and operators what they need:
read tables, run SQL, materialize node outputs in the output schema, and stream results
to Python as bounded Arrow batches (counting rows fetched, so pushdown can be checked).
What differs between backends is declared by each backend's subclass (``DuckDBWarehouse``
in ``warehouses/duckdb.py`` and so on): capability class attributes (``EMBEDDED``,
``HAS_VIEW_BINDING``, ...) and the few methods it overrides (catalog listing, replacing a
table, closing). The code here never asks which backend it runs on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias

from segloop.errors import WarehouseError, database_message
from segloop.warehouses import ibis_compat
from segloop.warehouses.catalog import Catalog
from segloop.warehouses.config import WarehouseConfig
from segloop.warehouses.exprs import (
    has_memtable,
    is_arrow_stream,
    is_arrow_table,
    is_ibis_table,
    md5,
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

    from segloop.warehouses.exprs import SqlStore


class Warehouse(Catalog):
    """One open connection to a warehouse, with the operations segloop needs.

    Subclasses declare what their backend can do with these class attributes and override
    the methods where it does a thing its own way; ``connect`` opens the subclass a
    config names (``WarehouseConfig.warehouse_class``).
    """

    STREAM_BATCH_ROWS: ClassVar[int] = 50_000
    DIALECT: ClassVar[str | None] = None  # sqlglot dialect; None: the Ibis backend's name
    BUILTIN_SCHEMAS: ClassVar[frozenset[str]] = frozenset()  # always there, never created
    RAW_SQL_RETURNS_CURSOR: ClassVar[bool] = True  # raw_sql hands back a cursor to close
    REPLACES_IN_ONE_STATEMENT: ClassVar[bool] = False  # CREATE OR REPLACE of either kind says what is in the way
    HAS_VIEW_BINDING: ClassVar[bool] = False  # views bind to what they read (CREATE OR REPLACE VIEW may fail)
    EMBEDDED: ClassVar[bool] = False  # runs in this process: raw cursors, settings, transactions
    UNNESTS_JSON: ClassVar[bool] = False  # JSON arrays unnest right: Ibis's SQL or unnest_json_objects (tested)
    APPEND_ROWS: ClassVar[int] = 1  # appends store best in multiples of this many rows (DuckDB: a row group)

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
        self.sql_cache: SqlStore | None = None  # compiled SQL on disk; the engine sets the workspace's
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
        """Open ``config``'s warehouse; ``create_schema=False`` only reads (check-warehouse).

        Called on ``Warehouse`` itself, it opens the subclass of ``config``'s backend.
        """
        ibis_compat.install()  # Ibis 12 on duckdb 2 / sqlglot 30 (warehouses/ibis_compat.py)
        kind = config.warehouse_class() if cls is Warehouse else cls
        return kind(config.connect(Path(root)), config, name, create_schema)

    @classmethod
    def duckdb(cls, path: str | Path = ":memory:", schema: str | None = None) -> Warehouse:
        """A DuckDB warehouse, mostly for tests and notebooks."""
        config = _config_of_type("duckdb")(path=str(path), schema=schema)
        return cls.connect(config, Path("."))

    # -- introspection -------------------------------------------------------------------

    @property
    def backend(self) -> str:
        """The Ibis backend name: duckdb, postgres, snowflake, bigquery, pyspark."""
        return str(self.con.name)

    @property
    def raw(self) -> Any:
        """The driver's own connection under Ibis (duckdb's, psycopg's), for what Ibis
        cannot do; callers use it only where a capability says how it behaves (``EMBEDDED``)."""
        return self.con.con  # type: ignore[attr-defined]

    @property
    def dialect(self) -> str:
        """The sqlglot dialect of the warehouse's SQL (``spark`` for the pyspark backend)."""
        return self.DIALECT or self.backend

    @property
    def node_sql_dialect(self) -> Any:
        """The sqlglot dialect a sql node's query is read in when it names none (``dialect:``).

        The warehouse's own, except where its ``"double quotes"`` make a string (Spark):
        there a variant that reads them as identifiers, as standard SQL and the other
        warehouses do, so the demo's queries mean the same everywhere.
        """
        return self.dialect

    def _ensure_schema(self, schema: str) -> None:
        if schema in self.BUILTIN_SCHEMAS or schema in self._schemas_ready:
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

    # -- reading -------------------------------------------------------------------------

    def table(self, name: str, schema: str | None = None) -> ir.Table:
        try:
            return self._table(name, schema or self.schema)
        except Exception as exc:
            raise WarehouseError(
                f"table {schema or self.schema}.{name} not found in warehouse `{self.name}`: "
                f"{type(exc).__name__}"
            ) from exc

    def _table(self, name: str, target: str) -> ir.Table:
        return self.con.table(name, database=target)

    def written_table(self, name: str, schema: str | None = None) -> ir.Table | None:
        """``table(name)`` when this connection wrote it (None otherwise): a run's
        report shows what the run wrote, not what an earlier run left behind."""
        target = schema or self.schema
        return self.table(name, target) if (target, name) in self._wrote else None

    def table_if_exists(self, name: str, schema: str | None = None) -> ir.Table | None:
        """``table(name)``, or None when there is no table or view of that name."""
        target = schema or self.schema
        if (target, name) in self._wrote:
            return self.table(name, target)
        return self.table(name, target) if name in self.relations(target) else None

    def output_of_run(self, name: str, schema: str | None = None) -> ir.Table | None:
        """What a run wrote as ``name``, asked on the connection it wrote with (the report)."""
        return self.table_if_exists(name, schema)

    def sql(self, query: str, dialect: str | None = None) -> ir.Table:
        """An Ibis expression over a SQL query (nothing runs until it is materialized)."""
        if dialect:
            return self.con.sql(query, dialect=dialect)
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
        if callable(close) and self.RAW_SQL_RETURNS_CURSOR:
            close()
        return result

    def count(self, expr: ir.Table) -> int:
        """Rows of ``expr``, counted in the warehouse (one number crosses the wire)."""
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

        """
        return list(self.to_arrow(expr).to_pylist())

    def to_arrow(self, expr: ir.Table, limit: int | None = None) -> pa.Table:
        """Fetch a (small) result into Python; counted in ``rows_fetched``."""
        table = self._arrow(expr, limit)
        self.rows_fetched += table.num_rows
        return table

    def _arrow(self, expr: ir.Table, limit: int | None = None) -> pa.Table:
        return self.con.to_pyarrow(expr, limit=limit)  # this connection, always

    def preview_query(self, sql: str, limit: int | None) -> pa.Table:
        """The rows of a user's query (``segloop query``), at most ``limit``; counted."""
        return self.to_arrow(self.sql(sql), limit=limit)

    def stream_query(self, sql: str, limit: int | None) -> pa.RecordBatchReader:
        """The rows of a user's query as a stream of Arrow batches (exports of any size)."""
        expr = self.sql(sql)
        return (expr.limit(limit) if limit is not None else expr).to_pyarrow_batches()

    def md5_hex(self, value: ir.StringValue) -> ir.StringValue:
        """The MD5 of a string as 32 hex digits, computed in the warehouse."""
        return md5(value)

    def key_hash(self, key: ir.Value, salt: str = "") -> ir.StringValue:
        """``md5(salt + ":" + key)`` as 32 hex digits, in the warehouse: the hash behind a sample
        by key (``hash_sample``, clusters' training sample, a holdout group). ``key`` is read
        as text; NULL stays NULL. The rule and its Python twin: ``warehouses/sampling.py``."""
        import ibis

        return self.md5_hex(ibis.literal(f"{salt}:").concat(key.cast("string")))

    def hash_sample(self, expr: ir.Table, key: str, share: float, salt: str = "") -> ir.Table:
        """The rows of ``expr`` whose ``key`` hashes into the first ``share`` of the range: a
        sample chosen in the warehouse, the same on every run, engine and row order.

        For training on a sample when all rows do not fit in ``memory_limit``: only the
        sample crosses into Python. The rule and its Python twin are in
        ``warehouses/sampling.py`` (md5 of ``salt:key``, through ``md5_hex``); rows with a
        NULL key are never sampled; ``share >= 1`` is ``expr`` itself (every row).
        """
        import ibis

        from segloop.warehouses.sampling import sample_filter

        if share >= 1:
            return expr
        if share <= 0:
            return expr.filter(ibis.literal(False))
        return expr.filter(sample_filter(self.key_hash(expr[key], salt), share))

    def to_batches(self, expr: ir.Table, batch_rows: int | None = None) -> Iterator[pa.RecordBatch]:
        """Stream a result in bounded Arrow record batches; never holds the whole result."""
        reader = self._batch_reader(expr, batch_rows or self.STREAM_BATCH_ROWS)
        for batch in reader:
            self.rows_fetched += batch.num_rows
            yield batch

    def _batch_reader(self, expr: ir.Table, rows: int) -> Iterator[pa.RecordBatch]:
        """The batches of ``expr``. They must keep coming while other statements run on this
        connection: a node that streams its output back writes between the batches it reads."""
        return iter(expr.to_pyarrow_batches(chunk_size=rows))

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
            if is_arrow_table(obj) and self._create_from_arrow(name, obj, target, overwrite):
                self._noted(name, target, "table")
                return self.con.table(name, database=target)
            table = self.con.create_table(name, obj, database=target, overwrite=overwrite)
        except Exception as exc:
            self._kinds.pop(target, None)  # whatever happened, ask the catalog next time
            raise WarehouseError(f"could not write table {target}.{name}: {exc}") from exc
        self._noted(name, target, "table")
        return table

    def _create_from_arrow(self, name: str, table: pa.Table, target: str, overwrite: bool) -> bool:
        """Write an Arrow table the backend's own fast way; False: leave it to Ibis."""
        return False

    def replace_table(
        self, name: str, obj: ir.Table | pa.Table | Any, schema: str | None = None, count: bool = True
    ) -> int | None:
        """Materialize ``obj`` as table ``name`` (replacing a table or view); returns its rows.

        A backend may write an expression its own faster way (``_replace_table_as``: one
        ``CREATE OR REPLACE TABLE ... AS`` on DuckDB, one transaction on PostgreSQL);
        otherwise Ibis creates, inserts, drops and renames, and the rows are counted.
        """
        target = schema or self.schema
        self._ensure_schema(target)
        query = not is_arrow_table(obj) and is_ibis_table(obj)
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
        if self.REPLACES_IN_ONE_STATEMENT and target not in self._kinds and one_statement:
            return True, UNLISTED
        return target in self._kinds, self.relation_kind(name, target)

    def _replace_table(self, name: str, obj: Any, target: str, count: bool, kind: str | None) -> int | None:
        if kind == "view":
            try:
                self._drop(name, target, "view")
            except Exception as exc:
                raise WarehouseError(f"could not replace view {target}.{name} by a table: {database_message(exc)}. "
                                     "Drop the views that read it, or keep this node `materialize: view`") from exc
        if is_arrow_stream(obj):
            return self._replace_from_stream(name, obj, target)
        if not is_arrow_table(obj) and is_ibis_table(obj):
            rows = self._replace_table_as(name, obj, target, count, kind)
            if rows is not NotImplemented:
                return rows  # type: ignore[return-value]
        self.create_table(name, obj, target)
        return self.count_rows(name, target) if count else None

    def _replace_from_stream(self, name: str, reader: pa.RecordBatchReader, target: str) -> int:
        """Write a node's output streamed in Arrow batches, one batch in memory at a time.

        The first batch (or the empty schema) replaces the table, the rest are appended, so
        a model scoring millions of customers never holds its whole output. Not one
        transaction: a failure part-way leaves a partial table, and the node fails.
        """
        import pyarrow as pa

        rows = 0
        created = False
        for batch in reader:
            chunk = pa.Table.from_batches([batch], schema=reader.schema)
            if not created:
                self.create_table(name, chunk, target)
                created = True
            elif chunk.num_rows:
                self.insert(name, chunk, target)
            rows += chunk.num_rows
        if not created:
            self.create_table(name, reader.schema.empty_table(), target)
        return rows

    def _replace_table_as(self, name: str, expr: ir.Table, target: str, count: bool,
                          kind: str | None) -> Any:
        """Replace table ``name`` by the rows of ``expr`` the backend's own way; returns the
        row count (None when not ``count``), or ``NotImplemented`` for Ibis's generic path."""
        return NotImplemented

    def replace_view(self, name: str, expr: ir.Table, schema: str | None = None) -> None:
        """Materialize an expression as view ``name`` (replacing a table or view of that name).

        Written as plain ``CREATE [OR REPLACE] VIEW schema.name AS <query>``, so the view is
        persistent on every warehouse (Ibis makes temporary views on Spark) and readable by a
        person. Where views bind to what they read (``HAS_VIEW_BINDING``: PostgreSQL) a
        view's columns cannot change in place, so there the old view is dropped first when
        ``OR REPLACE`` fails.
        """
        target = schema or self.schema
        self._ensure_schema(target)
        if has_memtable(expr):
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
                    if not self.HAS_VIEW_BINDING:
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
        """Drop a table or view to put the other kind in its place (most warehouses resolve
        a view's names when it is read, so the views reading it stay)."""
        if kind == "view":
            self.drop_view(name, schema)
        else:
            self.drop_table(name, schema)

    def unnest_json_objects(self, table: ir.Table, column: str,
                            fields: dict[str, tuple[str, str]]) -> ir.Table | None:
        """One row per object of the JSON array (text) in ``column``, in SQL of the backend's
        own: ``table``'s other columns, then ``fields`` (``{output column: (key, "string" |
        "float64")}``) read from each object. None here: Ibis's expression does it where
        ``UNNESTS_JSON`` says so (``segment_source.products_expr``)."""
        return None

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
        if has_memtable(expr):  # unique names and data held in Python: nothing to reuse
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
        return self.count(self.con.table(name, database=schema or self.schema))

    def insert(self, name: str, obj: ir.Table | pa.Table | Any, schema: str | None = None) -> None:
        """Append rows (backends override this for Arrow tables: no pandas, or COPY)."""
        self.con.insert(name, obj, database=schema or self.schema)

    def create_empty(self, name: str, schema: ibis.Schema) -> None:
        """Create an empty table of ``schema`` in the output schema (Ibis's DDL)."""
        self.con.create_table(name, schema=schema, database=self.schema)

    def execute_atomically(self, statements: Sequence[str]) -> None:
        """Run statements as one transaction, so a crash cannot leave a table half-replaced
        (PostgreSQL runs several statements sent at once in one implicit transaction)."""
        self.raw_sql("; ".join(statements))

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction around the block where the warehouse is embedded (DuckDB);
        elsewhere the statements run as they come."""
        yield

    def add_columns(self, table: str, adds: Sequence[str]) -> None:
        """``ALTER TABLE table ADD COLUMN ...`` (``adds``) on the quoted ``table``, in one statement."""
        self.raw_sql(f"ALTER TABLE {table} {', '.join(adds)}")

    def alter_column_type(self, table: str, column: str, sql_type: str, using: str) -> None:
        """Change a column's type in place; ``using`` is the expression its values go through."""
        self.raw_sql(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE {sql_type} USING CAST({using} AS {sql_type})")

    def drop_table(self, name: str, schema: str | None = None) -> None:
        self.con.drop_table(name, database=schema or self.schema, force=True)
        self._noted(name, schema or self.schema, None)

    def drop_view(self, name: str, schema: str | None = None) -> None:
        self._raw_sql(f"DROP VIEW IF EXISTS {self.qualified(name, schema)}")
        self._noted(name, schema or self.schema, None)

    def checkpoint_in_background(self) -> None:
        """Start folding what this connection wrote into storage now (embedded DuckDB);
        ``close`` waits for it. Elsewhere there is nothing to do."""

    def group_state_memory(self) -> tuple[int, int] | None:
        """(bytes, threads): the memory and threads of a query's GROUP BY, where the warehouse
        runs in this process and holds every group's aggregate states in memory (DuckDB
        spills groups, but not wide states: a query grouping many customers with a hundred
        aggregates each fails at its ``memory_limit``). None elsewhere: the server's engine
        spills them itself."""
        return None

    def lower_memory_limit(self, limit: int) -> None:
        """Let the warehouse use at most ``limit`` bytes of this process's memory from now on,
        where it runs in this process (DuckDB) and was allowed more; elsewhere the server's
        own settings apply and nothing changes."""

    def close(self) -> None:
        if self._checkpoint is not None:
            self._checkpoint.join()
            self._checkpoint = None
        self._disconnect()

    def _disconnect(self) -> None:
        disconnect = getattr(self.con, "disconnect", None)
        if callable(disconnect):
            disconnect()

    def __enter__(self) -> Warehouse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _retry(kind: str | None, actual: str | None, writing: str) -> bool:
    """Whether a write that failed is worth a second try: the catalog now tells another
    story than the one it was written for. Without a listing (UNLISTED: DuckDB's one
    statement), only when the other kind of object was in the way; any other failure
    (a bad query, an interrupted one) is not run twice."""
    if kind == UNLISTED:
        return actual is not None and actual != writing
    return actual != kind


# What a config's ``warehouse_class`` returns (``type`` is a field name inside a config).
WarehouseClass: TypeAlias = "type[Warehouse]"


def _config_of_type(name: str) -> Any:
    """The config class of warehouse type ``name`` (each backend module defines one)."""
    stack = list(WarehouseConfig.__subclasses__())
    while stack:
        kind = stack.pop()
        if kind.model_fields["type"].default == name:
            return kind
        stack.extend(kind.__subclasses__())
    raise KeyError(name)


__all__ = ["UNLISTED", "Warehouse", "WarehouseClass", "is_arrow_table"]
