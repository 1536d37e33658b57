"""Checks shared by operators: the configured columns must exist in the input table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from segloop.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    import ibis.expr.types as ir


def require_columns(
    table: ir.Table, keys: Mapping[str, str] | Sequence[tuple[str, str]], node: str, source: str
) -> None:
    """Raise a DataError naming the node, key and column when a configured column is missing.

    ``keys``: the config key of each column (``{"customer_id": "user_id"}``), or (key, column)
    pairs where a key names several columns (``[("properties", "iphone"), ...]``).
    """
    present = set(table.columns)
    pairs = keys.items() if isinstance(keys, Mapping) else keys
    missing = [(key, col) for key, col in pairs if col not in present]
    if missing:
        wrong = ", ".join(f"`{key}: {col}`" for key, col in missing)
        raise DataError(
            f"node `{node}`: {wrong} not found in input `{source}` "
            f"(its columns: {', '.join(table.columns)}); fix the column name in the pipeline file"
        )


# Money is summed as DECIMAL(38, 6): exact, so every warehouse gets the same total whatever
# order it adds the rows in (a float SUM differs in the last bits between engines, which
# changes payload hashes and messageIds). Six places keep every real currency's minor unit.
MONEY_TYPE = "decimal(38, 6)"


def money(value: ir.Value) -> ir.NumericValue:
    """``value`` as an exact decimal for summing; missing amounts count as 0."""
    import ibis

    return value.cast(MONEY_TYPE).fill_null(ibis.literal(0, type=MONEY_TYPE))  # type: ignore[union-attr,no-any-return]
