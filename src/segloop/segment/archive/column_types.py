"""Column types of loaded Segment data: chosen from every value, widened, never lossy.

Segment fixes a column's type by the first value it sees and then truncates or nulls what
does not fit (`price: 5` first, then `2.25` loads as `2`). segloop keeps the five
Segment types (`timestamp`, `integer`, `float`, `boolean`, `varchar`) plus `decimal` for
integers beyond 64 bits, and follows three rules:

- a new column's type is the narrowest one that holds **all** its values in the load:
  integers and fractions make `float` (`decimal` when an integer is beyond 2**53, where a
  double would change it), integers beyond 64 bits make `decimal`, values of different
  kinds (a number and a word) make `varchar`;
- an existing column **widens** in place when a number needs it: `integer` -> `float` or
  `decimal`, and to `varchar` only where no exact number type of the warehouse holds both
  (DuckDB's DECIMAL stops at 38 digits and holds no fraction here);
- a value of another kind (a word in a number column, a number in a boolean one, a string
  that is no date-time in a timestamp one) is not coerced: the row keeps NULL there and
  the value goes, whole, to the rejects table with the reason. Values that convert exactly
  (a number into a `varchar` column, `"true"` into a boolean, an integer into a `float`
  column) are stored and counted as converted.

This module is pure (no I/O): the load writer asks it and runs the SQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

import orjson

from segloop.segment.schema import MAX_STRING_CHARS, parse_timestamp

Kind = Literal["timestamp", "integer", "float", "decimal", "boolean", "varchar"]

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
EXACT_IN_DOUBLE = 2**53  # every integer up to this is exactly a double
NUMBER_KINDS = frozenset({"integer", "float", "decimal"})


@dataclass(frozen=True)
class NumberTypes:
    """What a warehouse's exact number type holds (from its config's class attributes)."""

    decimal_sql: str = "NUMERIC"  # the SQL type of `decimal` columns
    max_digits: int | None = None  # None: any number of digits (PostgreSQL NUMERIC)
    fractions: bool = True  # whether `decimal` holds fractions exactly too


@dataclass
class ValueStats:
    """What the values of one column in one load look like (enough to choose its type)."""

    kinds: set[str]
    max_abs_int: int = 0
    max_digits: int = 0
    text_dates: bool = True  # every string is a date-time (checked until one is not)

    @classmethod
    def empty(cls) -> ValueStats:
        return cls(kinds=set())

    @classmethod
    def of(cls, values: list[Any]) -> ValueStats:
        """The stats of a column's values (None skipped); mostly C loops over the list."""
        stats = cls.empty()
        types = set(map(type, values))
        types.discard(type(None))
        for kind in types:
            if kind is float:
                stats.kinds.add("float")
            elif kind is bool:
                stats.kinds.add("boolean")
            elif kind is datetime:
                stats.kinds.add("timestamp")
            elif kind is int:
                ints = [v for v in values if type(v) is int]
                stats.max_abs_int = max(map(abs, ints))
                stats.max_digits = len(str(stats.max_abs_int))
                too_big = stats.max_abs_int > INT64_MAX and (max(ints) > INT64_MAX or min(ints) < INT64_MIN)
                stats.kinds.add("integer")
                if too_big:
                    stats.kinds.add("decimal")
            elif kind is str:
                for value in values:  # stops at the first string that is no date-time
                    if type(value) is str and parse_timestamp(value) is None:
                        stats.text_dates = False
                        break
                stats.kinds.add("timestamp" if stats.text_dates else "varchar")
            else:
                stats.kinds.update(natural_kind(v) for v in values if type(v) is kind)
        return stats


