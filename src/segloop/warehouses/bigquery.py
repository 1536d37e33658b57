"""Google BigQuery: a project and dataset, a service-account key file or Application Default Credentials."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from segloop.errors import WarehouseError
from segloop.warehouses.base import Warehouse, WarehouseClass
from segloop.warehouses.config import WarehouseConfig, workspace_path

if TYPE_CHECKING:  # pragma: no cover
    import ibis
    import ibis.expr.types as ir


class BigQueryConfig(WarehouseConfig):
    """A BigQuery project; node outputs and sync state go to dataset ``schema`` (default: ``dataset_id``).

    Without ``credentials_file`` the Application Default Credentials are used
    (``gcloud auth application-default login``, or the VM's service account).
    """

    type: Literal["bigquery"] = "bigquery"
    project_id: str
    dataset_id: str = Field(description="Default dataset: sources are read and outputs written here.")
    credentials_file: str | None = Field(
        default=None, description="Service-account JSON key file; default: Application Default Credentials."
    )
    location: str | None = Field(default=None, description="Dataset location, e.g. US or EU.")

    EXTRA: ClassVar[str] = "bigquery"
    MAX_TABLE_COLUMNS: ClassVar[int] = 10_000
    DRIVER_MODULES: ClassVar[tuple[str, ...]] = ("google.cloud.bigquery", "ibis.backends.bigquery")

    @property
    def output_schema(self) -> str:
        return self.schema_ or self.dataset_id

    @classmethod
    def warehouse_class(cls) -> WarehouseClass:
        return BigQueryWarehouse

    def describe(self) -> str:
        return f"BigQuery project {self.project_id}, dataset {self.dataset_id}"

    def connect(self, root: Path) -> ibis.BaseBackend:
        self.require_driver()
        import ibis

        kwargs: dict[str, Any] = {"project_id": self.project_id, "dataset_id": self.dataset_id}
        if self.location:
            kwargs["location"] = self.location
        if self.credentials_file:
            key_file = workspace_path(self.credentials_file, root)
            if not key_file.exists():
                raise WarehouseError(
                    f"BigQuery credentials file {key_file} does not exist; fix `credentials_file` "
                    "or remove it to use Application Default Credentials"
                )
            from google.oauth2 import service_account

            kwargs["credentials"] = service_account.Credentials.from_service_account_file(str(key_file))
        try:
            return ibis.bigquery.connect(**kwargs)
        except Exception as exc:
            raise WarehouseError(f"cannot connect to {self.describe()}: {str(exc).strip()}") from None


class BigQueryWarehouse(Warehouse):
    """BigQuery: the catalog lives per dataset, and MD5 returns bytes."""

    def _kinds_query(self, target: str) -> str | None:
        return f"SELECT table_name, table_type FROM {self.quote(target)}.INFORMATION_SCHEMA.TABLES"

    def md5_hex(self, value: ir.StringValue) -> ir.StringValue:
        import ibis

        @ibis.udf.scalar.builtin(name="md5")
        def md5_bytes(x: str) -> bytes:  # type: ignore[empty-body]
            ...

        @ibis.udf.scalar.builtin(name="to_hex")
        def to_hex(x: bytes) -> str:  # type: ignore[empty-body]
            ...

        return to_hex(md5_bytes(value))  # BigQuery's MD5 returns BYTES
