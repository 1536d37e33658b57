"""The embedded default warehouse: a DuckDB file in the workspace (or ``:memory:``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from segloop.errors import WarehouseError
from segloop.warehouses.base import WarehouseConfig, workspace_path

if TYPE_CHECKING:  # pragma: no cover
    import ibis


class DuckDBConfig(WarehouseConfig):
    """The embedded default: a DuckDB file in the workspace (or ``:memory:``)."""

    type: Literal["duckdb"] = "duckdb"
    path: str = ".segloop/warehouse.duckdb"
    threads: int | None = None
    memory_limit: str | None = None

    def describe(self) -> str:
        return f"duckdb file {self.path}"

    def connect(self, root: Path) -> ibis.BaseBackend:
        import ibis

        if self.path == ":memory:":
            target = ":memory:"
        else:
            file = workspace_path(self.path, root)
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
