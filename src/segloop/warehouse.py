"""Warehouse connections through Ibis: an embedded DuckDB file by default, PostgreSQL and more.

A ``Warehouse`` wraps one Ibis backend and gives the engine and operators what they need:
read tables, run SQL, materialize node outputs in the output schema, and stream results
to Python as bounded Arrow batches (counting rows fetched, so pushdown can be checked).
Each backend's settings are a frozen pydantic model chosen by its ``type``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from segloop.errors import MissingDriverError, WarehouseError
from segloop.secrets import SecretRef, resolve_secret

if TYPE_CHECKING:  # pragma: no cover
    import ibis
    import ibis.expr.types as ir
    import pyarrow as pa


class WarehouseConfig(BaseModel):
    """Settings shared by every warehouse type."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    type: str
    schema_: str | None = Field(
        default=None,
        alias="schema",
        description="Schema where node outputs and sync state are written.",
    )

    DEFAULT_SCHEMA: ClassVar[str] = "main"
    EXTRA: ClassVar[str] = ""

    @property
    def output_schema(self) -> str:
        return self.schema_ or self.DEFAULT_SCHEMA

    def connect(self, root: Path) -> ibis.BaseBackend:
        raise NotImplementedError


class DuckDBConfig(WarehouseConfig):
    """The embedded default: a DuckDB file in the workspace (or ``:memory:``)."""

    type: Literal["duckdb"] = "duckdb"
    path: str = ".segloop/warehouse.duckdb"
    threads: int | None = None
    memory_limit: str | None = None

    def connect(self, root: Path) -> ibis.BaseBackend:
        import ibis

        if self.path == ":memory:":
            target = ":memory:"
        else:
            file = Path(self.path)
            file = file if file.is_absolute() else root / file
            file.parent.mkdir(parents=True, exist_ok=True)
            target = str(file)
        kwargs: dict[str, Any] = {}
        if self.threads:
            kwargs["threads"] = self.threads
        if self.memory_limit:
            kwargs["memory_limit"] = self.memory_limit
        try:
            return ibis.duckdb.connect(target, **kwargs)
        except Exception as exc:  # duckdb raises IOException for locked files
            raise WarehouseError(
                f"cannot open DuckDB file {target}: {exc}. Is another segloop process "
                "using it? Stop it or point `path:` at another file."
            ) from exc


class PostgresConfig(WarehouseConfig):
    """A PostgreSQL database (also the shape of Segment's Postgres warehouse destination)."""

    type: Literal["postgres"] = "postgres"
    host: str = "localhost"
    port: int = 5432
    user: str | None = None
    password: SecretRef | None = None
    database: str = "postgres"

    DEFAULT_SCHEMA: ClassVar[str] = "public"
    EXTRA: ClassVar[str] = "postgres"

    def connect(self, root: Path) -> ibis.BaseBackend:
        try:
            import ibis

            backend = ibis.postgres
            import psycopg  # noqa: F401
        except (ImportError, AttributeError) as exc:
            raise MissingDriverError("postgres", "postgres") from exc
        password = (
            resolve_secret(self.password, "warehouse password").get_secret_value()
            if self.password
            else None
        )
        try:
            return backend.connect(
                host=self.host,
                port=self.port,
                user=self.user,
                password=password,
                database=self.database,
            )
        except Exception as exc:
            raise WarehouseError(
                f"cannot connect to PostgreSQL at {self.host}:{self.port}/{self.database} "
                f"as {self.user or 'the current user'}: {exc}".replace(password or "\0", "[secure]")
            ) from None


WAREHOUSE_TYPES: dict[str, type[WarehouseConfig]] = {
    "duckdb": DuckDBConfig,
    "postgres": PostgresConfig,
}

AnyWarehouseConfig = Annotated[DuckDBConfig | PostgresConfig, Field(discriminator="type")]


