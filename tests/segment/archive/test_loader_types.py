# ruff: noqa: F811 - `wh` is a fixture imported from test_loader; tests take it by name
"""Loading keeps every value: types from all values, widening in place, rejects, wide events.

Each test runs on DuckDB and on a throwaway PostgreSQL database (the `wh` fixture of
test_loader.py), because each warehouse has its own types and limits.
"""

from __future__ import annotations

import gzip
import logging
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from typer.testing import CliRunner

from segloop.cli import app
from segloop.segment.archive.files import find_archive_files
from segloop.segment.archive.loader import ArchiveLoader, load_archive
from segloop.segment.collector.app import serve_in_thread
from segloop.warehouses import DuckDBConfig, Warehouse

from .test_loader import (
    msg,
    rows,
    wh,  # noqa: F401 - the DuckDB / PostgreSQL fixture, used by name
    write,
)

REJECTS = "_segloop_load_rejects"


def kinds(wh: Warehouse, table: str = "order_completed") -> dict[str, str]:
    schema = wh.table(table, "shop").schema()
    out = {}
    for name, dtype in schema.items():
        out[name] = ("integer" if dtype.is_integer() else "float" if dtype.is_floating()
                     else "decimal" if dtype.is_decimal() else "string" if dtype.is_string()
                     else "boolean" if dtype.is_boolean() else "timestamp" if dtype.is_timestamp() else str(dtype))
    return out


def rejects(wh: Warehouse) -> list[dict[str, Any]]:
    table = wh.table(REJECTS, "shop")
    return wh.to_arrow(table.order_by(["table_name", "column_name", "message_id"])).to_pylist()


def as_int(value: Any) -> int:
    """A stored whole number as a Python int (DECIMAL comes back as Decimal, text as str)."""
    return int(Decimal(str(value)))


# -- item 2: numbers whose type drifts ------------------------------------------------------


def test_numbers_keep_their_value_when_the_first_one_is_whole(tmp_path: Path, wh: Warehouse):
    # JavaScript sends 5.0 as 5: the first price looks like an integer.
    write(tmp_path, [
        msg(1, event="Product Viewed", properties={"price": 5, "quantity": 1}),
        msg(2, event="Product Viewed", properties={"price": 2.25, "quantity": 1.5}),
        msg(3, event="Product Viewed", properties={"price": 0.5, "quantity": 2}),
    ])
    result = load_archive(wh, tmp_path)
    assert kinds(wh, "product_viewed")["price"] == "float"
    assert [(r["price"], r["quantity"]) for r in rows(wh, "product_viewed")] == [(5.0, 1.0), (2.25, 1.5), (0.5, 2.0)]
    assert result.rejected == {} and result.widened == []


def test_number_columns_widen_in_place_across_loads(tmp_path: Path, wh: Warehouse):
    write(tmp_path, [msg(1, properties={"price": 5, "qty": 1, "big": 7, "n": 3})])
    load_archive(wh, tmp_path)
    assert (kinds(wh)["price"], kinds(wh)["big"]) == ("integer", "integer")
    huge = 123456789012345678901234567890  # 30 digits: beyond 64 bits, within DuckDB's DECIMAL(38)
    write(tmp_path, [msg(2, properties={"price": 2.25, "qty": 1.5, "big": huge, "n": 4})])
    second = load_archive(wh, tmp_path)
    assert sorted(second.widened) == [
        "shop.order_completed.big: integer -> decimal",
        "shop.order_completed.price: integer -> float",
        "shop.order_completed.qty: integer -> float",
    ]
    assert (kinds(wh)["price"], kinds(wh)["qty"], kinds(wh)["big"], kinds(wh)["n"]) == \
        ("float", "float", "decimal", "integer")
    first, latest = rows(wh, "order_completed")
    assert (first["price"], first["qty"], as_int(first["big"])) == (5.0, 1.0, 7)  # old rows keep their value
    assert (latest["price"], latest["qty"], as_int(latest["big"])) == (2.25, 1.5, huge)
    assert second.rejected == {}
    lines = " / ".join(second.describe())
    assert "widened shop.order_completed.price: integer -> float" in lines


