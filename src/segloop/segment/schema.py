"""Segment's warehouse schema: how one raw message becomes rows in `tracks`, `users`, ...

Segment's warehouse connector turns each message into a row of a per-call table
(`identifies`, `tracks`, `pages`, `screens`, `groups`, `aliases`), a row of one table per
track event (`order_completed`), and an upsert into `users`. The rules reproduced here, from
Segment's "Warehouse Schemas" page:

- table and column names are snake_cased with go-snakecase's rules (`snake_case`);
- `context`, `properties` and `traits` are flattened with `_` (`context.library.name` ->
  `context_library_name`); arrays are stored as JSON strings; null values make no column;
- properties and traits become un-prefixed columns; one whose name collides with a reserved
  column (`id`, `user_id`, `context_*`, ...) is dropped;
- column types are `timestamp`, `integer`, `float`, `boolean`, `varchar`, fixed by the
  first value seen; strings are cut at 512 characters.

This module is pure (no I/O) so the loader and its tests share one definition.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Literal

import orjson

Kind = Literal["timestamp", "integer", "float", "boolean", "varchar"]

MAX_STRING_CHARS = 512
# PostgreSQL silently truncates identifiers to 63 bytes; cut them here so two long names
# cannot collide inside the database with a confusing error.
MAX_IDENTIFIER_CHARS = 63

CALL_TABLES = {
    "identify": "identifies",
    "track": "tracks",
    "page": "pages",
    "screen": "screens",
    "group": "groups",
    "alias": "aliases",
}
USERS_TABLE = "users"
LOADED_FILES_TABLE = "_segloop_loaded_files"
STANDARD_TABLES = frozenset([*CALL_TABLES.values(), USERS_TABLE, LOADED_FILES_TABLE])

COMMON_COLUMNS = (
    "id",
    "anonymous_id",
    "user_id",
    "received_at",
    "sent_at",
    "timestamp",
    "original_timestamp",
    "uuid_ts",
)
# Column names a property or trait may never take (Segment discards such properties).
RESERVED_COLUMNS = frozenset(
    [*COMMON_COLUMNS, "event", "event_text", "uuid", "loaded_at", "context"]
)
# Top-level message fields that become columns of their call's table.
TOP_LEVEL_COLUMNS: dict[str, dict[str, str]] = {
    "track": {"event": "event"},
    "page": {"name": "name", "category": "category"},
    "screen": {"name": "name", "category": "category"},
    "group": {"groupId": "group_id"},
    "alias": {"previousId": "previous_id"},
    "identify": {},
}
PAYLOAD_FIELD = {
    "track": "properties",
    "page": "properties",
    "screen": "properties",
    "identify": "traits",
    "group": "traits",
    "alias": None,
}
TIMESTAMP_FIELDS = {
    "receivedAt": "received_at",
    "sentAt": "sent_at",
    "timestamp": "timestamp",
    "originalTimestamp": "original_timestamp",
}

_ISO_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


# -- names --------------------------------------------------------------------------------


def _is_lower(c: int) -> bool:
    return 97 <= c <= 122


def _is_upper(c: int) -> bool:
    return 65 <= c <= 90


def _is_digit(c: int) -> bool:
    return 48 <= c <= 57


@lru_cache(maxsize=65_536)  # the same few hundred keys repeat in every message
def snake_case(name: str) -> str:
    """Snake-case a name exactly as Segment's go-snakecase does (bytes, ASCII only).

    "Order Completed" -> "order_completed", "productId" -> "product_id",
    "___$$Base64Encode" -> "base64_encode"; characters other than ASCII letters and
    digits separate words and are dropped.
    """
    s = name.encode("utf-8")
    n = len(s)
    idx = 0
    # A leading run of lowercase/digits (and `_` followed by one) is kept unchanged.
    while idx < n and (
        _is_lower(s[idx])
        or _is_digit(s[idx])
        or (s[idx] == 95 and idx < n - 1 and (_is_lower(s[idx + 1]) or _is_digit(s[idx + 1])))
    ):
        idx += 1
    if idx == n:
        return name
    if idx > 0 and _is_digit(s[idx - 1]):
        idx -= 1  # a digit followed by an uppercase letter starts the next word
    out = bytearray(s[:idx])
    while idx < n:
        c = s[idx]
        if not (_is_lower(c) or _is_upper(c) or _is_digit(c)):
            idx += 1
            continue
        if out:
            out.append(95)
        while idx < n and (_is_upper(s[idx]) or _is_digit(s[idx])):
            out.append(s[idx] + 32 if _is_upper(s[idx]) else s[idx])
            idx += 1
        while idx < n and (_is_lower(s[idx]) or _is_digit(s[idx])):
            out.append(s[idx])
            idx += 1
    return out.decode("ascii")


def column_name(path: str) -> str:
    return path[:MAX_IDENTIFIER_CHARS]


def event_table_name(event: str) -> str | None:
    """The table of a track event, or None when the name has no letters or digits.

    A name that would start with a digit gets a leading `_`; one that would collide with
    a standard table (`tracks`, `users`, ...) gets an `event_` prefix so it cannot
    overwrite it (Segment's behaviour there is undocumented).
    """
    name = snake_case(event)
    if not name:
        return None
    if name[0].isdigit():
        name = "_" + name
    if name in STANDARD_TABLES:
        name = "event_" + name
    return column_name(name)


# -- values -------------------------------------------------------------------------------


def flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested objects with `_`, snake-casing each key; arrays become JSON strings.

    Null values are skipped: Segment creates a column only for a non-null value. When two
    keys snake-case to the same column, the first one wins.
    """
    out: dict[str, Any] = {}
    for key, value in obj.items():
        part = snake_case(str(key))
        if not part:
            continue
        name = f"{prefix}_{part}" if prefix else part
        if isinstance(value, dict):
            for sub, sub_value in flatten(value, name).items():
                out.setdefault(sub, sub_value)
        elif isinstance(value, list):
            out.setdefault(column_name(name), orjson.dumps(value).decode())
        elif value is not None:
            out.setdefault(column_name(name), value)
    return out


def parse_timestamp(value: Any) -> datetime | None:
    """An ISO-8601 date-time as an aware UTC datetime (naive ones are taken as UTC)."""
    if not isinstance(value, str) or not _ISO_DATETIME.match(value):
        return None
    text = value.strip()
    try:
        parsed = datetime.fromisoformat(text)
        if parsed.tzinfo is None:
            return parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def infer_kind(value: Any) -> Kind:
    """The warehouse type a first value fixes for its column."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer" if _INT64_MIN <= value <= _INT64_MAX else "float"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str) and parse_timestamp(value) is not None:
        return "timestamp"
    return "varchar"


def _to_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    return orjson.dumps(value).decode() if isinstance(value, dict | list) else str(value)


def cast_value(value: Any, kind: Kind) -> Any:
    """Coerce a value into its column's type; a value that does not fit becomes null."""
    if value is None:
        return None
    try:
        if kind == "varchar":
            return _to_text(value)[:MAX_STRING_CHARS]
        if kind == "timestamp":
            return value if isinstance(value, datetime) else parse_timestamp(value)
        if kind == "boolean":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            return None
        if kind == "integer":
            if isinstance(value, bool):
                return None
            if isinstance(value, str):
                value = float(value) if any(c in value for c in ".eE") else int(value)
            # Segment's docs: a float in an integer column loses its fraction, it is not dropped.
            number = int(value)
            return number if _INT64_MIN <= number <= _INT64_MAX else None
        if kind == "float":
            if isinstance(value, bool):
                return None
            real = float(value)
            return real if real == real and abs(real) != float("inf") else None
    except (TypeError, ValueError, OverflowError):
        return None
    return None


# -- messages -> rows ---------------------------------------------------------------------


def _id_text(value: Any) -> str | None:
    if value is None or isinstance(value, bool) or value == "":
        return None
    return value if isinstance(value, str) else _to_text(value)


def message_rows(message: dict[str, Any], loaded_at: datetime) -> list[tuple[str, dict[str, Any]]]:
    """The (table, row) pairs Segment's warehouse connector writes for one raw message.

    Unknown or incomplete messages (no type, a track without event) give no rows.
    """
    call = message.get("type")
    if call not in CALL_TABLES:
        return []
    row: dict[str, Any] = {
        "id": _id_text(message.get("messageId")),
        "anonymous_id": _id_text(message.get("anonymousId")),
        "user_id": _id_text(message.get("userId")),
    }
    for field, col in TIMESTAMP_FIELDS.items():
        row[col] = parse_timestamp(message.get(field))
    row["uuid_ts"] = loaded_at
    context = message.get("context")
    if isinstance(context, dict):
        row.update(flatten(context, "context"))
    for field, col in TOP_LEVEL_COLUMNS[call].items():
        value = message.get(field)
        if value is not None and not isinstance(value, dict | list):
            row[col] = value
    rows: list[tuple[str, dict[str, Any]]] = []
    if call == "track":
        event_text = message.get("event")
        if not isinstance(event_text, str) or not event_text:
            return []
        row["event"] = snake_case(event_text)
        row["event_text"] = event_text
        rows.append(("tracks", dict(row)))
        table = event_table_name(event_text)
        if table is None:
            return rows
        rows.append((table, _with_payload(row, message.get("properties"))))
        return rows
    payload_field = PAYLOAD_FIELD[call]
    payload = message.get(payload_field) if payload_field else None
    full = _with_payload(row, payload)
    rows.append((CALL_TABLES[call], full))
    if call == "identify" and row["user_id"] is not None:
        user: dict[str, Any] = {
            "id": row["user_id"],
            "received_at": row["received_at"],
            "uuid_ts": loaded_at,
        }
        user.update(_payload_columns(payload, user))
        rows.append((USERS_TABLE, user))
    return rows


def _payload_columns(payload: Any, taken: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(payload, dict):
        return {}
    return {
        col: value
        for col, value in flatten(payload).items()
        if col not in RESERVED_COLUMNS and col not in taken and not col.startswith("context_")
    }


def _with_payload(row: dict[str, Any], payload: Any) -> dict[str, Any]:
    out = dict(row)
    out.update(_payload_columns(payload, row))
    return out
