"""Segment's HTTP Tracking API requests: decode, check and stamp them (pure functions).

Separate from the server so the rules (limits, required ids, timestamps) read in one place
and are tested without HTTP. Anything refused as a whole raises ``BadRequest`` (a 400 with
a plain-text reason); a message that is merely incomplete is dropped and counted by reason.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from segloop.segment.archive.files import has_long_number, parse_line
from segloop.segment.schema import parse_timestamp

CALL_TYPES = ("identify", "track", "page", "screen", "group", "alias")
# analytics.js posts each call to `<apiHost>/<first letter of its type>`; `/b` is a batch.
SHORT_PATHS = {call[0]: call for call in CALL_TYPES}
_HOST = re.compile(r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")


class Limits:
    """Segment's documented limits (HTTP Tracking API)."""

    MAX_MESSAGE_BYTES = 32 * 1024
    MAX_REQUEST_BYTES = 500 * 1024
    MAX_BATCH_MESSAGES = 2500
    MAX_MESSAGE_ID_CHARS = 100


class BadRequest(Exception):
    """The whole request is refused with 400 and a plain-text reason; nothing is accepted."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


# -- parsing and checking (pure) ----------------------------------------------------------


def decode_body(raw: bytes, content_encoding: str | None) -> bytes:
    """The request body, gunzipped if needed, never larger than the request limit."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding in ("", "identity"):
        return raw
    if encoding != "gzip":
        raise BadRequest("bad_encoding", f"Content-Encoding `{encoding}` is not supported; send gzip or none")
    decompressor = zlib.decompressobj(31)
    try:
        # max_length bounds the output, so a small "gzip bomb" cannot take memory.
        out = decompressor.decompress(raw, Limits.MAX_REQUEST_BYTES + 1)
    except zlib.error:
        raise BadRequest("invalid_gzip", "the body is not valid gzip") from None
    if len(out) > Limits.MAX_REQUEST_BYTES:
        raise BadRequest("request_too_large", "the request is over 500 KB once decompressed")
    if not decompressor.eof:
        raise BadRequest("invalid_gzip", "the gzip body is truncated")
    return out


