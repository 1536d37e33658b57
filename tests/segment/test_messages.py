"""Messages: JSON-safe values, deterministic ids, size limits, rows rendered into calls."""

from __future__ import annotations

import datetime as dt
import enum
from decimal import Decimal

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pytest

from segloop.segment import messages as m

ROW = {"user_id": "162514333", "iphone": 0.734, "apple_watch": 0.812}


def test_row_becomes_the_track_call_from_the_issue() -> None:
    mapping = m.RowMapping(call="track", event="Sales Prediction",
                           properties=["iphone", "apple_watch"], namespace=("shop", "to_segment"))
    msg = m.render_row(ROW, mapping)
    assert isinstance(msg, dict)
    mid = msg.pop("messageId")
    assert msg == {
        "type": "track",
        "userId": "162514333",
        "event": "Sales Prediction",
        "properties": {"iphone": 0.734, "apple_watch": 0.812},
        "context": {"library": {"name": "segloop", "version": m.LIBRARY["version"]}},
        "integrations": {},
    }
    assert mid.startswith("sl-") and len(mid) < m.MAX_MESSAGE_ID_CHARS


def test_message_id_is_stable_for_the_same_row_and_changes_with_content_or_node() -> None:
    mapping = m.RowMapping(event="Sales Prediction", properties=["iphone"], namespace=("p", "n"))
    first = m.render_row(ROW, mapping)
    again = m.render_row(dict(ROW), mapping)
    changed = m.render_row({**ROW, "iphone": 0.735}, mapping)
    other_node = m.render_row(ROW, m.RowMapping(event="Sales Prediction", properties=["iphone"],
                                                namespace=("p", "other")))
    ids = [x["messageId"] for x in (first, again, changed, other_node)]  # type: ignore[index]
    assert ids[0] == ids[1]
    assert len({ids[0], ids[2], ids[3]}) == 3


def test_message_id_parts_cannot_run_together() -> None:
    assert m.message_id("a", "bc") != m.message_id("ab", "c")


def test_payload_hash_ignores_volatile_fields_but_not_content() -> None:
    base = m.build("track", user_id="u", event="E", properties={"a": 1}, timestamp="2024-01-01T00:00:00.000+00:00")
    noisy = {**base, "messageId": "x", "sentAt": "now",
             "context": {"library": {"name": "other", "version": "9"}}}
    assert m.payload_hash(base) == m.payload_hash(noisy)
    assert m.payload_hash(base) != m.payload_hash({**base, "properties": {"a": 2}})
    assert m.payload_hash(base) != m.payload_hash({**base, "timestamp": "2024-01-02T00:00:00.000+00:00"})


def test_properties_mapping_renames_and_identify_uses_traits() -> None:
    mapping = m.RowMapping(call="identify", traits={"iphone": "p_iphone", "apple_watch": "p_watch"})
    msg = m.render_row(ROW, mapping)
    assert isinstance(msg, dict)
    assert msg["type"] == "identify"
    assert msg["traits"] == {"p_iphone": 0.734, "p_watch": 0.812}
    assert "properties" not in msg and "event" not in msg


def test_group_needs_its_group_id_column() -> None:
    mapping = m.RowMapping(call="group", group_id="account", traits=["plan"])
    ok = m.render_row({"user_id": "u1", "account": 42, "plan": "pro"}, mapping)
    assert isinstance(ok, dict) and ok["groupId"] == "42" and ok["traits"] == {"plan": "pro"}
    bad = m.render_row({"user_id": "u1", "account": None, "plan": "pro"}, mapping)
    assert isinstance(bad, m.Rejection) and "account" in bad.detail


@pytest.mark.parametrize("missing", [None, "", "   ", float("nan")])
def test_row_without_customer_id_is_rejected_with_a_reason(missing: object) -> None:
    result = m.render_row({**ROW, "user_id": missing}, m.RowMapping(event="E", properties=["iphone"]))
    assert isinstance(result, m.Rejection)
    assert result.reason == m.MISSING_CUSTOMER_ID
    assert "`user_id`" in result.detail


