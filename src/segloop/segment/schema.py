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
- `group` calls are upserted on `group_id` into `accounts` (the latest traits of each group,
  `id` = group id), as `identify` calls are into `users`;
- column types are `timestamp`, `integer`, `float`, `boolean`, `varchar` (Segment fixes
  them by the first value; segloop by every value, see ``segloop.segment.archive.column_types``);
  strings are cut at 512 characters.

segloop's own tables in a source schema start with `_segloop_` (``is_segloop_table``) and
are never Segment data. This module is pure (no I/O) so the loader and its tests share one
definition.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson

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
ACCOUNTS_TABLE = "accounts"
# Tables upserted on `id` (the user id, the group id) rather than appended.
UPSERT_TABLES = frozenset([USERS_TABLE, ACCOUNTS_TABLE])
SEGLOOP_PREFIX = "_segloop_"
LOADED_FILES_TABLE = "_segloop_loaded_files"
LOAD_REJECTS_TABLE = "_segloop_load_rejects"
# Properties a table has no room for (its warehouse's column limit) are kept here, as JSON.
OVERFLOW_COLUMN = "_segloop_overflow"
STANDARD_TABLES = frozenset([*CALL_TABLES.values(), USERS_TABLE, ACCOUNTS_TABLE])

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
    [*COMMON_COLUMNS, "event", "event_text", "uuid", "loaded_at", "context", OVERFLOW_COLUMN]
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


def is_segloop_table(name: str) -> bool:
    """Whether a table in a source schema is segloop's own bookkeeping, not Segment data."""
    return name.lower().startswith(SEGLOOP_PREFIX)


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
    if name in STANDARD_TABLES or is_segloop_table(name):
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


def _to_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode() if isinstance(value, dict | list) else str(value)


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
        raw = message.get(field)
        # A value that is no date-time stays as sent: the loader rejects it with a reason.
        row[col] = parse_timestamp(raw) if raw is not None else None
        if row[col] is None and raw is not None:
            row[col] = raw
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
    upsert_key = {"identify": ("user_id", USERS_TABLE), "group": ("group_id", ACCOUNTS_TABLE)}.get(call)
    if upsert_key is not None:
        key = _id_text(row.get(upsert_key[0]))
        if key is not None:
            latest: dict[str, Any] = {"id": key, "received_at": row["received_at"], "uuid_ts": loaded_at}
            latest.update(_payload_columns(payload, latest))
            rows.append((upsert_key[1], latest))
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
