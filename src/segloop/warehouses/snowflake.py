"""Snowflake: a database and compute warehouse, password or key-pair authentication."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, model_validator

from segloop.errors import WarehouseError
from segloop.secrets import SecretRef
from segloop.warehouses.base import Warehouse, WarehouseClass
from segloop.warehouses.config import WarehouseConfig, redact, secret_value, workspace_path

if TYPE_CHECKING:  # pragma: no cover
    import ibis


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
        return f"Snowflake account {self.account}, database {self.database}"

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
        }
        for key in ("warehouse", "role", "authenticator"):
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
    """Snowflake: the generic Ibis warehouse (information_schema listing, cursors closed)."""
