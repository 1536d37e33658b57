"""Small helpers about data and SQL shared by the warehouse classes.

Checks that tell Arrow tables from Ibis expressions without importing either, the
bits of SQL text (literals, ``md5``) the generic warehouse writes, and what it asks of a
store of compiled SQL.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # pragma: no cover
    import ibis
    import ibis.expr.types as ir


class SqlStore(Protocol):
    """Where compiled SQL is kept between processes (``segloop.sql_cache.SqlCache``); a
    protocol, so the warehouses need not import the engine's cache."""

    def compile(self, op: Any, compile_fn: Callable[[], str]) -> str: ...

    def expressions_file(self, what: str, config: str, inputs: Sequence[ir.Table]) -> Path | None: ...

    def put_expressions(self, file: Path, queries: list[tuple[str, ibis.Schema]]) -> None: ...


def is_arrow_table(obj: object) -> bool:
    """Whether ``obj`` is a ``pyarrow.Table`` (without importing pyarrow)."""
    return type(obj).__module__.startswith("pyarrow") and type(obj).__name__ == "Table"


def is_arrow_stream(obj: object) -> bool:
    """Whether ``obj`` is a ``pyarrow.RecordBatchReader``: rows a node streams out in chunks."""
    return type(obj).__module__.startswith("pyarrow") and type(obj).__name__ == "RecordBatchReader"


def is_ibis_table(obj: object) -> bool:
    """Whether ``obj`` is an Ibis table expression (without importing Ibis)."""
    return type(obj).__module__.startswith("ibis.") and hasattr(obj, "op")


def has_memtable(expr: ir.Expr) -> bool:
    """Whether ``expr`` reads data held in this Python process (an Ibis memtable)."""
    import ibis.expr.operations as ops

    return bool(expr.op().find(ops.InMemoryTable))


def sql_literal(text: str) -> str:
    """A SQL string literal (names segloop builds; quotes doubled all the same)."""
    return "'" + text.replace("'", "''") + "'"


def md5(value: ir.StringValue) -> ir.StringValue:
    """SQL's ``md5(text)``: 32 hex digits on most warehouses (not BigQuery: bytes)."""
    import ibis

    @ibis.udf.scalar.builtin(name="md5")
    def md5(x: str) -> str:  # type: ignore[empty-body]
        ...

    return md5(value)