def test_anonymous_id_is_enough_without_a_user_id() -> None:
    mapping = m.RowMapping(event="E", anonymous_id="anon")
    msg = m.render_row({"user_id": None, "anon": "a-1"}, mapping)
    assert isinstance(msg, dict) and msg["anonymousId"] == "a-1" and "userId" not in msg


@pytest.mark.parametrize("key", [162514333, np.int64(162514333), 162514333.0])
def test_numeric_customer_ids_become_plain_strings(key: object) -> None:
    msg = m.render_row({"user_id": key}, m.RowMapping(event="E"))
    assert isinstance(msg, dict) and msg["userId"] == "162514333"


def test_timestamp_column_is_iso_8601_with_offset_and_naive_means_utc() -> None:
    mapping = m.RowMapping(event="E", timestamp="ts")
    naive = m.render_row({"user_id": "u", "ts": dt.datetime(2024, 5, 1, 12, 30)}, mapping)
    paris = dt.timezone(dt.timedelta(hours=2))
    aware = m.render_row({"user_id": "u", "ts": dt.datetime(2024, 5, 1, 12, 30, tzinfo=paris)}, mapping)
    assert naive["timestamp"] == "2024-05-01T12:30:00.000+00:00"  # type: ignore[index]
    assert aware["timestamp"] == "2024-05-01T12:30:00.000+02:00"  # type: ignore[index]


def test_context_constants_are_sent_alongside_the_library() -> None:
    msg = m.render_row(ROW, m.RowMapping(event="E", context={"source": "segloop-ml"}))
    assert isinstance(msg, dict)
    assert msg["context"]["source"] == "segloop-ml"
    assert msg["context"]["library"]["name"] == "segloop"


# --- JSON-safe values ----------------------------------------------------------------------


def test_decimal_keeps_every_digit_as_a_json_number() -> None:
    data = m.dumps({"v": Decimal("12345678901234567890.123456789012345"), "z": Decimal("1.10")})
    assert data == b'{"v":12345678901234567890.123456789012345,"z":1.10}'
    assert m.dumps({"n": Decimal("NaN"), "i": Decimal("-Infinity")}) == b'{"n":null,"i":null}'


def test_nan_and_infinity_become_null_not_invalid_json() -> None:
    data = m.dumps({"a": float("nan"), "b": float("inf"), "c": np.float64("-inf"),
                    "d": np.array([1.5, np.nan])})
    assert orjson.loads(data) == {"a": None, "b": None, "c": None, "d": [1.5, None]}
    assert b"NaN" not in data and b"Infinity" not in data


def test_numpy_scalars_and_arrays() -> None:
    data = orjson.loads(m.dumps({"i": np.int64(7), "f": np.float32(0.5), "b": np.bool_(True),
                                 "a": np.arange(3), "u": np.uint8(255)}))
    assert data == {"i": 7, "f": 0.5, "b": True, "a": [0, 1, 2], "u": 255}


def test_dates_and_datetimes_are_iso_8601_with_offset() -> None:
    tz = dt.timezone(dt.timedelta(hours=-5))
    data = orjson.loads(m.dumps({
        "naive": dt.datetime(2024, 1, 2, 3, 4, 5),
        "aware": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=tz),
        "day": dt.date(2024, 1, 2),
        "np": np.datetime64("2024-01-02T03:04:05"),
    }))
    assert data == {
        "naive": "2024-01-02T03:04:05+00:00",
        "aware": "2024-01-02T03:04:05-05:00",
        "day": "2024-01-02",
        "np": "2024-01-02T03:04:05+00:00",
    }


def test_pandas_and_arrow_timestamps() -> None:
    data = orjson.loads(m.dumps({
        "naive": pd.Timestamp("2024-01-02 03:04:05.123456789"),
        "aware": pd.Timestamp("2024-01-02 03:04:05", tz="Europe/Paris"),
        "nat": pd.NaT,
    }))
    assert data == {
        "naive": "2024-01-02T03:04:05.123456789+00:00",
        "aware": "2024-01-02T03:04:05+01:00",
        "nat": None,
    }
    batch = pa.RecordBatch.from_pydict({
        "ts": pa.array([dt.datetime(2024, 1, 2, 3, 4, 5)], pa.timestamp("us", tz="UTC")),
        "d": pa.array([Decimal("1.25")], pa.decimal128(10, 2)),
    })
    row = batch.to_pylist()[0]
    assert m.dumps(row) == b'{"ts":"2024-01-02T03:04:05+00:00","d":1.25}'
    assert orjson.loads(m.dumps({"s": pa.scalar(3)})) == {"s": 3}