def parse_json(body: bytes) -> dict[str, Any]:
    """The JSON object in the body; bare NaN/Infinity are invalid JSON and refused."""
    if not body.strip():
        raise BadRequest("empty_body", "the body is empty; send a JSON object")
    try:
        # Integers beyond 64 bits are kept exactly (orjson would make them floats).
        data = parse_line(body, exact=has_long_number(body))
    except orjson.JSONDecodeError as exc:
        raise BadRequest("invalid_json", f"the body is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BadRequest("invalid_json", "the body must be a JSON object")
    return data


def dump_json(value: Any) -> bytes:
    """Compact JSON; integers beyond 64 bits (which orjson refuses) are written exactly too."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        if "64-bit" not in str(exc):
            raise  # nested too deeply: the caller drops the message
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def write_key_from(authorization: str | None, body: dict[str, Any]) -> str | None:
    """The write key: the user of HTTP Basic auth, else `writeKey` in the body."""
    if authorization and authorization[:6].lower() == "basic ":
        try:
            decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            decoded = ""
        user = decoded.split(":", 1)[0]
        if user:
            return user
    key = body.get("writeKey")
    return key if isinstance(key, str) and key else None


def _iso_ms(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Prepared:
    """Messages ready to archive plus what was dropped from the request, by reason."""

    lines: list[tuple[str, bytes]] = field(default_factory=list)  # (messageId, NDJSON line)
    dropped: Counter[str] = field(default_factory=Counter)
    received: int = 0
    over_limit: int = 0  # messages of a batch refused whole for being over 2,500 messages


def _has_id(value: Any) -> bool:
    return (isinstance(value, str) and value != "") or (
        isinstance(value, int | float) and not isinstance(value, bool)
    )


def _drop_reason(message: dict[str, Any]) -> str | None:
    call = message.get("type")
    if call not in CALL_TYPES:
        return "invalid_type"
    if not (_has_id(message.get("userId")) or _has_id(message.get("anonymousId"))):
        return "missing_user_id_and_anonymous_id"
    if call == "track" and not (isinstance(message.get("event"), str) and message["event"]):
        return "missing_event"
    if call == "group" and not _has_id(message.get("groupId")):
        return "missing_group_id"
    if call == "alias" and not _has_id(message.get("previousId")):
        return "missing_previous_id"
    message_id = message.get("messageId")
    if message_id is not None and (
        not isinstance(message_id, str) or len(message_id) >= Limits.MAX_MESSAGE_ID_CHARS
    ):
        return "invalid_message_id"
    return None


def _stamp(
    message: dict[str, Any], received_at: datetime, batch_sent_at: Any, batch_context: Any
) -> dict[str, Any]:
    """Add receivedAt, messageId and Segment's skew-corrected timestamp to a message."""
    out = {k: v for k, v in message.items() if k != "writeKey"}
    if isinstance(batch_context, dict):
        own = out.get("context")
        out["context"] = {**batch_context, **own} if isinstance(own, dict) else dict(batch_context)
    if not out.get("messageId"):
        out["messageId"] = f"segloop-{uuid.uuid4()}"
    sent_raw = out.get("sentAt", batch_sent_at)
    sent_at = parse_timestamp(sent_raw)
    original = parse_timestamp(out.get("timestamp"))
    out["receivedAt"] = _iso_ms(received_at)
    if sent_at is not None:
        out["sentAt"] = sent_raw
    else:
        out.pop("sentAt", None)
    if original is not None:
        out["originalTimestamp"] = out["timestamp"]
        try:
            corrected = received_at - (sent_at - original) if sent_at is not None else original
        except OverflowError:  # absurd clocks (year 1 vs year 9999): trust our own
            corrected = received_at
        out["timestamp"] = _iso_ms(corrected)
    else:
        out.pop("originalTimestamp", None)
        out["timestamp"] = _iso_ms(received_at)
    return out


def prepare(
    body: dict[str, Any], call: str | None, received_at: datetime, body_bytes: int | None = None
) -> Prepared:
    """Check and stamp the messages of one request (`call` is None for /v1/batch).

    Raises BadRequest for what Segment refuses as a whole (a message over 32 KB, a batch
    that is not a list). Per-message problems drop just that message, counted by reason.
    ``body_bytes`` (the decoded body's size) lets small requests skip the per-message
    size check: no message can be larger than the body holding it.
    """
    prepared = Prepared()
    if call is None:
        items = body.get("batch")
        if not isinstance(items, list):
            raise BadRequest("invalid_batch", "`batch` must be a list of messages")
        batch_context = body.get("context")
        batch_sent_at = body.get("sentAt")
    else:
        items = [{**body, "type": call}]
        batch_context = None
        batch_sent_at = None
    prepared.received = len(items)
    check_sizes = body_bytes is None or body_bytes > Limits.MAX_MESSAGE_BYTES
    for position, item in enumerate(items if check_sizes else ()):
        try:
            size = len(dump_json(item))
        except orjson.JSONEncodeError:
            continue  # nested too deeply to serialize; dropped below
        if size > Limits.MAX_MESSAGE_BYTES:
            raise BadRequest(
                "message_too_large",
                f"message {position} is {size:,} bytes; the limit is 32 KB per message",
            )
    if len(items) > Limits.MAX_BATCH_MESSAGES:
        # Segment answers 200 and silently rejects the whole batch; we do the same so
        # senders see what they would see in production, but count it and log it.
        prepared.over_limit = len(items)
        return prepared
    for item in items:
        if not isinstance(item, dict):
            prepared.dropped["not_an_object"] += 1
            continue
        reason = _drop_reason(item)
        if reason:
            prepared.dropped[reason] += 1
            continue
        stamped = _stamp(item, received_at, batch_sent_at, batch_context)
        try:
            line = dump_json(stamped)
        except orjson.JSONEncodeError:  # over 254 levels of nesting
            prepared.dropped["nested_too_deeply"] += 1
            continue
        prepared.lines.append((stamped["messageId"], line))
    return prepared


def analytics_js_settings(write_key: str, host: str | None, scheme: str, fallback_host: str) -> dict[str, Any]:
    """What analytics.js fetches from `<cdnURL>/v1/projects/<writeKey>/settings`.

    Segment's CDN answers with the source's destinations; here the only destination is
    Segment.io itself, with ``apiHost`` pointing back at this collector (the host the
    browser reached it by), so a page given the collector as ``cdnURL`` also sends its
    events here. ``metrics.sampleRate`` 0: analytics.js's own telemetry is of no use to
    the collector's users (posts to ``/v1/m`` are still answered, see the collector).
    """
    if not host or not _HOST.match(host):
        host = fallback_host
    api_host = f"{host}/v1"
    return {
        "integrations": {
            "Segment.io": {
                "apiKey": write_key,
                "apiHost": api_host,
                "protocol": "https" if scheme == "https" else "http",
                "unbundledIntegrations": [],
                "addBundledMetadata": True,
                "maybeBundledConfigIds": {},
            }
        },
        "plan": {
            "track": {"__default": {"enabled": True, "integrations": {}}},
            "identify": {"__default": {"enabled": True}},
            "group": {"__default": {"enabled": True}},
        },
        "edgeFunction": {},
        "analyticsNextEnabled": True,
        "middlewareSettings": {},
        "enabledMiddleware": {},
        "metrics": {"sampleRate": 0, "host": api_host},
        "legacyVideoPluginsEnabled": False,
        "remotePlugins": [],
    }