def test_integers_beyond_64_bits_are_kept_exactly(tmp_path: Path, wh: Warehouse):
    big = 2**64 + 1  # orjson reads this as a float; the archive reader must not
    neg = -(2**63) - 1
    write(tmp_path, [msg(1, properties={"a": big, "b": neg, "c": 1}), msg(2, properties={"c": 2**70})])
    result = load_archive(wh, tmp_path)
    first, second = rows(wh, "order_completed")
    assert as_int(first["a"]) == big and as_int(first["b"]) == neg
    assert as_int(first["c"]) == 1 and as_int(second["c"]) == 2**70
    assert result.rejected == {}


def test_an_integer_past_38_digits_is_kept_as_text_where_no_number_type_holds_it(tmp_path: Path, wh: Warehouse):
    digits = 10**45 + 7
    write(tmp_path, [msg(1, properties={"x": 3})])
    load_archive(wh, tmp_path)
    write(tmp_path, [msg(2, properties={"x": digits})])
    load_archive(wh, tmp_path)
    first, second = rows(wh, "order_completed")
    # PostgreSQL's NUMERIC holds it; DuckDB's widest exact number (DECIMAL(38)) does not: text.
    assert kinds(wh)["x"] == ("decimal" if wh.backend == "postgres" else "string")
    assert as_int(first["x"]) == 3 and as_int(second["x"]) == digits


def test_a_huge_integer_and_a_fraction_keep_both_exactly(tmp_path: Path, wh: Warehouse):
    big = 2**60 + 1  # a double would round it
    write(tmp_path, [msg(1, properties={"v": big}), msg(2, properties={"v": 0.5})])
    load_archive(wh, tmp_path)
    first, second = rows(wh, "order_completed")
    assert as_int(first["v"]) == big
    assert Decimal(str(second["v"])) == Decimal("0.5")


def test_values_that_do_not_fit_go_whole_to_the_rejects_table(tmp_path: Path, wh: Warehouse):
    write(tmp_path, [msg(1, properties={"qty": 2, "ok": True, "at": "2025-01-02T03:04:05Z", "note": "n"})])
    load_archive(wh, tmp_path)
    write(tmp_path, [
        msg(2, properties={"qty": "many", "ok": 1, "at": "soon", "note": 7}, timestamp="yesterday"),
        msg(3, properties={"ok": "false", "long": "x" * 600}),
    ])
    result = load_archive(wh, tmp_path)
    assert kinds(wh)["qty"] == "integer" and kinds(wh)["ok"] == "boolean" and kinds(wh)["at"] == "timestamp"
    _, second, third = rows(wh, "order_completed")
    assert (second["qty"], second["ok"], second["at"], second["note"]) == (None, None, None, "7")
    assert third["ok"] is False and third["long"] == "x" * 512
    got = [(r["table_name"], r["column_name"], r["message_id"], r["raw_value"]) for r in rejects(wh)]
    assert got == [
        ("order_completed", "at", "m2", '"soon"'),
        ("order_completed", "long", "m3", orjson.dumps("x" * 600).decode()),  # whole, not cut
        ("order_completed", "ok", "m2", "1"),
        ("order_completed", "qty", "m2", '"many"'),
        ("order_completed", "timestamp", "m2", '"yesterday"'),
        ("tracks", "timestamp", "m2", '"yesterday"'),
    ]
    reasons = {r["column_name"]: r["reason"] for r in rejects(wh)}
    assert reasons["qty"] == "text in an integer column"
    assert reasons["long"].startswith("longer than 512 characters")
    assert all(r["file"].startswith("segment-logs/shop/") for r in rejects(wh))
    assert sum(result.rejected.values()) == 5 and sum(result.cut.values()) == 1
    assert result.converted["shop.order_completed.note"] == 1 and result.converted["shop.order_completed.ok"] == 1
    summary = result.summary()
    assert (summary["rejected"], summary["cut"], summary["converted"]) == (5, 1, 2)
    # The same messages loaded again (another file) add neither rows nor rejects.
    write(tmp_path, [msg(2, properties={"qty": "many"}, timestamp="yesterday")])
    again = load_archive(wh, tmp_path)
    assert again.duplicates == 2 and len(rejects(wh)) == 6


