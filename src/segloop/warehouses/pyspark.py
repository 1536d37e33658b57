"""Apache Spark through PySpark: local mode (``local[*]``) or a cluster's Spark Connect URL.

What Spark does its own way, so that a pipeline (the demo's, unchanged) gives the same rows
and Segment messages as on DuckDB: sql nodes read ``"double quotes"`` as names, not text
(``node_sql_dialect``); Segment's ``products`` JSON is unnested with ``LATERAL VIEW explode``
(``unnest_json_objects``); a DELETE or UPDATE that Parquet tables lack rewrites the table
(``_rewrite``: the sync state); and with PySpark 4, Arrow goes in and out without pandas.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator

from segloop.errors import WarehouseError, database_message
from segloop.masking import mask_url
from segloop.secrets import SecretRef
from segloop.warehouses.base import Warehouse, WarehouseClass
from segloop.warehouses.config import WarehouseConfig, redact, secret_value, workspace_path
from segloop.warehouses.exprs import is_arrow_table, sql_literal

if TYPE_CHECKING:  # pragma: no cover
    import ibis
    import ibis.expr.types as ir
    import pyarrow as pa


# The Spark Connect sessions opened in this process, one per server URL and token (keyed by
# a hash, so the key does not hold the token). PySpark's ``getOrCreate`` returns the first
# remote session of the process whatever URL or token a later builder names: a second block
# with another server or a wrong token would silently use the first one.
_CONNECT_SESSIONS: dict[str, Any] = {}


class PySparkConfig(WarehouseConfig):
    """Spark: ``master: local[*]`` runs in this process; ``connect_url: sc://host:15002`` uses a cluster.

    In local mode tables are Parquet files under ``warehouse_dir`` and the table catalog is a
    Derby metastore next to it (``metastore: hive``), so node outputs survive between runs;
    ``metastore: in-memory`` forgets them when the process ends (fine for one-shot runs).
    """

    type: Literal["pyspark"] = "pyspark"
    master: str = Field(default="local[*]", description="Spark master for local/cluster mode.")
    connect_url: str | None = Field(default=None, description="Spark Connect URL, sc://host:15002.")
    token: SecretRef | None = Field(default=None, description="Spark Connect bearer token.")
    warehouse_dir: str = Field(default=".segloop/spark-warehouse", description="Local table storage.")
    metastore: Literal["hive", "in-memory"] = "hive"
    app_name: str = "segloop"
    driver_memory: str | None = Field(default=None, description="e.g. 4g (local mode).")
    conf: dict[str, str] = Field(default_factory=dict, description="Extra Spark settings.")

    DEFAULT_SCHEMA: ClassVar[str] = "segloop"
    EXTRA: ClassVar[str] = "pyspark"
    DRIVER_MODULES: ClassVar[tuple[str, ...]] = ("pyspark", "ibis.backends.pyspark")
    SHUFFLE_PARTITIONS: ClassVar[int] = 8  # Spark's default of 200 is slow for local data

    @field_validator("connect_url")
    @classmethod
    def _spark_connect_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("sc://"):
            raise ValueError("a Spark Connect URL starts with sc://, e.g. sc://spark-host:15002")
        if value is not None and "token=" in value:
            raise ValueError("do not write the token in the URL; use `token: ${SPARK_CONNECT_TOKEN}`")
        return value

    @classmethod
    def warehouse_class(cls) -> WarehouseClass:
        return PySparkWarehouse

    def describe(self) -> str:
        return f"Spark Connect at {mask_url(self.connect_url)}" if self.connect_url else f"Spark {self.master}"

    def session_builder(self, root: Path) -> Any:
        """A configured ``SparkSession.builder`` (not yet started)."""
        from pyspark.sql import SparkSession

        builder = SparkSession.builder.appName(self.app_name)
        if self.connect_url:
            token = secret_value(self.token, "Spark Connect token")
            url = self.connect_url + (f"/;token={token}" if token else "")
            builder = builder.remote(url)
        else:
            warehouse = workspace_path(self.warehouse_dir, root).resolve()
            warehouse.mkdir(parents=True, exist_ok=True)
            builder = (
                builder.master(self.master)
                .config("spark.sql.warehouse.dir", str(warehouse))
                .config("spark.sql.shuffle.partitions", str(self.SHUFFLE_PARTITIONS))
                .config("spark.sql.session.timeZone", "UTC")
                .config("spark.ui.enabled", "false")
                .config("spark.sql.execution.arrow.pyspark.enabled", "true")
                # Iterative jobs (MLlib's ALS: two RDDs per sweep) checkpoint here every few
                # sweeps; without a directory their lineage grows until deserializing a task
                # overflows an executor thread's stack (java.lang.StackOverflowError).
                .config("spark.checkpoint.dir", str(warehouse.parent / "spark-checkpoints"))
                .config("spark.cleaner.referenceTracking.cleanCheckpoints", "true")
            )
            if self.driver_memory:
                builder = builder.config("spark.driver.memory", self.driver_memory)
            if self.master.startswith("local") and not os.environ.get("PYSPARK_PYTHON"):
                # Local executors run on this machine: give their Python workers this
                # interpreter, the one with segloop and scikit-learn (a model node applies
                # its model in them), not whatever `python3` is first on PATH. A driver
                # started from Python reads the variable when its SparkContext starts
                # (`spark.pyspark.python` is only read by spark-submit).
                os.environ["PYSPARK_PYTHON"] = sys.executable
            if self.metastore == "hive":
                metastore = warehouse.parent / "spark-metastore"
                builder = builder.config(
                    "spark.hadoop.javax.jdo.option.ConnectionURL",
                    f"jdbc:derby:;databaseName={metastore};create=true",
                ).config("spark.driver.extraJavaOptions", f"-Dderby.system.home={warehouse.parent}")
                builder = builder.enableHiveSupport()
        for key, value in self.conf.items():
            builder = builder.config(key, value)
        return builder

    def connect_session(self, root: Path, token: str | None) -> Any:
        """This process's Spark Connect session to ``connect_url`` with ``token``: a new one
        the first time (``create``, PySpark 3.5+), the same one after."""
        key = hashlib.sha256(f"{self.connect_url}\0{token or ''}".encode()).hexdigest()
        session = _CONNECT_SESSIONS.get(key)
        if session is None or getattr(session, "is_stopped", False):
            builder = self.session_builder(root)
            session = builder.create() if hasattr(builder, "create") else builder.getOrCreate()
            _CONNECT_SESSIONS[key] = session
        return session

    def connect(self, root: Path) -> ibis.BaseBackend:
        self.require_driver()
        import ibis

        token = secret_value(self.token, "Spark Connect token") if self.connect_url else None
        try:
            session = self.connect_session(root, token) if self.connect_url else \
                self.session_builder(root).getOrCreate()
            return ibis.pyspark.connect(session)
        except Exception as exc:
            raise WarehouseError(
                redact(f"cannot start {self.describe()}: {str(exc).strip().splitlines()[0]}. "
                       "Local mode needs Java 17+ on PATH (or JAVA_HOME).", token)
            ) from None


class PySparkWarehouse(Warehouse):
    """Spark: the metastore lists views apart, and the session outlives a connection."""

    DIALECT: ClassVar[str | None] = "spark"
    RAW_SQL_RETURNS_CURSOR: ClassVar[bool] = False
    UNNESTS_JSON: ClassVar[bool] = True  # with LATERAL VIEW explode (unnest_json_objects)
    JSON_FIELD_TYPES: ClassVar[dict[str, str]] = {"float64": "DOUBLE"}  # Ibis type -> Spark's

    @property
    def node_sql_dialect(self) -> Any:
        return spark_with_quoted_identifiers()

    def unnest_json_objects(self, table: ir.Table, column: str,
                            fields: dict[str, tuple[str, str]]) -> ir.Table | None:
        """``LATERAL VIEW explode`` of the array parsed with ``from_json``; fields with
        ``get_json_object`` (Ibis has no rule for JSON unnesting on Spark).

        Works on Spark 3.2 and later (``try_cast``). A field holding a number is read as its
        text where a string is expected, and a number sent as text (``"9.5"``) as the
        number; DuckDB and PostgreSQL give NULL for both.
        """
        event, item = "_segloop_event", "_segloop_item"
        values = [f"{event}.{self.quote(name)}" for name in table.columns if name != column]
        for name, (key, dtype) in fields.items():
            value = f"get_json_object({item}, {sql_literal('$.' + key)})"
            if dtype != "string":
                value = f"try_cast({value} AS {self.JSON_FIELD_TYPES[dtype]})"
            values.append(f"{value} AS {self.quote(name)}")
        return self.sql(
            f"SELECT {', '.join(values)} FROM ({self.compile(table)}) AS {event} "
            f"LATERAL VIEW explode(from_json({event}.{self.quote(column)}, 'array<string>')) "
            f"_segloop_items AS {item}"
        )

    def _table(self, name: str, target: str) -> ir.Table:
        """The table's schema in one look-up (Ibis switches the session's database there and
        back around it: six statements per table)."""
        import ibis.expr.operations as ops
        import ibis.expr.schema as sch
        from ibis.backends.pyspark.datatypes import PySparkType

        struct = self.con._session.table(self.qualified(name, target)).schema  # type: ignore[attr-defined]
        return ops.DatabaseTable(name, schema=sch.Schema(PySparkType.to_ibis(struct)), source=self.con,
                                 namespace=ops.Namespace(database=target)).to_expr()

    def _arrow(self, expr: ir.Table, limit: int | None = None) -> pa.Table:
        """A result as Arrow straight from Spark (PySpark 4), not through pandas as Ibis does."""
        if not _arrow_native():
            return super()._arrow(expr, limit)
        from ibis.formats.pyarrow import PyArrowData

        table = expr.as_table()
        self.con._run_pre_execute_hooks(table)  # type: ignore[attr-defined]
        result = self.con._session.sql(self.con.compile(table, limit=limit)).toArrow()  # type: ignore[attr-defined]
        return expr.__pyarrow_result__(PyArrowData.convert_table(result, table.schema()))  # type: ignore[no-any-return]

    def count(self, expr: ir.Table) -> int:
        return int(self._arrow(expr.count().as_table()).column(0)[0].as_py())

    def list_schemas(self) -> list[str]:
        return [str(row[0]) for row in self.con.raw_sql("SHOW DATABASES").collect()]

    def _replace_table_as(self, name: str, expr: ir.Table, target: str, count: bool, kind: str | None) -> Any:
        """The query's rows written over the table by Spark itself (Ibis switches the
        session's database there and back around the same write)."""
        self.con._run_pre_execute_hooks(expr)  # type: ignore[attr-defined]
        frame = self.con._session.sql(self.compile(expr))  # type: ignore[attr-defined]
        try:
            frame.write.saveAsTable(self.qualified(name, target), format="parquet", mode="overwrite")
        except Exception as exc:
            raise WarehouseError(f"could not write table {target}.{name}: {database_message(exc)}") from exc
        return self.count_rows(name, target) if count else None

    def to_batches(self, expr: ir.Table, batch_rows: int | None = None) -> Iterator[pa.RecordBatch]:
        """The result in batches of at most ``batch_rows``; Spark hands it over whole (as
        Ibis's pyspark backend does), so this bounds the batches, not the memory."""
        for batch in self._arrow(expr).to_batches(max_chunksize=batch_rows or self.STREAM_BATCH_ROWS):
            self.rows_fetched += batch.num_rows
            yield batch

    def _create_from_arrow(self, name: str, table: pa.Table, target: str, overwrite: bool) -> bool:
        """Arrow straight into Spark (PySpark 4), not through pandas as Ibis does: the same
        Spark types as Ibis gives them (timestamps are instants in the session's UTC)."""
        if not _arrow_native():
            return False
        import ibis
        from ibis.backends.pyspark.datatypes import PySparkSchema

        schema = PySparkSchema.from_ibis(ibis.Schema.from_pyarrow(table.schema))
        frame = self.con._session.createDataFrame(table, schema=schema)  # type: ignore[attr-defined]
        frame.write.saveAsTable(self.qualified(name, target), format="parquet",
                                mode="overwrite" if overwrite else "error")
        return True

    # -- Spark DataFrames: what a node computes in Spark stays in Spark ------------------
    #
    # A model node on Spark (clv, propensity; recommend and clusters with MLlib) builds a
    # Spark DataFrame from the warehouse's query (``dataframe``), transforms it in the
    # executors (``mapInArrow``/``mapInPandas``, MLlib) and has Spark write it
    # (``write_dataframe``); its output is then a query over that table, which the engine
    # writes with one more Spark job (``_replace_table_as``). A DataFrame handed to
    # ``replace_table`` (a node's ``extra`` tables) is written by Spark the same way.
    # Only ``collect_dataframe`` brings rows to the driver: use it for small results.

    @property
    def session(self) -> Any:
        """The ``SparkSession`` behind Ibis's backend (classic, or Spark Connect's)."""
        return self.con._session  # type: ignore[attr-defined]

    def dataframe(self, expr: ir.Table) -> Any:
        """``expr`` as a Spark DataFrame: lazy, nothing runs and nothing reaches the driver."""
        self.con._run_pre_execute_hooks(expr)  # type: ignore[attr-defined]
        return self.session.sql(self.compile(expr))

    def write_dataframe(self, frame: Any, name: str, schema: str | None = None, count: bool = False) -> int | None:
        """Write a Spark DataFrame as table ``name`` (replacing a table or view of that name).

        Spark's executors write the Parquet files; no row passes through the driver. Returns
        the rows written when ``count`` (one more Spark job), else None. Use it for what a
        node computed in Spark (``NodeOutput(table=wh.table(name))`` then reads it back as a
        query), or pass the DataFrame to ``replace_table``, which calls this.
        """
        target = schema or self.schema
        self._ensure_schema(target)
        if self.relation_kind(name, target) == "view":
            self._drop(name, target, "view")
        try:
            frame.write.saveAsTable(self.qualified(name, target), format="parquet", mode="overwrite")
        except Exception as exc:
            self._kinds.pop(target, None)
            raise WarehouseError(f"could not write table {target}.{name}: {database_message(exc)}") from exc
        self._noted(name, target, "table")
        return self.count_rows(name, target) if count else None

    def collect_dataframe(self, frame: Any) -> pa.Table:
        """A small Spark result (an aggregate, a bounded sample) as Arrow on the driver;
        counted in ``rows_fetched``, as every row segloop moves into Python."""
        import pyarrow as pa

        table = frame.toArrow() if _arrow_native() else pa.Table.from_pandas(frame.toPandas(), preserve_index=False)
        self.rows_fetched += table.num_rows
        return table

    def _replace_table(self, name: str, obj: Any, target: str, count: bool, kind: str | None) -> int | None:
        if is_spark_dataframe(obj):
            return self.write_dataframe(obj, name, target, count=count)
        return super()._replace_table(name, obj, target, count, kind)

    def insert(self, name: str, obj: ir.Table | pa.Table | Any, schema: str | None = None) -> None:
        """Append rows; an Arrow table (a batch of a streamed node output) goes straight into
        Spark (PySpark 4), not through pandas and a temporary view as Ibis does."""
        if not (is_arrow_table(obj) and _arrow_native()):
            super().insert(name, obj, schema)
            return
        import ibis
        from ibis.backends.pyspark.datatypes import PySparkSchema

        qualified = self.qualified(name, schema or self.schema)
        columns = self.session.table(qualified).columns
        if sorted(c.lower() for c in columns) != sorted(c.lower() for c in obj.column_names):
            super().insert(name, obj, schema)  # let Ibis say what does not match
            return
        spark_schema = PySparkSchema.from_ibis(ibis.Schema.from_pyarrow(obj.schema))
        frame = self.session.createDataFrame(obj, schema=spark_schema)
        frame.select(*columns).write.insertInto(qualified)  # by position: the table's order

    def _raw_sql(self, query: str) -> Any:
        """Run SQL; a DELETE or UPDATE on a table whose format has none (Parquet: local mode's
        tables) rewrites the table instead (``_rewrite``). Delta tables do it themselves."""
        try:
            return super()._raw_sql(query)
        except Exception as exc:
            if not _unsupported_operation(exc) or not self._rewrite(query):
                raise
            return None

    def _rewrite(self, query: str) -> bool:
        """Do a ``DELETE FROM t [WHERE c]`` or ``UPDATE t SET ... [WHERE c]`` by rewriting
        ``t``: the rows kept (``EXCEPT ALL`` the matched ones) and the updated ones go to a
        scratch table, then back with ``INSERT OVERWRITE`` (Spark cannot overwrite a table
        it reads). False when ``query`` is neither. Not atomic: a process killed during the
        overwrite leaves the rows in the scratch table ``<t>__segloop_rewrite``.
        """
        import sqlglot
        import sqlglot.expressions as exp

        try:
            tree = sqlglot.parse_one(query, read=self.dialect)
        except sqlglot.errors.ParseError:
            return False
        if not isinstance(tree, exp.Delete | exp.Update) or not isinstance(tree.this, exp.Table):
            return False
        table = tree.this
        target = table.sql(dialect=self.dialect)
        where = tree.args.get("where")
        matched = f"SELECT * FROM {target}" + (f" WHERE {where.this.sql(dialect=self.dialect)}" if where else "")
        if isinstance(tree, exp.Delete) and where is None:
            super()._raw_sql(f"TRUNCATE TABLE {target}")
            return True
        rows = f"SELECT * FROM {target} EXCEPT ALL {matched}"
        if isinstance(tree, exp.Update):
            sets = {eq.this.name.lower(): eq.expression.sql(dialect=self.dialect) for eq in tree.expressions}
            columns = self.con.raw_sql(f"SELECT * FROM {target} LIMIT 0").columns
            values = ", ".join(f"{sets[c.lower()]} AS {self.quote(c)}" if c.lower() in sets else self.quote(c)
                               for c in columns)
            rows = f"{rows} UNION ALL SELECT {values} FROM ({matched}) AS _segloop_matched"
        scratch = table.copy()
        scratch.set("this", exp.to_identifier(f"{table.name}__segloop_rewrite", quoted=True))
        scratch_sql = scratch.sql(dialect=self.dialect)
        super()._raw_sql(f"DROP TABLE IF EXISTS {scratch_sql}")
        super()._raw_sql(f"CREATE TABLE {scratch_sql} USING parquet AS {rows}")
        super()._raw_sql(f"INSERT OVERWRITE TABLE {target} SELECT * FROM {scratch_sql}")
        super()._raw_sql(f"DROP TABLE {scratch_sql}")
        return True

    def list_tables(self, schema: str | None = None) -> list[str]:
        """Tables and views stored in ``schema``, without the session's temporary views.

        Spark's ``SHOW TABLES IN db`` also lists every temporary view of the session (Ibis
        registers each Arrow table it uploads as one, ``ibis_pyarrow_memtable_...``); read
        as tables of ``db`` they are "not found", so a `segment_source` would fail on them.
        """
        rows = self.raw_sql(f"SHOW TABLES IN {self.quote(schema or self.schema)}").collect()
        return [row["tableName"] for row in rows if not row["isTemporary"]]

    def _kinds_query(self, target: str) -> str | None:
        return None  # the metastore lists views apart (see _relation_kind_of)

    def _relation_kind_of(self, name: str, target: str) -> str | None:
        try:
            rows = self.raw_sql(f"SHOW VIEWS IN {self.quote(target)} LIKE {sql_literal(name)}").collect()
        except Exception:
            rows = []
        # The metastore keeps names in lower case.
        if any(row["viewName"].lower() == name.lower() and not row["isTemporary"] for row in rows):
            return "view"
        return super()._relation_kind_of(name, target)

    def _disconnect(self) -> None:
        # The Spark session lives as long as the process: other connections in this
        # process share it (getOrCreate), and an in-memory catalog would be lost.
        return


