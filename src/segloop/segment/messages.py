"""Segment messages as plain dicts: building, JSON encoding, ids, size checks, row rendering.

Why plain dicts and bytes: a message is built once, encoded once with orjson (in C, no
recursive Python walk) and then moved around as ``bytes``, so batching can count the exact
request size and the sender threads only join byte strings.

Value conversion (``dumps``), decided once for every path (Client methods, pipeline rows):

* ``Decimal`` is written as a JSON *number* with exactly its digits (``Decimal("1.10")`` ->
  ``1.10``), never through ``float``; a non-finite Decimal becomes ``null``.
* ``float`` / numpy ``NaN`` and ``±inf`` become ``null`` (Segment answers ``400`` to bare
  ``NaN``, failing the whole batch).
* numpy scalars and arrays become numbers, booleans and lists.
* ``datetime`` becomes ISO-8601 with an offset; a naive datetime is taken as UTC.
  ``date`` becomes ``YYYY-MM-DD``. pandas ``Timestamp`` keeps its nanoseconds; ``NaT`` is ``null``.
* ``set``/``tuple`` become lists, ``Enum`` its value, ``bytes`` UTF-8 text, ``timedelta``
  seconds, pyarrow scalars their Python value. Anything else is refused with ``TypeError``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import Enum
from typing import Any

import orjson

from segloop.version import __version__

Message = dict[str, Any]

MAX_MESSAGE_BYTES = 32 * 1024
"""Segment refuses a message over 32 KB."""
MAX_MESSAGE_ID_CHARS = 100
"""Segment's ``messageId`` must be shorter than 100 characters."""
LIBRARY = {"name": "segloop", "version": __version__}
CALL_TYPES = ("track", "identify", "group", "page", "screen", "alias")

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NAIVE_UTC | orjson.OPT_NON_STR_KEYS
_VOLATILE = ("messageId", "sentAt", "receivedAt", "originalTimestamp", "writeKey")

# Reason codes, stable strings used as `rejected_by_reason` keys and in rejects tables.
TOO_LARGE = "too_large"
INVALID = "invalid_message"
UNSERIALISABLE = "unserialisable_value"
MISSING_CUSTOMER_ID = "missing_customer_id"


@dataclass(frozen=True)
class Rejection:
    """Why a message (or a row) is not sent: a stable ``reason`` code and a sentence."""

    reason: str
    detail: str


def _default(value: Any) -> Any:
    """orjson fallback for the types it does not encode itself (see the module docstring)."""
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value)) if value.is_finite() else None
    if isinstance(value, dt.datetime):  # pandas.Timestamp and other datetime subclasses
        if type(value).__name__ == "NaTType":
            return None
        text = value.isoformat()
        return text if value.tzinfo is not None else text + "+00:00"
    if type(value).__name__ == "NaTType":
        return None
    if isinstance(value, set | frozenset):
        return list(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if hasattr(value, "as_py"):  # pyarrow scalars
        return value.as_py()
    if hasattr(value, "tolist"):  # numpy object arrays / exotic numpy scalars
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):  # float subclasses
        return None
    raise TypeError(f"a value of type {type(value).__name__} cannot be sent to Segment")


def dumps(obj: Any) -> bytes:
    """Encode ``obj`` as compact JSON bytes with segloop's value conversions."""
    return orjson.dumps(obj, default=_default, option=_OPTIONS)


def canonical(obj: Any) -> bytes:
    """Encode with sorted keys, so equal content gives equal bytes (for hashing)."""
    return orjson.dumps(obj, default=_default, option=_OPTIONS | orjson.OPT_SORT_KEYS)


def payload_hash(message: Mapping[str, Any]) -> str:
    """A stable hash of a message's content, ignoring fields that change on every send.

    ``messageId``, ``sentAt``, ``receivedAt``, ``originalTimestamp`` and
    ``context.library`` are left out; ``timestamp`` is kept, so only set it from data
    (not from the clock) when re-sends must dedupe.
    """
    content = {k: v for k, v in message.items() if k not in _VOLATILE}
    context = content.get("context")
    if isinstance(context, Mapping) and "library" in context:
        content["context"] = {k: v for k, v in context.items() if k != "library"}
    return hashlib.blake2b(canonical(content), digest_size=16).hexdigest()