def test_users_and_accounts_keep_the_latest_traits(tmp_path: Path, wh: Warehouse):
    write(tmp_path, [
        msg(1, "group", groupId="acme", receivedAt="2025-11-24T10:00:00Z", traits={"plan": "free", "seats": 5}),
        msg(2, "group", groupId="acme", receivedAt="2025-11-24T11:00:00Z", traits={"plan": "pro", "seats": 7.5}),
        msg(3, "group", groupId="initech", traits={"plan": "free"}),
        msg(4, "identify", userId="ann", traits={"age": 40}),
    ])
    load_archive(wh, tmp_path)
    write(tmp_path, [msg(5, "group", groupId="initech", receivedAt="2025-11-25T00:00:00Z", traits={"seats": 2})])
    load_archive(wh, tmp_path)
    accounts = {r["id"]: r for r in rows(wh, "accounts")}
    assert set(accounts) == {"acme", "initech"}
    assert (accounts["acme"]["plan"], accounts["acme"]["seats"]) == ("pro", 7.5)
    assert (accounts["initech"]["plan"], accounts["initech"]["seats"]) == ("free", 2.0)
    assert len(rows(wh, "groups")) == 4
    assert "anonymous_id" not in wh.table("accounts", "shop").columns  # as in `users`


# -- item 3: wide events ------------------------------------------------------------------


def wide(n: int, props: int, value: Any = 1) -> dict[str, Any]:
    return msg(n, event="Wide Event", properties={f"prop_{i}": value for i in range(props)})


@pytest.mark.parametrize("value", [1, "some text"])
def test_an_event_with_1700_properties_loads_and_later_loads_go_on(tmp_path: Path, wh: Warehouse, value: Any):
    write(tmp_path, [wide(1, 1700, value), wide(2, 1700, value)])
    first = load_archive(wh, tmp_path)
    assert first.set_aside == {} and first.rows_inserted["shop.wide_event"] == 2
    limit = wh.config.MAX_TABLE_COLUMNS
    columns = wh.table("wide_event", "shop").columns
    assert len(columns) <= limit and "_segloop_overflow" in columns
    for row in rows(wh, "wide_event"):  # every property is in its column or in the overflow JSON
        overflow = orjson.loads(row["_segloop_overflow"])
        kept = {c: row[c] for c in columns if c.startswith("prop_") and row[c] is not None}
        assert {**kept, **overflow} == {f"prop_{i}": value for i in range(1700)}
        assert not set(kept) & set(overflow)
    assert first.summary()["overflowed"] == 2 * 1700 - sum(
        1 for row in rows(wh, "wide_event") for c in columns if c.startswith("prop_") and row[c] is not None)
    assert any("overflowed" in line for line in first.describe())
    write(tmp_path, [msg(3, properties={"revenue": 10})])
    later = load_archive(wh, tmp_path)
    assert later.rows_inserted["shop.order_completed"] == 1 and later.set_aside == {}


def test_a_corrupt_file_is_set_aside_and_the_others_load(tmp_path: Path, wh: Warehouse):
    write(tmp_path, [msg(1)])
    (bad,) = find_archive_files(tmp_path)
    with bad.path.open("ab") as out:  # garbage after a complete member: never readable
        out.write(b"\x1f\x8b\x08\x00" + b"\xff" * 64)
    write(tmp_path, [msg(2)])
    result = load_archive(wh, tmp_path)
    assert [r["id"] for r in rows(wh, "tracks")] == ["m1", "m2"]  # the readable part loads too
    assert list(result.set_aside) == [bad.key] and "corrupt gzip data" in result.set_aside[bad.key]
    loaded = {r["file"]: r for r in wh.to_arrow(wh.table("_segloop_loaded_files", "shop")).to_pylist()}
    assert loaded[bad.key]["problem"].startswith("corrupt gzip data")
    again = load_archive(wh, tmp_path)  # unchanged: not read again, and said so
    assert again.set_aside_before == 1 and again.messages == 0
    assert any("set aside by an earlier load" in line for line in again.describe())


