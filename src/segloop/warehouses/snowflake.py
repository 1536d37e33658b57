"""Snowflake: a database and compute warehouse, password or key-pair authentication.

Names: Segment's Snowflake destination creates tables and columns unquoted, so Snowflake
stores them upper-case (``TRACKS``, ``USER_ID``), while segloop and Ibis write quoted
lower-case names (``"user_id"``) that would not match them. segloop's session sets
``QUOTED_IDENTIFIERS_IGNORE_CASE = TRUE`` (quoted names resolve as unquoted ones do, so
``"user_id"`` is ``USER_ID`` and segloop's outputs are stored upper-case, as a Snowflake user
expects), and names read back from the catalog that are all upper-case are lower-cased
(``lower_name``), so pipelines name columns as on every other warehouse. docs/warehouses/
snowflake.md; tests/warehouses/test_snowflake_names.py checks the SQL sent.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, model_validator

from segloop.errors import WarehouseError
from segloop.secrets import SecretRef
from segloop.warehouses.base import Warehouse, WarehouseClass
from segloop.warehouses.config import WarehouseConfig, redact, secret_value, workspace_path
from segloop.warehouses.exprs import sql_literal

if TYPE_CHECKING:  # pragma: no cover
    import ibis
    import ibis.expr.types as ir
    import pyarrow as pa

# Set at login for every segloop session (see the module docstring).
SESSION_PARAMETERS: dict[str, Any] = {"QUOTED_IDENTIFIERS_IGNORE_CASE": True}


class SnowflakeConfig(WarehouseConfig):
    """A Snowflake account; node outputs and sync state go to ``database.schema``.

    Authenticate with ``password: ${SNOWFLAKE_PASSWORD}``, or with a key pair:
    ``private_key_path`` (a PEM file) and optionally ``private_key_passphrase``.
    """

    type: Literal["snowflake"] = "snowflake"
    account: str = Field(description="Account identifier, e.g. myorg-myaccount.")
    user: str
    password: SecretRef | None = None
    private_key_path: str | None = Field(default=None, description="PEM file for key-pair auth.")
    private_key_passphrase: SecretRef | None = None
    authenticator: str | None = Field(default=None, description="e.g. externalbrowser, oauth.")
    database: str
    warehouse: str | None = Field(default=None, description="The compute warehouse to use.")
    role: str | None = None
    host: str | None = Field(
        default=None, description="Server host name; default: <account>.snowflakecomputing.com.")
    port: int | None = Field(default=None, ge=1, le=65535, description="Server port (default 443).")
    protocol: Literal["https", "http"] | None = Field(
        default=None, description="https (default); http only for a local emulator such as fakesnow.")
    create_object_udfs: bool = Field(
        default=False,
        description="Let Ibis create its helper UDFs (needs CREATE FUNCTION on the schema).",
    )

    DEFAULT_SCHEMA: ClassVar[str] = "SEGLOOP"
    EXTRA: ClassVar[str] = "snowflake"
    DRIVER_MODULES: ClassVar[tuple[str, ...]] = ("snowflake.connector", "ibis.backends.snowflake")

    @model_validator(mode="after")
    def _one_auth(self) -> SnowflakeConfig:
        given = [k for k in ("password", "private_key_path", "authenticator") if getattr(self, k)]
        if not given:
            raise ValueError(
                "give one way to log in: `password: ${SNOWFLAKE_PASSWORD}`, "
                "`private_key_path: <file.p8>` or `authenticator: externalbrowser`"
            )
        if self.password and self.private_key_path:
            raise ValueError("give either `password` or `private_key_path`, not both")
        if self.private_key_passphrase and not self.private_key_path:
            raise ValueError("`private_key_passphrase` needs `private_key_path`")
        return self

    @classmethod
    def warehouse_class(cls) -> WarehouseClass:
        return SnowflakeWarehouse

    def describe(self) -> str:
        where = f" at {self.host}{f':{self.port}' if self.port else ''}" if self.host else ""
        return f"Snowflake account {self.account}{where}, database {self.database}"

    def connect(self, root: Path) -> ibis.BaseBackend:
        self.require_driver()
        import ibis

        password = secret_value(self.password, "snowflake password")
        passphrase = secret_value(self.private_key_passphrase, "snowflake private key passphrase")
        kwargs: dict[str, Any] = {
            "account": self.account,
            "user": self.user,
            "database": self.database,
            "schema": self.output_schema,
            "create_object_udfs": self.create_object_udfs,
            "application": "segloop",
            # Ibis sends these in its ALTER SESSION right after login.
            "session_parameters": dict(SESSION_PARAMETERS),
        }
        for key in ("warehouse", "role", "authenticator", "host", "port", "protocol"):
            if getattr(self, key):
                kwargs[key] = getattr(self, key)
        if password:
            kwargs["password"] = password
        if self.private_key_path:
            key_file = workspace_path(self.private_key_path, root)
            if not key_file.exists():
                raise WarehouseError(
                    f"snowflake private key file {key_file} does not exist; fix `private_key_path`"
                )
            kwargs["private_key_file"] = str(key_file)
            if passphrase:
                kwargs["private_key_file_pwd"] = passphrase
        try:
            return ibis.snowflake.connect(**kwargs)
        except Exception as exc:
            raise WarehouseError(
                redact(f"cannot connect to {self.describe()} as {self.user}: {str(exc).strip()}",
                       password, passphrase)
            ) from None


class SnowflakeWarehouse(Warehouse):
    """Snowflake: names in any case, views listed, query schemas from a describe-only request.

    Where Ibis 12 asks ``DESCRIBE RESULT LAST_QUERY_ID()`` after running a query with
    ``LIMIT 0`` (two statements, and the query runs), ``query_schema`` sends one describe-only
    request (nothing runs). Arrow tables are uploaded Ibis's way (a temporary stage, PUT,
    COPY INTO), the fast path on Snowflake.
    """

    UNNESTS_JSON: ClassVar[bool] = True  # with its own LATERAL FLATTEN (unnest_json_objects)

    # -- names -----------------------------------------------------------------------------

    def _kinds_query(self, target: str) -> str | None:
        # information_schema.tables lists views too on Snowflake, but not on every emulator;
        # views come from information_schema.views (UNION drops the rows listed twice). Names
        # compare without case: QUOTED_IDENTIFIERS_IGNORE_CASE stores them upper-case.
        schema = sql_literal(target)
        return (f"SELECT {_LOWERED.format('table_name')}, table_type FROM information_schema.tables "
                f"WHERE UPPER(table_schema) = UPPER({schema}) UNION "
                f"SELECT {_LOWERED.format('table_name')}, 'VIEW' FROM information_schema.views "
                f"WHERE UPPER(table_schema) = UPPER({schema})")

    def has_table(self, name: str, schema: str | None = None) -> bool:
        # SHOW TABLES gives stored names: segloop's "shop__rfm" is SHOP__RFM there.
        try:
            return lower_name(name) in {lower_name(t) for t in self.list_tables(schema)}
        except Exception:
            return False

    def _table(self, name: str, target: str) -> ir.Table:
        return lowered(self.con.table(name, database=target))

    def sql(self, query: str, dialect: str | None = None) -> ir.Table:
        if dialect:
            return super().sql(query, dialect)
        return self.con.sql(query, schema=self.query_schema(query))

    def _arrow(self, expr: ir.Table, limit: int | None = None) -> pa.Table:
        # Result columns come back under Snowflake's names (USER_ID for "user_id" with
        # QUOTED_IDENTIFIERS_IGNORE_CASE); Ibis's converter looks them up by the expression's
        # names, so they are renamed by position first (to_pyarrow_batches does that already).
        from ibis.backends.snowflake.converter import SnowflakePyArrowData

        con: Any = self.con
        table_expr = expr.as_table()
        con._run_pre_execute_hooks(table_expr)
        cursor = self.raw.cursor()
        try:
            cursor.execute(con.compile(table_expr, limit=limit))
            result = cursor.fetch_arrow_all()
        finally:
            cursor.close()
        target = table_expr.schema().to_pyarrow()
        result = target.empty_table() if result is None else result.rename_columns(target.names)
        return expr.__pyarrow_result__(result, data_mapper=SnowflakePyArrowData)  # type: ignore[no-any-return]

    def unnest_json_objects(self, table: ir.Table, column: str,
                            fields: dict[str, tuple[str, str]]) -> ir.Table | None:
        # Ibis 12 compiles unnest on Snowflake by joining the array into one string and
        # splitting it again, which turns each JSON object into text; LATERAL FLATTEN keeps
        # them. A non-array (or NULL) gives no rows, as on DuckDB and PostgreSQL.
        import ibis

        others = [c for c in table.columns if c != column]
        array = f"TRY_PARSE_JSON(TO_VARCHAR(t.{self.quote(column)}))"
        select = [f"t.{self.quote(c)}" for c in others]
        schema: dict[str, Any] = {c: table[c].type() for c in others}
        for name, (key, dtype) in fields.items():
            # A JSON number cast to VARCHAR is its text: an id sent as a number compares
            # with other tables' ids, as on DuckDB and PostgreSQL.
            sql_type = "VARCHAR" if dtype == "string" else "DOUBLE"
            path = f"f.value:{self.quote(key)}"  # Snowflake's path syntax: the value, not its JSON
            select.append(f"{path}::{sql_type} AS {self.quote(name)}")
            schema[name] = dtype
        sql = (f"SELECT {', '.join(select)}\nFROM (\n{self.compile(table)}\n) AS t,\n"
               f"LATERAL FLATTEN(INPUT => IFF(IS_ARRAY({array}), {array}, NULL)) AS f")
        return self.query(sql, ibis.schema(schema))

    def query_schema(self, query: str) -> ibis.Schema:
        """The columns of ``query`` from one describe-only request (nothing runs), names lowered."""
        import ibis

        cursor = self.raw.cursor()
        try:
            described = cursor.describe(query)
        finally:
            cursor.close()
        mapper = self.con.compiler.type_mapper  # type: ignore[attr-defined]
        return ibis.schema({lower_name(column.name): mapper.from_string(
            snowflake_type(column), nullable=bool(column.is_nullable)) for column in described or []})


# The catalog's upper-case names lowered in SQL, as ``lower_name`` does in Python.
_LOWERED = "CASE WHEN {0} = UPPER({0}) THEN LOWER({0}) ELSE {0} END"


def lower_name(name: str) -> str:
    """A name as pipelines write it: all upper-case (stored unquoted) becomes lower-case."""
    return name.lower() if name == name.upper() else name


def lowered(table: ir.Table) -> ir.Table:
    """``table`` with its all-upper-case column names lower-cased (``"USER_ID" AS "user_id"``)."""
    renames = {lower_name(c): c for c in table.columns if lower_name(c) != c}
    return table.rename(renames) if renames else table


# Snowflake's result-metadata type codes (snowflake.connector.constants) -> type names.
_TYPE_NAMES = {0: "NUMBER", 1: "FLOAT", 2: "VARCHAR", 3: "DATE", 4: "TIMESTAMP_LTZ", 5: "VARIANT",
               6: "TIMESTAMP_LTZ", 7: "TIMESTAMP_TZ", 8: "TIMESTAMP_NTZ", 9: "OBJECT", 10: "ARRAY",
               11: "BINARY", 12: "TIME", 13: "BOOLEAN"}


def snowflake_type(column: Any) -> str:
    """The Snowflake type name of a connector ``ResultMetadata`` (what DESCRIBE would say)."""
    name = _TYPE_NAMES.get(int(column.type_code), "VARCHAR")
    if name == "NUMBER":
        return f"NUMBER({column.precision or 38},{column.scale or 0})"
    if name.startswith("TIMESTAMP") or name == "TIME":
        return f"{name}({column.scale if column.scale is not None else 9})"
    return name