def message_id(*parts: object) -> str:
    """A deterministic messageId (35 characters) from namespace parts and a payload hash.

    Typical use: ``message_id(pipeline, node, customer_key, payload_hash(message))`` for a
    key's first send, plus the key's previous acknowledged messageId for every later one
    (``render_row``'s ``previous_id``): a retry of an unacknowledged send gets the same id
    and Segment drops the duplicate, while a new send (a value that changes back, say) gets
    a new id. Parts are length-prefixed, so ``("a", "bc")`` and ``("ab", "c")`` differ.
    """
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        text = "" if part is None else str(part)
        h.update(f"{len(text)}:{text}\x1f".encode())
    return "sl-" + h.hexdigest()


def random_message_id() -> str:
    return str(uuid.uuid4())


def stringify_id(value: Any) -> str | None:
    """Segment ids are strings; numbers (numpy ones too) become their decimal text."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if hasattr(value, "item"):  # numpy scalar
        return stringify_id(value.item())
    return str(value)


def format_timestamp(value: Any) -> str:
    """ISO-8601 with milliseconds and an offset; naive datetimes are UTC, strings pass."""
    if isinstance(value, str):
        return value
    if isinstance(value, dt.datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.isoformat(timespec="milliseconds")
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC).isoformat(
            timespec="milliseconds"
        )
    if hasattr(value, "astype"):  # numpy.datetime64
        return format_timestamp(value.astype("datetime64[us]").astype(dt.datetime))
    raise TypeError(f"timestamp must be a datetime or ISO-8601 string, got {type(value).__name__}")


_now_cache: tuple[int, str] = (-1, "")


def now_timestamp() -> str:
    """The current UTC time as ISO-8601 with milliseconds (cached per millisecond: hot path)."""
    global _now_cache
    now = time.time()
    ms = int(now * 1000)
    cached = _now_cache
    if cached[0] == ms:
        return cached[1]
    text = dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds")
    _now_cache = (ms, text)
    return text


def build(
    call: str,
    *,
    user_id: Any = None,
    anonymous_id: Any = None,
    event: str | None = None,
    properties: Mapping[str, Any] | None = None,
    traits: Mapping[str, Any] | None = None,
    group_id: Any = None,
    previous_id: Any = None,
    name: str | None = None,
    category: str | None = None,
    context: Mapping[str, Any] | None = None,
    timestamp: Any = None,
    integrations: Mapping[str, Any] | None = None,
    message_id: str | None = None,
) -> Message:
    """Build a message dict the way Segment's libraries do (no None fields, ids as strings).

    Adds ``context.library`` (segloop); leaves ``timestamp`` and ``messageId`` out when
    not given (the Client fills them in; the pipeline keeps ids deterministic).
    """
    if call not in CALL_TYPES:
        raise ValueError(f"unknown call type {call!r}; use one of {', '.join(CALL_TYPES)}")
    msg: Message = {"type": call}
    if call in ("track", "page", "screen"):
        msg["properties"] = dict(properties or {})
    if call in ("identify", "group"):
        msg["traits"] = dict(traits or {})
    if call == "track":
        msg["event"] = event
    if call in ("page", "screen"):
        if name is not None:
            msg["name"] = name
        if category is not None:
            msg["category"] = category
    if call == "group":
        msg["groupId"] = stringify_id(group_id)
    if call == "alias":
        msg["previousId"] = stringify_id(previous_id)
    uid = stringify_id(user_id)
    if uid is not None:
        msg["userId"] = uid
    aid = stringify_id(anonymous_id)
    if aid is not None:
        msg["anonymousId"] = aid
    if timestamp is not None:
        msg["timestamp"] = format_timestamp(timestamp)
    ctx = dict(context or {})
    ctx["library"] = dict(LIBRARY)
    msg["context"] = ctx
    msg["integrations"] = dict(integrations or {})
    if message_id is not None:
        msg["messageId"] = str(message_id)
    return msg


def validate(message: Mapping[str, Any]) -> Rejection | None:
    """Check what Segment requires of a message; ``None`` when it is fine."""
    call = message.get("type")
    if call not in CALL_TYPES:
        return Rejection(INVALID, f"`type` must be one of {', '.join(CALL_TYPES)}, got {call!r}")
    if not message.get("userId") and not message.get("anonymousId"):
        return Rejection(MISSING_CUSTOMER_ID, f"{call} message has neither userId nor anonymousId")
    if call == "track" and not (isinstance(message.get("event"), str) and message["event"]):
        return Rejection(INVALID, "track message has no `event` name")
    if call == "group" and not message.get("groupId"):
        return Rejection(INVALID, "group message has no `groupId`")
    if call == "alias" and not message.get("previousId"):
        return Rejection(INVALID, "alias message has no `previousId`")
    mid = message.get("messageId")
    if mid is not None and (not isinstance(mid, str) or len(mid) >= MAX_MESSAGE_ID_CHARS):
        return Rejection(INVALID, f"messageId must be a string under {MAX_MESSAGE_ID_CHARS} characters")
    return None


def encode(message: Mapping[str, Any]) -> bytes | Rejection:
    """Encode a message for sending, or say why it cannot be sent (never raises)."""
    try:
        data = dumps(message)
    except TypeError as exc:
        return Rejection(UNSERIALISABLE, str(exc))
    if len(data) > MAX_MESSAGE_BYTES:
        return Rejection(
            TOO_LARGE,
            f"message is {len(data):,} bytes, over Segment's {MAX_MESSAGE_BYTES:,}-byte limit; "
            "send fewer or shorter properties",
        )
    return data


# --- rendering warehouse rows ------------------------------------------------------------


@dataclass(frozen=True)
class RowMapping:
    """How a row (dict of column -> value) becomes a message; what the pipeline node holds.

    ``properties``/``traits`` are a list of columns (same names in Segment) or a mapping
    column -> property name. ``namespace`` (pipeline, node) feeds the deterministic messageId.
    """

    call: str = "track"
    customer_id: str | None = "user_id"
    event: str | None = None
    properties: Sequence[str] | Mapping[str, str] | None = None
    traits: Sequence[str] | Mapping[str, str] | None = None
    anonymous_id: str | None = None
    group_id: str | None = None
    timestamp: str | None = None
    context: Mapping[str, Any] | None = None
    namespace: tuple[str, ...] = field(default_factory=tuple)
    _property_pairs: tuple[tuple[str, str], ...] | None = field(init=False, repr=False, compare=False)
    _trait_pairs: tuple[tuple[str, str], ...] | None = field(init=False, repr=False, compare=False)
    _id_hasher: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.call not in CALL_TYPES or self.call == "alias":
            raise ValueError(f"call must be one of track, identify, group, page, screen; got {self.call!r}")
        if self.call == "track" and not self.event:
            raise ValueError("a track call needs an `event` name")
        if self.call == "group" and not self.group_id:
            raise ValueError("a group call needs a `group_id` column")
        if not self.customer_id and not self.anonymous_id:
            raise ValueError("name a `customer_id` or an `anonymous_id` column")
        props = tuple(_pairs(self.properties).items())
        traits = tuple(_pairs(self.traits).items())
        with_props = self.call in ("track", "page", "screen")
        object.__setattr__(self, "_property_pairs", props if with_props else None)
        object.__setattr__(self, "_trait_pairs", traits if not with_props else None)
        hasher = hashlib.blake2b(digest_size=16)
        for part in self.namespace:
            text = "" if part is None else str(part)
            hasher.update(f"{len(text)}:{text}\x1f".encode())
        object.__setattr__(self, "_id_hasher", hasher)

    def columns(self) -> list[str]:
        """Every input column the mapping reads (for checking them against a table)."""
        return list(dict.fromkeys(column for _, column in self.column_keys()))

    def column_keys(self) -> list[tuple[str, str]]:
        """(config key, input column) of every column the mapping reads, for error messages."""
        pairs = [(key, column) for key, column in (("customer_id", self.customer_id), ("anonymous_id", self.anonymous_id),
                                                    ("group_id", self.group_id), ("timestamp", self.timestamp)) if column]
        for key, spec in (("properties", self.properties), ("traits", self.traits)):
            pairs.extend((key, column) for column in _pairs(spec))
        return pairs


def _pairs(spec: Sequence[str] | Mapping[str, str] | None) -> dict[str, str]:
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        return {str(k): str(v) for k, v in spec.items()}
    return {str(c): str(c) for c in spec}


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    return isinstance(value, float) and math.isnan(value)


def render_row(row: Mapping[str, Any], mapping: RowMapping, previous_id: str | None = None) -> Message | Rejection:
    """Turn one row into a Segment message (with a deterministic messageId) or a Rejection.

    ``{user_id: '162514333', iphone: 0.734}`` with ``call=track, event='Sales Prediction',
    properties=['iphone']`` -> ``{'type': 'track', 'userId': '162514333', 'event':
    'Sales Prediction', 'properties': {'iphone': 0.734}, ...}``. The messageId equals
    ``message_id(*mapping.namespace, userId or anonymousId, payload_hash(message))``, with
    ``previous_id`` (the key's last acknowledged messageId, if any) as one more part: the
    same row sent again after an acknowledged send is a new message with a new id, while a
    retry of an unacknowledged send (same payload, same previous id) keeps its id.
    """
    call = mapping.call
    user = row.get(mapping.customer_id) if mapping.customer_id else None
    anon = row.get(mapping.anonymous_id) if mapping.anonymous_id else None
    user_missing = _is_missing(user)
    anon_missing = _is_missing(anon)
    if user_missing and anon_missing:
        cols = " or ".join(f"`{c}`" for c in (mapping.customer_id, mapping.anonymous_id) if c)
        return Rejection(MISSING_CUSTOMER_ID, f"column {cols} is empty in this row")
    msg: Message = {"type": call}
    if call == "track":
        msg["event"] = mapping.event
    if mapping._property_pairs is not None:
        msg["properties"] = {p: row.get(c) for c, p in mapping._property_pairs}
    if mapping._trait_pairs is not None:
        msg["traits"] = {t: row.get(c) for c, t in mapping._trait_pairs}
    if call == "group":
        group = row.get(mapping.group_id) if mapping.group_id else None
        if _is_missing(group):
            return Rejection(INVALID, f"column `{mapping.group_id}` (group id) is empty in this row")
        msg["groupId"] = stringify_id(group)
    key = None
    if not user_missing:
        key = msg["userId"] = user if type(user) is str else stringify_id(user)
    if not anon_missing:
        msg["anonymousId"] = aid = anon if type(anon) is str else stringify_id(anon)
        key = key or aid
    if mapping.timestamp:
        stamp = row.get(mapping.timestamp)
        if not (_is_missing(stamp) or _is_nat(stamp)):
            try:
                msg["timestamp"] = format_timestamp(stamp)
            except TypeError as exc:
                return Rejection(INVALID, f"column `{mapping.timestamp}`: {exc}")
    context = dict(mapping.context) if mapping.context else {}
    msg["context"] = context
    msg["integrations"] = {}
    # Hash before adding context.library: the same bytes payload_hash() would hash.
    try:
        content = canonical(msg)
    except TypeError as exc:
        return Rejection(UNSERIALISABLE, str(exc))
    h = mapping._id_hasher.copy()
    h.update(f"{len(key)}:{key}\x1f".encode())  # type: ignore[arg-type]
    digest = hashlib.blake2b(content, digest_size=16).hexdigest()
    h.update(f"{len(digest)}:{digest}\x1f".encode())
    if previous_id:
        h.update(f"{len(previous_id)}:{previous_id}\x1f".encode())
    context["library"] = {"name": "segloop", "version": __version__}
    msg["messageId"] = "sl-" + h.hexdigest()
    return msg


def _is_nat(value: Any) -> bool:
    return type(value).__name__ == "NaTType"


def render_rows(
    rows: Iterable[Mapping[str, Any]], mapping: RowMapping
) -> Iterable[Message | Rejection]:
    """``render_row`` over many rows, lazily."""
    for row in rows:
        yield render_row(row, mapping)
