"""PostgreSQL (also the shape of Segment's Postgres and Redshift-like warehouse destinations).

``PostgresConfig`` is its settings; ``PostgresWarehouse`` loads Arrow data with COPY and
handles views bound to the tables they read (a table under views is refilled in place or
dropped with them, and ALTERs go around them).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from segloop.errors import WarehouseError, database_message
from segloop.secrets import SecretRef
from segloop.warehouses.base import Warehouse, WarehouseClass, is_arrow_table
from segloop.warehouses.config import WarehouseConfig, quote_ident, redact, secret_value

if TYPE_CHECKING:  # pragma: no cover
    import ibis
    import ibis.expr.types as ir
    import pyarrow as pa

log = logging.getLogger("segloop")


class PostgresConfig(WarehouseConfig):
    """A PostgreSQL database; node outputs and sync state go to ``schema`` (default ``public``)."""

    type: Literal["postgres"] = "postgres"
    host: str = "localhost"
    port: int = Field(default=5432, ge=1, le=65535)
    user: str | None = None
    password: SecretRef | None = None
    database: str = "postgres"
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None = None
    connect_timeout: int = Field(default=10, ge=1, description="Seconds to wait for a connection.")

    DEFAULT_SCHEMA: ClassVar[str] = "public"
    EXTRA: ClassVar[str] = "postgres"
    MAX_TABLE_COLUMNS: ClassVar[int] = 1600  # MaxHeapAttributeNumber (dropped columns count too)
    # A row must fit in one 8 KB page; long text moves out of it (TOAST), numbers cannot.
    # 8,160 bytes less the header and the null bitmap of 1,600 columns, with a margin.
    MAX_ROW_BYTES: ClassVar[int | None] = 7_000
    TEXT_HOLDS_NUL: ClassVar[bool] = False
    # Whole numbers up to 76 digits: Arrow's widest decimal, so Ibis can read them back
    # (an unconstrained NUMERIC column fails to read when its values differ in precision).
    EXACT_NUMBER_SQL: ClassVar[str] = "NUMERIC(76,0)"
    EXACT_NUMBER_DIGITS: ClassVar[int | None] = 76
    EXACT_NUMBER_FRACTIONS: ClassVar[bool] = False
    DRIVER_MODULES: ClassVar[tuple[str, ...]] = ("psycopg", "ibis.backends.postgres")

    def describe(self) -> str:
        return f"PostgreSQL at {self.host}:{self.port}/{self.database}"

    @classmethod
    def warehouse_class(cls) -> WarehouseClass:
        return PostgresWarehouse

    def connect(self, root: Path) -> ibis.BaseBackend:
        self.require_driver()
        import ibis

        password = secret_value(self.password, "warehouse password")
        extra: dict[str, object] = {"connect_timeout": self.connect_timeout}
        if self.sslmode:
            extra["sslmode"] = self.sslmode
        try:
            return ibis.postgres.connect(
                host=self.host,
                port=self.port,
                user=self.user,
                password=password,
                database=self.database,
                **extra,
            )
        except Exception as exc:
            detail = " ".join(str(exc).split())  # psycopg's hint is on a line of its own: one line
            detail += "" if detail.endswith((".", "?", "!")) else "."
            raise WarehouseError(
                redact(
                    f"cannot connect to {self.describe()} as {self.user or 'the current user'}: "
                    f"{detail} Check host, port, user and that the server accepts "
                    "connections from this machine.",
                    password,
                )
            ) from None



class PostgresWarehouse(Warehouse):
    """PostgreSQL: COPY for Arrow data, and views bound to the tables they read."""

    HAS_VIEW_BINDING: ClassVar[bool] = True
    UNNESTS_JSON: ClassVar[bool] = True
    COPY_BATCH_ROWS: ClassVar[int] = 100_000

    def _create_from_arrow(self, name: str, table: pa.Table, target: str, overwrite: bool) -> bool:
        return self._copy_arrow(table, name, target, overwrite)

    def _batch_reader(self, expr: ir.Table, rows: int) -> Iterator[pa.RecordBatch]:
        # On a connection of its own: Ibis reads batches through a server-side cursor inside
        # a transaction of this connection, so a write between two batches (a node streaming
        # its output back while it reads) fails with "commit() forbidden within a Transaction".
        import psycopg
        import pyarrow as pa

        schema = expr.as_table().schema()
        struct = schema.as_struct().to_pyarrow()
        info = self.raw.info
        with psycopg.connect(info.dsn, password=info.password) as con, con.cursor(name="segloop_batches") as cursor:
            cursor.execute(self.compile(expr))
            while batch := cursor.fetchmany(rows):
                yield pa.RecordBatch.from_struct_array(pa.array(batch, type=struct))

    def insert(self, name: str, obj: ir.Table | pa.Table | Any, schema: str | None = None) -> None:
        """Append rows; an Arrow table goes in with COPY when its types allow."""
        if is_arrow_table(obj) and self._copy_insert(obj, name, schema or self.schema):
            return
        super().insert(name, obj, schema)

    def _replace_table_as(self, name: str, expr: ir.Table, target: str, count: bool,
                          kind: str | None) -> Any:
        # One transaction of CREATE TABLE AS (its row count is the count) and a rename. A
        # table that views depend on is refilled in place (same columns) or dropped with them.
        try:
            if kind == "table" and self._dependent_views(name, target):
                if self._replace_under_views(self.compile(expr), expr.schema(), name, target):
                    self._kinds.pop(target, None)  # views were dropped with it (CASCADE)
                return self.count_rows(name, target) if count else None
            return self._replace_table_as_sql(self.compile(expr), name, target)
        except Exception as exc:
            raise WarehouseError(f"could not write table {target}.{name}: {database_message(exc)}") from exc

    def _drop(self, name: str, schema: str, kind: str) -> None:
        """Drop a table or view to put the other kind in its place.

        PostgreSQL binds views to what they read, so the views of later nodes that read
        this one are dropped with it (``CASCADE``) and logged: they come back when their
        nodes run.
        """
        dropped = self._dependent_views(name, schema)
        self._raw_sql(f"DROP {'VIEW' if kind == 'view' else 'TABLE'} IF EXISTS {self.qualified(name, schema)} CASCADE")
        self._noted(name, schema, None)
        if dropped:
            self._kinds.pop(schema, None)
            log.warning("%s.%s is replaced; the views reading it were dropped with it and come back when "
                        "their nodes run: %s", schema, name, ", ".join(dropped))

    def alter_column_type(self, table: str, column: str, sql_type: str, using: str) -> None:
        self.alter_under_views(table, f"ALTER TABLE {table} ALTER COLUMN {column} TYPE {sql_type} "
                                      f"USING CAST({using} AS {sql_type})")

    def _copy_arrow(self, table: pa.Table, name: str, schema: str, overwrite: bool) -> bool:
        """Bulk-load an Arrow table with COPY (CSV); returns False when a column type needs Ibis.

        Ibis inserts Arrow data with INSERT statements (about 10k rows a second); COPY loads
        hundreds of thousands. Arrow's CSV writer quotes every string and leaves NULL unquoted
        and empty, which is exactly PostgreSQL's CSV convention, so NULL and '' stay distinct.
        """
        import ibis

        if not self._copyable(table):
            return False
        ibis_schema = ibis.Schema.from_pyarrow(table.schema)
        if overwrite and self._same_columns(name, schema, ibis_schema):
            # Same columns: empty the table in place. Dropping it would fail when views depend
            # on it (segment_source views over a source schema that is reloaded).
            with self.raw.cursor() as cursor:
                cursor.execute(f"TRUNCATE TABLE {quote_ident(schema)}.{quote_ident(name)}")
            self.raw.commit()
        else:
            self.con.create_table(name, schema=ibis_schema, database=schema, overwrite=overwrite)
        self._copy_rows(table, name, schema)
        return True

    def _copy_insert(self, table: pa.Table, name: str, schema: str) -> bool:
        """Append an Arrow table to an existing table with COPY; False when types need Ibis.

        Columns are cast to the target table's types first, so an all-NULL column (Arrow type
        ``null``, which Ibis refuses on PostgreSQL) loads as NULLs of the column's type.
        """
        import pyarrow as pa

        target = self.con.get_schema(name, database=schema).to_pyarrow()
        columns = [f for f in target if f.name in table.column_names]
        try:
            cast = table.select([f.name for f in columns]).cast(pa.schema(columns))
        except (ValueError, TypeError, NotImplementedError):
            return False
        if not self._copyable(cast):
            return False
        self._copy_rows(cast, name, schema)
        return True

    @staticmethod
    def _copyable(table: pa.Table) -> bool:
        import pyarrow as pa

        return table.num_columns > 0 and all(
            pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or pa.types.is_boolean(f.type)
            or pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
            or pa.types.is_timestamp(f.type) or pa.types.is_date(f.type) or pa.types.is_decimal(f.type)
            for f in table.schema
        )

    def _copy_rows(self, table: pa.Table, name: str, schema: str) -> None:
        import io

        import pyarrow.csv as pacsv

        if table.num_rows == 0:
            return
        columns = ", ".join(quote_ident(c) for c in table.column_names)
        target = f"{quote_ident(schema)}.{quote_ident(name)}"
        options = pacsv.WriteOptions(include_header=False)
        statement = f"COPY {target} ({columns}) FROM STDIN WITH (FORMAT csv)"
        with self.raw.cursor() as cursor, cursor.copy(statement) as copy:
            for batch in table.to_batches(max_chunksize=self.COPY_BATCH_ROWS):
                buffer = io.BytesIO()
                pacsv.write_csv(batch, buffer, write_options=options)
                copy.write(buffer.getvalue())
        self.raw.commit()

    def _same_columns(self, name: str, schema: str, wanted: Any) -> bool:
        """Whether ``schema.name`` exists with exactly these column names and types."""
        try:
            if name not in self.con.list_tables(database=schema):
                return False
            return bool(self.con.get_schema(name, database=schema) == wanted)
        except Exception:
            return False

    def _dependent_views(self, name: str, schema: str) -> list[str]:
        """Views (``schema.view``) that read table ``schema.name``; PostgreSQL will not drop it under them."""
        query = (
            "SELECT DISTINCT vn.nspname, v.relname FROM pg_depend d"
            " JOIN pg_rewrite r ON r.oid = d.objid"
            " JOIN pg_class v ON v.oid = r.ev_class"
            " JOIN pg_namespace vn ON vn.oid = v.relnamespace"
            " JOIN pg_class t ON t.oid = d.refobjid"
            " JOIN pg_namespace tn ON tn.oid = t.relnamespace"
            " WHERE t.relname = %s AND tn.nspname = %s AND v.oid <> t.oid"
            " ORDER BY 1, 2"
        )
        with self.raw.cursor() as cursor:
            cursor.execute(query, (name, schema))
            return [f"{row[0]}.{row[1]}" for row in cursor.fetchall()]

    def _replace_under_views(self, sql: str, wanted: Any, name: str, schema: str) -> list[str]:
        """Replace table ``schema.name``, which views read, by the rows of ``sql``; returns views dropped.

        PostgreSQL binds a view to the table itself, so the table cannot be dropped and
        re-created under it. With the same columns the table is emptied and refilled in one
        transaction (the views keep working, readers never see it empty). With other columns
        the views are dropped with it (``CASCADE``) and logged: the engine re-creates them
        when their nodes run later in the same run.
        """
        target = f"{quote_ident(schema)}.{quote_ident(name)}"
        if self._same_columns(name, schema, wanted):
            columns = ", ".join(quote_ident(c) for c in wanted.names)
            with self.raw.transaction(), self.raw.cursor() as cursor:
                cursor.execute(f"TRUNCATE TABLE {target}")
                cursor.execute(f"INSERT INTO {target} ({columns}) {sql}")
            return []
        dropped = self._dependent_views(name, schema)
        with self.raw.transaction(), self.raw.cursor() as cursor:
            cursor.execute(f"DROP TABLE {target} CASCADE")
            cursor.execute(f"CREATE TABLE {target} AS {sql}")
        log.warning(
            "table %s.%s changed columns; the views reading it were dropped with it and come back when "
            "their nodes run: %s", schema, name, ", ".join(dropped))
        return dropped

    def _replace_table_as_sql(self, sql: str, name: str, schema: str) -> int:
        """Replace table ``schema.name`` by the rows of ``sql`` in one transaction; returns the row count.

        Built under a temporary name, then swapped in, so readers see the old table or the
        new one, never none; the count comes from ``CREATE TABLE AS`` itself (no count query).
        """
        import secrets

        target = f"{quote_ident(schema)}.{quote_ident(name)}"
        temp = f"_segloop_new_{secrets.token_hex(4)}"
        with self.raw.transaction(), self.raw.cursor() as cursor:
            cursor.execute(f"CREATE TABLE {quote_ident(schema)}.{quote_ident(temp)} AS {sql}")
            rows = cursor.rowcount
            cursor.execute(f"DROP TABLE IF EXISTS {target}")
            cursor.execute(f"ALTER TABLE {quote_ident(schema)}.{quote_ident(temp)} RENAME TO {quote_ident(name)}")
        return int(rows)

    def alter_under_views(self, table: str, alter: str) -> None:
        """Run ``alter`` (an ALTER TABLE changing a column's type) on ``table`` (quoted
        ``schema.name``) although views read it: PostgreSQL refuses, so the views (and views on
        them, in dependency order) are dropped and re-created around it, in one transaction, so
        readers see the old table and views or the new ones."""
        query = (
            "WITH RECURSIVE deps(oid, depth) AS ("
            " SELECT DISTINCT r.ev_class, 1 FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid"
            " WHERE d.refobjid = %s::regclass AND r.ev_class <> d.refobjid"
            " UNION SELECT r.ev_class, deps.depth + 1 FROM deps JOIN pg_depend d ON d.refobjid = deps.oid"
            " JOIN pg_rewrite r ON r.oid = d.objid WHERE r.ev_class <> deps.oid AND deps.depth < 50)"
            " SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), pg_get_viewdef(c.oid),"
            " max(deps.depth) FROM deps JOIN pg_class c ON c.oid = deps.oid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'v'"
            " GROUP BY 1, 2 ORDER BY 3"
        )
        with self.raw.transaction(), self.raw.cursor() as cursor:
            cursor.execute(query, (table,))
            views = cursor.fetchall()
            for name, _, _ in reversed(views):
                cursor.execute(f"DROP VIEW IF EXISTS {name}")
            cursor.execute(alter)
            for name, definition, _ in views:
                cursor.execute(f"CREATE VIEW {name} AS {definition}")


def row_bytes(values: dict[str, Any]) -> int:
    """A row's inline size in a PostgreSQL page, pessimistic: fixed-width values with their
    alignment, text inline or as an 18-byte TOAST pointer (values over ~24 bytes may move out)."""
    size = 0
    for value in values.values():
        if value is None:
            continue
        if isinstance(value, bool):
            size += 1
        elif isinstance(value, str):
            size += min(len(value.encode("utf-8")) + 4, 28)
        else:
            size += 16
    return size
