"""The base of every warehouse config: a frozen pydantic model with a ``type`` and a ``schema``.

Each backend module adds its settings and a ``connect(root)`` that returns an Ibis backend.
Drivers are optional extras, imported inside ``connect`` so that a workspace using DuckDB
never needs them; a missing driver is a ``MissingDriverError`` naming the extra to install.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from segloop.errors import MissingDriverError
from segloop.masking import REDACTED, mask_text
from segloop.secrets import resolve_secret

if TYPE_CHECKING:  # pragma: no cover
    import ibis

    from segloop.warehouses.base import WarehouseClass


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
    DRIVER_MODULES: ClassVar[tuple[str, ...]] = ()
    # What the archive loader may ask of a table (segloop.segment.archive.load_writer):
    MAX_TABLE_COLUMNS: ClassVar[int] = 1600  # columns a table may have (unknown: Redshift's)
    MAX_ROW_BYTES: ClassVar[int | None] = None  # bytes of a row's values held in the row itself
    EXACT_NUMBER_SQL: ClassVar[str] = "NUMERIC"  # integers beyond 64 bits, exactly
    EXACT_NUMBER_DIGITS: ClassVar[int | None] = None  # digits it holds (None: any)
    EXACT_NUMBER_FRACTIONS: ClassVar[bool] = True  # whether it holds fractions exactly too
    TEXT_HOLDS_NUL: ClassVar[bool] = True  # whether text may contain the NUL character

    @property
    def output_schema(self) -> str:
        return self.schema_ or self.DEFAULT_SCHEMA

    def connect(self, root: Path) -> ibis.BaseBackend:
        raise NotImplementedError

    @classmethod
    def warehouse_class(cls) -> WarehouseClass:
        """The ``Warehouse`` subclass that opens this config (defined in the same module)."""
        raise NotImplementedError

    def describe(self) -> str:
        """Where this warehouse is, for messages (never includes a secret)."""
        return self.type

    def require_driver(self) -> None:
        """Import the optional driver modules; a missing one names the extra to install."""
        for module in self.DRIVER_MODULES:
            import_driver(module, self.type, self.EXTRA or self.type)


def import_driver(module: str, warehouse_type: str, extra: str) -> ModuleType:
    """Import an optional driver module or raise MissingDriverError naming the pip extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDriverError(warehouse_type, extra) from exc


def secret_value(ref: str | None, where: str) -> str | None:
    """The value of a ``${ENV}`` reference (or None when the field is not set)."""
    return resolve_secret(ref, where).get_secret_value() if ref else None


def quote_ident(name: str) -> str:
    """An identifier in standard SQL double quotes (PostgreSQL, DuckDB, Snowflake)."""
    return '"' + name.replace('"', '""') + '"'


def redact(text: str, *secrets: str | None) -> str:
    """Replace every secret value in ``text``, and URL credentials (segloop.masking), by ``[secure]``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return mask_text(text)


def workspace_path(path: str, root: Path) -> Path:
    """A path from a config file: relative paths are relative to the workspace root."""
    file = Path(path).expanduser()
    return file if file.is_absolute() else root / file