def natural_kind(value: Any) -> str:
    """The type a value would give a column of its own."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer" if INT64_MIN <= value <= INT64_MAX else "decimal"
    if isinstance(value, float):
        return "float"
    if isinstance(value, datetime):
        return "timestamp"
    if isinstance(value, str) and parse_timestamp(value) is not None:
        return "timestamp"
    return "varchar"


def _number_join(stats: ValueStats, numbers: NumberTypes) -> Kind:
    """The narrowest exact type for a set of number kinds (varchar where none is exact)."""
    kinds = stats.kinds
    big = "decimal" in kinds or stats.max_abs_int > INT64_MAX
    if big and numbers.max_digits is not None and stats.max_digits > numbers.max_digits:
        return "varchar"
    if "float" not in kinds:
        return "decimal" if big else "integer"
    if not big and stats.max_abs_int <= EXACT_IN_DOUBLE:
        return "float"
    return "decimal" if numbers.fractions else "varchar"


def column_kind(stats: ValueStats, numbers: NumberTypes) -> Kind:
    """The type of a new column: the narrowest one holding every value seen."""
    kinds = stats.kinds
    if not kinds:
        return "varchar"
    if kinds <= NUMBER_KINDS:
        return _number_join(stats, numbers)
    if len(kinds) == 1:
        (kind,) = kinds
        return kind  # type: ignore[return-value]
    return "varchar"


def widened_kind(current: Kind, stats: ValueStats, existing_max_abs: int, numbers: NumberTypes) -> Kind:
    """The type an existing column must take to hold new numbers (``current`` when it holds them).

    Only number columns widen; values of other kinds are rejected one by one (see ``fit``).
    ``existing_max_abs`` is the largest magnitude already stored in an integer column.
    """
    if current not in NUMBER_KINDS:
        return current
    incoming = stats.kinds & NUMBER_KINDS
    if not incoming:
        return current
    merged = ValueStats(kinds={current, *incoming}, max_abs_int=max(stats.max_abs_int, existing_max_abs))
    merged.max_digits = len(str(merged.max_abs_int))
    wanted = _number_join(merged, numbers)
    if current == "decimal" and wanted == "float":
        return "decimal"
    return wanted


# -- one value into its column -------------------------------------------------------------


@dataclass(frozen=True)
class Fit:
    """A value as its column stores it, and what happened to it on the way."""

    value: Any
    outcome: Literal["ok", "converted", "rejected", "cut"] = "ok"
    reason: str = ""


OK_NONE = Fit(None)


def json_text(value: Any) -> str:
    """A value as JSON text (how rejects and the overflow column keep it)."""
    if isinstance(value, datetime):
        return orjson.dumps(value.isoformat()).decode()
    if isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= 2**64 - 1:
        return str(value)  # orjson stops at 64 bits
    return orjson.dumps(value).decode()


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    return json_text(value)


def fit(value: Any, kind: Kind, text_holds_nul: bool = True) -> Fit:
    """Put one value into a column of ``kind``: stored as it is, converted exactly, or rejected."""
    if value is None:
        return OK_NONE
    if kind == "varchar":  # the common case first: text into a text column
        is_text = isinstance(value, str)
        text = value if is_text else _text(value)
        if not text_holds_nul and "\x00" in text:
            return Fit(None, "rejected", "text with a NUL character, which this warehouse cannot store")
        if len(text) > MAX_STRING_CHARS:
            return Fit(text[:MAX_STRING_CHARS], "cut",
                       f"longer than {MAX_STRING_CHARS} characters; the column keeps the first {MAX_STRING_CHARS}")
        if is_text or isinstance(value, datetime):
            return Fit(text)
        return Fit(text, "converted")  # a number or a boolean, as its JSON text
    if kind == "timestamp" and isinstance(value, datetime):
        return Fit(value)
    natural = natural_kind(value)
    if kind == "timestamp":
        parsed = parse_timestamp(value) if isinstance(value, str) else None
        if parsed is None:
            return Fit(None, "rejected", f"{_described(natural, value)} in a timestamp column")
        return Fit(parsed)
    if kind == "boolean":
        if isinstance(value, bool):
            return Fit(value)
        if isinstance(value, str) and value in ("true", "false"):
            return Fit(value == "true", "converted")
        return Fit(None, "rejected", f"{_described(natural, value)} in a boolean column")
    if natural not in NUMBER_KINDS:
        article = "an" if kind == "integer" else "a"
        return Fit(None, "rejected", f"{_described(natural, value)} in {article} {kind} column")
    if kind == "integer":
        if natural == "integer":
            return Fit(value)
        return Fit(None, "rejected", f"{_described(natural, value)} in an integer column")
    if kind == "float":
        if natural == "float":
            return Fit(value)
        if natural == "integer" and abs(value) <= EXACT_IN_DOUBLE:
            return Fit(float(value), "converted")
        return Fit(None, "rejected", "an integer a double cannot hold exactly, in a float column")
    # decimal: staged as text and cast by the warehouse, so no digit is lost on the way
    if natural == "float":
        return Fit(repr(value), "converted")
    return Fit(str(Decimal(value)), "converted" if natural == "integer" else "ok")


def _described(natural: str, value: Any) -> str:
    names = {
        "varchar": "text", "integer": "an integer", "float": "a fraction", "decimal": "an integer",
        "boolean": "a boolean", "timestamp": "a date-time",
    }
    return names.get(natural, "a value")