def test_a_file_the_warehouse_refuses_is_set_aside_and_the_others_load(tmp_path: Path, wh: Warehouse, monkeypatch):
    write(tmp_path, [msg(1)])
    write(tmp_path, [msg(2, event="Poison")])
    write(tmp_path, [msg(3)])
    poison = next(a for a in find_archive_files(tmp_path) if b"Poison" in __import__("gzip").decompress(a.path.read_bytes()))
    real = wh.raw_sql
    refused = _data_error(wh)

    def refusing(query: str):
        if "INSERT INTO" in query and '"poison"' in query:
            raise refused
        return real(query)

    monkeypatch.setattr(wh, "raw_sql", refusing)
    result = load_archive(wh, tmp_path)
    assert [r["id"] for r in rows(wh, "order_completed")] == ["m1", "m3"]
    assert list(result.set_aside) == [poison.key] and "refused" in result.set_aside[poison.key]
    monkeypatch.setattr(wh, "raw_sql", real)
    assert load_archive(wh, tmp_path).set_aside_before == 1


def _data_error(wh: Warehouse) -> Exception:
    """The warehouse's own error for a value it cannot take (raised by the driver, not made up)."""
    try:
        wh.con.raw_sql("SELECT CAST('x' AS INTEGER)")
    except Exception as exc:  # noqa: BLE001 - the driver's exception is the point
        return exc
    raise AssertionError("the cast should fail")


# -- what the commands and the collector's loader say ---------------------------------------


def test_load_archive_prints_what_it_widened_overflowed_and_rejected(tmp_path: Path):
    target = tmp_path / "cli.duckdb"
    runner = CliRunner()
    write(tmp_path, [msg(1, properties={"price": 5, "qty": 1})])
    runner.invoke(app, ["load-archive", str(tmp_path / "segment-logs"), "--duckdb", str(target)])
    write(tmp_path, [msg(2, properties={"price": 2.5, "qty": "many", "note": 1}), wide(3, 1700)])
    result = runner.invoke(app, ["load-archive", str(tmp_path / "segment-logs"), "--duckdb", str(target)])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "widened shop.order_completed.price: integer -> float" in out
    assert "rejected 1 values that do not fit their column" in out and REJECTS in out
    assert "overflowed" in out and "shop.wide_event" in out


def test_the_collectors_loader_reports_what_it_widened_and_rejected(tmp_path: Path, caplog):
    import time

    import httpx

    from segloop.segment.collector.app import serve_in_thread

    loader = ArchiveLoader(DuckDBConfig(path=str(tmp_path / "wh.duckdb")), tmp_path)

    def event(n: int, qty: Any) -> dict[str, Any]:
        return {"type": "track", "event": "Order Completed", "userId": "u", "messageId": f"m{n}",
                "properties": {"qty": qty}}

    def wait_for(running: Any, done: Any) -> dict[str, Any]:
        deadline = time.monotonic() + 30
        while not done(running.stats["last_load"] or {}):
            assert time.monotonic() < deadline, running.stats
            time.sleep(0.05)
        return dict(running.stats["last_load"])

    with caplog.at_level(logging.WARNING, logger="segloop.loader"), \
            serve_in_thread({"key": "shop"}, tmp_path / "collector", load_every_s=0.1, loader=loader) as running, \
            httpx.Client(base_url=running.url, auth=("key", "")) as http:
        assert http.post("/v1/batch", json={"batch": [event(1, 1)]}).status_code == 200
        wait_for(running, lambda last: last.get("messages", 0) >= 1)
        assert http.post("/v1/batch", json={"batch": [event(2, 1.5), event(3, "many")]}).status_code == 200
        last = wait_for(running, lambda last: last.get("widened"))
    assert last["widened"] == ["shop.order_completed.qty: integer -> float"]
    assert last["rejected"] == 1 and last["converted"] == 0 and last["overflowed"] == 0
    assert "widened shop.order_completed.qty: integer -> float" in caplog.text
    assert "rejected 1 values" in caplog.text