class Warehouse:
    """One open connection to a warehouse, with the operations segloop needs."""

    STREAM_BATCH_ROWS: ClassVar[int] = 50_000

    def __init__(self, con: ibis.BaseBackend, config: WarehouseConfig, name: str = "default"):
        self.con = con
        self.config = config
        self.name = name
        self.schema = config.output_schema
        self.rows_fetched = 0  # rows moved into Python; lets tests check pushdown
        self._ensure_schema(self.schema)

    @classmethod
    def connect(cls, config: WarehouseConfig, root: Path | str = ".", name: str = "default") -> Warehouse:
        return cls(config.connect(Path(root)), config, name)

    @classmethod
    def duckdb(cls, path: str | Path = ":memory:", schema: str | None = None) -> Warehouse:
        """A DuckDB warehouse, mostly for tests and notebooks."""
        config = DuckDBConfig(path=str(path), schema=schema)
        return cls.connect(config, Path("."))

    # -- introspection -------------------------------------------------------------------

    @property
    def dialect(self) -> str:
        return str(self.con.name)

    def _ensure_schema(self, schema: str) -> None:
        if self.dialect == "duckdb" and schema == "main":
            return
        self.raw_sql(f"CREATE SCHEMA IF NOT EXISTS {self.quote(schema)}")

    def ensure_schema(self, schema: str) -> None:
        self._ensure_schema(schema)

    def quote(self, ident: str) -> str:
        return '"' + ident.replace('"', '""') + '"'

    def qualified(self, name: str, schema: str | None = None) -> str:
        return f"{self.quote(schema or self.schema)}.{self.quote(name)}"

    def list_tables(self, schema: str | None = None) -> list[str]:
        return list(self.con.list_tables(database=schema or self.schema))

    def list_schemas(self) -> list[str]:
        return list(self.con.list_databases())

    def has_table(self, name: str, schema: str | None = None) -> bool:
        try:
            return name in self.list_tables(schema)
        except Exception:
            return False

    # -- reading -------------------------------------------------------------------------

    def table(self, name: str, schema: str | None = None) -> ir.Table:
        try:
            return self.con.table(name, database=schema or self.schema)
        except Exception as exc:
            raise WarehouseError(
                f"table {schema or self.schema}.{name} not found in warehouse `{self.name}`: "
                f"{type(exc).__name__}"
            ) from exc

    def sql(self, query: str, dialect: str | None = None) -> ir.Table:
        """An Ibis expression over a SQL query (nothing runs until it is materialized)."""
        return self.con.sql(query, dialect=dialect) if dialect else self.con.sql(query)

    def raw_sql(self, query: str) -> Any:
        result = self.con.raw_sql(query)
        # Some backends (postgres) hand back an open cursor; close it so locks are released.
        close = getattr(result, "close", None)
        if callable(close) and self.dialect != "duckdb":
            close()
        return result

    def count(self, expr: ir.Table) -> int:
        return int(expr.count().execute())

    def to_arrow(self, expr: ir.Table, limit: int | None = None) -> pa.Table:
        """Fetch a (small) result into Python; counted in ``rows_fetched``."""
        table = expr.to_pyarrow(limit=limit)
        self.rows_fetched += table.num_rows
        return table

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
            return self.con.create_table(name, obj, database=target, overwrite=overwrite)
        except Exception as exc:
            raise WarehouseError(f"could not write table {target}.{name}: {exc}") from exc

    def insert(self, name: str, obj: ir.Table | pa.Table | Any, schema: str | None = None) -> None:
        """Append rows; an Arrow table goes straight into DuckDB without a pandas detour."""
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
        self.con.insert(name, obj, database=schema or self.schema)

    def drop_table(self, name: str, schema: str | None = None) -> None:
        self.con.drop_table(name, database=schema or self.schema, force=True)

    def close(self) -> None:
        disconnect = getattr(self.con, "disconnect", None)
        if callable(disconnect):
            disconnect()

    def __enter__(self) -> Warehouse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