def is_spark_dataframe(obj: object) -> bool:
    """Whether ``obj`` is a Spark DataFrame (classic or Spark Connect), without importing pyspark."""
    return type(obj).__module__.startswith("pyspark.") and type(obj).__name__ == "DataFrame"


def spark_warehouse(warehouse: Warehouse) -> PySparkWarehouse | None:
    """``warehouse`` when it runs on Spark (its nodes can use DataFrames), else None."""
    return warehouse if isinstance(warehouse, PySparkWarehouse) else None


@cache
def _arrow_native() -> bool:
    """PySpark 4 takes and gives Arrow tables itself (``createDataFrame``, ``toArrow``)."""
    import pyspark

    return int(pyspark.__version__.split(".")[0]) >= 4


def _unsupported_operation(exc: BaseException) -> bool:
    """Whether Spark refused a DELETE or UPDATE because the table's format cannot do it."""
    text = str(exc)
    return any(says in text for says in UNSUPPORTED_DML)


# What Spark says when a table's format (Parquet) has no DELETE / UPDATE: Spark 3.4+ for
# DELETE, older Spark for DELETE, every Spark so far for UPDATE.
UNSUPPORTED_DML = ("UNSUPPORTED_FEATURE.TABLE_OPERATION", "only supported with v2 tables",
                   "UPDATE TABLE is not supported")


@cache
def spark_with_quoted_identifiers() -> Any:
    """Spark SQL, except that ``"double quotes"`` name an identifier instead of a string.

    What sql nodes are read as on Spark (``Warehouse.node_sql_dialect``): standard SQL
    quoting, so ``select "timestamp" from ...`` reads the column, as on DuckDB, PostgreSQL
    and Snowflake, and is written out with Spark's backticks. Strings take single quotes;
    backticks still quote identifiers.
    """
    from sqlglot.dialects.spark import Spark

    class SparkQuotedIdentifiers(Spark):
        class Tokenizer(Spark.Tokenizer):
            QUOTES = [quote for quote in Spark.Tokenizer.QUOTES if quote != '"']
            IDENTIFIERS = [*Spark.Tokenizer.IDENTIFIERS, '"']

    return SparkQuotedIdentifiers
