"""Small helpers about data and SQL shared by the warehouse classes.

Checks that tell Arrow tables from Ibis expressions without importing either, and the
bits of SQL text (literals, ``md5``) the generic warehouse writes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import ibis.expr.types as ir


def is_arrow_table(obj: object) -> bool:
    """Whether ``obj`` is a ``pyarrow.Table`` (without importing pyarrow)."""
    return type(obj).__module__.startswith("pyarrow") and type(obj).__name__ == "Table"


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
