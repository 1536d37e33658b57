"""PostgreSQL (also the shape of Segment's Postgres and Redshift-like warehouse destinations)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from segloop.errors import WarehouseError
from segloop.secrets import SecretRef
from segloop.warehouses.base import WarehouseConfig, redact, secret_value

if TYPE_CHECKING:  # pragma: no cover
    import ibis


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
    DRIVER_MODULES: ClassVar[tuple[str, ...]] = ("psycopg", "ibis.backends.postgres")

    def describe(self) -> str:
        return f"PostgreSQL at {self.host}:{self.port}/{self.database}"

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
            raise WarehouseError(
                redact(
                    f"cannot connect to {self.describe()} as {self.user or 'the current user'}: "
                    f"{str(exc).strip()}. Check host, port, user and that the server accepts "
                    "connections from this machine.",
                    password,
                )
            ) from None