def test_widening_works_under_views_that_read_the_table(tmp_path: Path, wh: Warehouse):
    # segment_source nodes read source tables through views; PostgreSQL refuses to change
    # the type of a column a view reads unless the views are re-created around it.
    write(tmp_path, [msg(1, properties={"price": 5})])
    load_archive(wh, tmp_path)
    wh.raw_sql('CREATE VIEW shop.prices AS SELECT id, price FROM shop.order_completed')
    wh.raw_sql('CREATE VIEW shop.prices_sum AS SELECT sum(price) AS total FROM shop.prices')
    write(tmp_path, [msg(2, properties={"price": 2.25})])
    result = load_archive(wh, tmp_path)
    assert result.widened == ["shop.order_completed.price: integer -> float"]
    assert [r["price"] for r in wh.to_arrow(wh.table("prices", "shop").order_by("id")).to_pylist()] == [5.0, 2.25]
    assert wh.to_arrow(wh.table("prices_sum", "shop")).to_pylist() == [{"total": 7.25}]


def test_lines_that_are_not_json_are_kept_in_the_rejects_table(tmp_path: Path, wh: Warehouse):
    import gzip

    folder = tmp_path / "segment-logs" / "shop" / "1763942400000"
    folder.mkdir(parents=True)
    good = orjson.dumps(msg(1)).decode()
    (folder / "part.gz").write_bytes(gzip.compress(f'{good}\nnot json {{\n[1, 2]\n'.encode()))
    result = load_archive(wh, tmp_path)
    assert result.bad_lines == 2 and [r["id"] for r in rows(wh, "tracks")] == ["m1"]
    kept = [(r["table_name"], r["raw_value"], r["file"]) for r in rejects(wh)]
    assert sorted(kept) == [(None, "[1, 2]", "segment-logs/shop/1763942400000/part.gz"),
                            (None, "not json {", "segment-logs/shop/1763942400000/part.gz")]
    assert any("not JSON objects" in line for line in result.describe())


def test_identifies_without_received_at_still_upsert_users(tmp_path: Path, wh: Warehouse):
    plain = [{k: v for k, v in msg(n, "identify", userId="ann", traits={"plan": p}).items() if k != "receivedAt"}
             for n, p in ((1, "free"), (2, "pro"))]
    write(tmp_path, plain)
    load_archive(wh, tmp_path)
    (user,) = rows(wh, "users")
    assert user["id"] == "ann" and user["plan"] == "pro" and user["received_at"] is None


def test_integers_beyond_64_bits_sent_to_the_collector_are_kept_exactly(tmp_path: Path, wh: Warehouse):
    """The collector's own parsing and archive lines keep them too (orjson makes them floats)."""
    big, neg = 2**64 + 1, -(2**63) - 1
    body = ('{"batch": [{"type": "track", "userId": "u1", "event": "Order Completed", "messageId": "m-1", '
            f'"timestamp": "2026-01-01T00:00:00Z", "properties": {{"a": {big}, "b": {neg}, "c": 1}}}}]}}')
    data = tmp_path / "collector"
    with serve_in_thread({"wk": "shop"}, data) as running, httpx.Client(base_url=running.url, auth=("wk", "")) as http:
        answer = http.post("/v1/batch", content=body.encode(), headers={"Content-Type": "application/json"})
        assert answer.status_code == 200, answer.text
    (archive,) = find_archive_files(data / "segment-logs")
    assert f'"a":{big}' in gzip.decompress(archive.path.read_bytes()).decode()  # exact in the archive
    load_archive(wh, data / "segment-logs")
    (row,) = rows(wh, "order_completed")
    assert as_int(row["a"]) == big and as_int(row["b"]) == neg and as_int(row["c"]) == 1