def test_nested_values_sets_enums_and_bytes() -> None:
    class Tier(enum.Enum):
        GOLD = "gold"

    data = orjson.loads(m.dumps({"n": {"l": [1, {"x": Decimal("2.5")}], "t": (1, 2)},
                                 "s": {3}, "e": Tier.GOLD, "b": b"abc",
                                 "td": dt.timedelta(minutes=1)}))
    assert data == {"n": {"l": [1, {"x": 2.5}], "t": [1, 2]}, "s": [3], "e": "gold",
                    "b": "abc", "td": 60.0}


def test_unsupported_value_is_a_rejection_not_an_exception() -> None:
    msg = m.build("track", user_id="u", event="E", properties={"obj": object()})
    result = m.encode(msg)
    assert isinstance(result, m.Rejection) and result.reason == m.UNSERIALISABLE
    assert "object" in result.detail


def test_message_over_32_kb_is_rejected_with_its_size_and_one_at_the_limit_passes() -> None:
    msg = m.build("track", user_id="u", event="E", properties={"blob": ""})
    base = len(m.dumps(msg))
    msg["properties"]["blob"] = "x" * (m.MAX_MESSAGE_BYTES - base)
    at_limit = m.encode(msg)
    assert isinstance(at_limit, bytes) and len(at_limit) == m.MAX_MESSAGE_BYTES
    msg["properties"]["blob"] += "x"
    over = m.encode(msg)
    assert isinstance(over, m.Rejection) and over.reason == m.TOO_LARGE
    assert f"{m.MAX_MESSAGE_BYTES + 1:,} bytes" in over.detail


def test_validate_names_what_segment_requires() -> None:
    assert m.validate({"type": "track", "userId": "u"}).reason == m.INVALID  # type: ignore[union-attr]
    assert m.validate({"type": "track", "event": "E"}).reason == m.MISSING_CUSTOMER_ID  # type: ignore[union-attr]
    assert m.validate({"type": "boom", "userId": "u"}) is not None
    assert m.validate({"type": "group", "userId": "u"}) is not None
    assert m.validate({"type": "track", "userId": "u", "event": "E", "messageId": "x" * 100}) is not None
    assert m.validate({"type": "track", "userId": "u", "event": "E", "messageId": "x" * 99}) is None


def test_rendered_message_id_is_reproducible_by_the_sync_layer() -> None:
    mapping = m.RowMapping(call="identify", traits=["iphone"], timestamp="ts", namespace=("p", "n"),
                           context={"source": "ml"})
    msg = m.render_row({**ROW, "ts": dt.datetime(2024, 1, 1)}, mapping)
    assert isinstance(msg, dict)
    assert msg["messageId"] == m.message_id("p", "n", "162514333", m.payload_hash(msg))


def test_the_same_row_after_an_acknowledged_send_is_a_new_message() -> None:
    mapping = m.RowMapping(call="identify", traits=["iphone"], namespace=("p", "n"))
    first = m.render_row(ROW, mapping)
    later = m.render_row(ROW, mapping, previous_id="sl-earlier")
    retry = m.render_row(ROW, mapping, previous_id="sl-earlier")
    assert isinstance(first, dict) and isinstance(later, dict) and isinstance(retry, dict)
    assert later["messageId"] != first["messageId"] and retry["messageId"] == later["messageId"]
    assert later["messageId"] == m.message_id("p", "n", "162514333", m.payload_hash(later), "sl-earlier")
    assert {k: v for k, v in later.items() if k != "messageId"} == {k: v for k, v in first.items() if k != "messageId"}


@pytest.mark.parametrize(("options", "problem"), [
    ({"call": "track"}, "event"),
    ({"call": "group", "event": None}, "group_id"),
    ({"call": "alias"}, "call"),
    ({"event": "E", "customer_id": None}, "customer_id"),
])
def test_row_mapping_refuses_incomplete_settings(options: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        m.RowMapping(**options)  # type: ignore[arg-type]
