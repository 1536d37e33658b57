"""Apache Spark through PySpark: local mode (``local[*]``) or a cluster's Spark Connect URL."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator

from segloop.errors import WarehouseError
from segloop.masking import mask_url
from segloop.secrets import SecretRef
from segloop.warehouses.base import Warehouse, WarehouseClass
from segloop.warehouses.config import WarehouseConfig, redact, secret_value, workspace_path
from segloop.warehouses.exprs import sql_literal

if TYPE_CHECKING:  # pragma: no cover
    import ibis


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
            )
            if self.driver_memory:
                builder = builder.config("spark.driver.memory", self.driver_memory)
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

    def connect(self, root: Path) -> ibis.BaseBackend:
        self.require_driver()
        import ibis

        token = secret_value(self.token, "Spark Connect token") if self.connect_url else None
        try:
            session = self.session_builder(root).getOrCreate()
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
