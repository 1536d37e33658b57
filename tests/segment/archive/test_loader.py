"""Loading raw archives gives Segment's warehouse schema: names, flattening, types, upserts."""

from __future__ import annotations

import gzip
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from segloop.cli import app
from segloop.segment.archive.files import ArchiveWriter, day_partition, find_archive_files
from segloop.segment.archive.loader import load_archive
from segloop.segment.schema import event_table_name, flatten, message_rows, snake_case
from segloop.warehouses import Warehouse

DAY = day_partition(1_764_000_000_000)
NOW = datetime(2025, 11, 24, 12, 0, tzinfo=UTC)


def msg(n: int, call: str = "track", **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "type": call,
        "messageId": f"m{n}",
        "userId": f"u{n % 3}",
        "receivedAt": f"2025-11-24T10:00:{n % 60:02d}.000Z",
        "timestamp": "2025-11-24T09:59:00.000Z",
        "context": {"library": {"name": "analytics-python", "version": "2.4.0"}},
    }
    if call == "track":
        base["event"] = "Order Completed"
    base.update(fields)
    return base


def dumps(message: dict[str, Any]) -> bytes:
    """A message as a JSON line; integers beyond 64 bits as digits (orjson refuses them)."""
    try:
        return orjson.dumps(message)
    except TypeError:
        return json.dumps(message).encode()


def write(root: Path, messages: list[dict[str, Any]], source: str = "shop") -> None:
    writer = ArchiveWriter(root)
    writer.append({(source, DAY): [dumps(m) for m in messages]})
    writer.close()


@pytest.fixture(params=["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)])
def wh(request: pytest.FixtureRequest, tmp_path: Path):
    """The same loader tests on DuckDB and on a throwaway PostgreSQL database."""
    if request.param == "postgres":
        try:
            yield request.getfixturevalue("pg_warehouse")  # tests/fixtures_pg.py
        except pytest.FixtureLookupError:
            if os.environ.get("SEGLOOP_REQUIRE_PG") == "1":
                pytest.fail("SEGLOOP_REQUIRE_PG=1 but the pg_warehouse fixture is missing")
            pytest.skip("the pg_warehouse fixture (tests/fixtures_pg.py) is not available")
        return
    with Warehouse.duckdb(tmp_path / "wh.duckdb") as warehouse:
        yield warehouse


def rows(wh: Warehouse, table: str, schema: str = "shop") -> list[dict[str, Any]]:
    return wh.to_arrow(wh.table(table, schema).order_by("id")).to_pylist()


# -- names and flattening -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Order Completed", "order_completed"),
        ("sample-text", "sample_text"),
        ("sample___text", "sample_text"),
        ("sampleText", "sample_text"),
        ("inviteYourCustomersAddInvites", "invite_your_customers_add_invites"),
        ("   $#$sample   2    Text   ", "sample_2_text"),
        ("SAMPLE 2 TEXT", "sample_2_text"),
        ("___$$Base64Encode", "base64_encode"),
        ("FOO:BAR$BAZ", "foo_bar_baz"),
        ("something.com", "something_com"),
        ("$something%", "something"),
        ("•¶§ƒ˚foo˙∆˚¬", "foo"),
        ("productId", "product_id"),
        ("userAgent", "user_agent"),
    ],
)
def test_snake_case_matches_go_snakecase(name: str, expected: str):
    assert snake_case(name) == expected


def test_event_table_names_cannot_clobber_standard_tables():
    assert event_table_name("Users") == "event_users"
    assert event_table_name("2FA Enabled") == "_2fa_enabled"
    assert event_table_name("!!!") is None


def test_flatten_objects_with_underscore_and_arrays_as_json():
    flat = flatten({"address": {"streetName": "6th", "geo": {"lat": 1.5}}, "tags": ["a", "b"], "gone": None})
    assert flat == {"address_street_name": "6th", "address_geo_lat": 1.5, "tags": '["a","b"]'}


def test_track_rows_go_to_tracks_and_the_event_table():
    message = msg(1, properties={"revenue": 9.5, "id": "clash", "user_id": "clash", "context_ip": "x"})
    out = dict(message_rows(message, NOW))
    assert set(out) == {"tracks", "order_completed"}
    assert "revenue" not in out["tracks"]  # tracks holds only the common columns
    event = out["order_completed"]
    assert event["revenue"] == 9.5
    assert event["id"] == "m1" and event["user_id"] == "u1"  # reserved names: property dropped
    assert "context_ip" not in event
    assert event["event"] == "order_completed" and event["event_text"] == "Order Completed"
    assert event["context_library_name"] == "analytics-python"


def test_identify_rows_upsert_users_keyed_by_user_id():
    out = message_rows(msg(2, "identify", traits={"email": "a@b", "address": {"city": "X"}}), NOW)
    tables = dict(out)
    assert tables["identifies"]["email"] == "a@b"
    assert tables["users"] == {"id": "u2", "received_at": tables["identifies"]["received_at"],
                               "uuid_ts": NOW, "email": "a@b", "address_city": "X"}


def test_other_calls_get_their_own_columns():
    assert dict(message_rows(msg(3, "group", groupId="g1", traits={"plan": "pro"}), NOW))["groups"]["group_id"] == "g1"
    assert dict(message_rows(msg(4, "alias", previousId="anon-1"), NOW))["aliases"]["previous_id"] == "anon-1"
    page = dict(message_rows(msg(5, "page", name="Home", properties={"url": "u", "name": "x"}), NOW))["pages"]
    assert page["name"] == "Home" and page["url"] == "u"
    assert message_rows({"type": "bogus"}, NOW) == []


# -- loading ------------------------------------------------------------------------------


def test_load_creates_segment_tables_in_the_source_schema(tmp_path: Path, wh: Warehouse):
    write(tmp_path, [msg(1), msg(2, "identify", traits={"email": "e"}), msg(3, "page", name="Home"),
                     msg(4, "screen", name="S"), msg(5, "group", groupId="g"), msg(6, "alias", previousId="p")])
    result = load_archive(wh, tmp_path / "segment-logs")
    assert result.schemas == ["shop"]
    assert set(wh.list_tables("shop")) == {
        "tracks", "order_completed", "identifies", "users", "pages", "screens", "groups",
        "accounts", "aliases", "_segloop_loaded_files",
    }
    (track,) = rows(wh, "tracks")
    assert track["received_at"] == datetime(2025, 11, 24, 10, 0, 1, tzinfo=UTC)
    assert track["anonymous_id"] is None  # common columns exist even when never sent
    assert track["context_library_version"] == "2.4.0"


def test_column_type_comes_from_every_value_of_the_load(tmp_path: Path, wh: Warehouse):
    write(tmp_path, [
        msg(1, properties={"qty": 2, "price": 5, "ok": True, "at": "2025-01-02T03:04:05Z", "note": "n"}),
        msg(2, properties={"qty": "many", "price": 2.25, "ok": "false", "at": "soon", "note": 7}),
        msg(3, properties={"qty": 2.9, "price": 0.5}),
    ])
    result = load_archive(wh, tmp_path)
    schema = wh.table("order_completed", "shop").schema()
    # A word among numbers: only text holds them all. 5 then 2.25 then 0.5: a double.
    assert schema["qty"].is_string() and schema["price"].is_floating()
    assert schema["at"].is_string() and schema["note"].is_string()
    assert schema["ok"].is_string()  # a boolean and the text "false"
    first, second, third = rows(wh, "order_completed")
    assert [first["price"], second["price"], third["price"]] == [5.0, 2.25, 0.5]
    assert [first["qty"], second["qty"], third["qty"]] == ["2", "many", "2.9"]
    assert (first["at"], second["at"]) == ("2025-01-02T03:04:05Z", "soon")
    assert second["note"] == "7" and first["ok"] == "true" and second["ok"] == "false"
    assert result.rejected == {} and result.summary()["rejected"] == 0


def test_strings_are_cut_at_512_characters(tmp_path: Path, wh: Warehouse):
    write(tmp_path, [msg(1, properties={"long": "x" * 2000})])
    load_archive(wh, tmp_path)
    assert len(rows(wh, "order_completed")[0]["long"]) == 512


def test_new_properties_add_columns_and_loads_are_incremental(tmp_path: Path, wh: Warehouse):
    write(tmp_path, [msg(1, properties={"a": 1})])
    first = load_archive(wh, tmp_path)
    assert first.rows_inserted["shop.order_completed"] == 1
    write(tmp_path, [msg(2, properties={"a": 2, "b": "new"})])
    second = load_archive(wh, tmp_path)
    assert second.files_loaded == 1 and second.files_skipped == 1
    assert "b" in wh.table("order_completed", "shop").columns
    assert [(r["a"], r["b"]) for r in rows(wh, "order_completed")] == [(1, None), (2, "new")]
    third = load_archive(wh, tmp_path)
    assert third.files_loaded == 0 and third.messages == 0
    loaded = wh.to_arrow(wh.table("_segloop_loaded_files", "shop")).to_pylist()
    assert sorted(r["messages"] for r in loaded) == [1, 1]


def test_growing_file_loads_only_its_new_members(tmp_path: Path, wh: Warehouse):
    writer = ArchiveWriter(tmp_path)
    writer.append({("shop", DAY): [orjson.dumps(msg(1))]})
    load_archive(wh, tmp_path)
    writer.append({("shop", DAY): [orjson.dumps(msg(2)), orjson.dumps(msg(3))]})
    writer.close()
    result = load_archive(wh, tmp_path)
    assert result.messages == 2 and result.duplicates == 0
    assert [r["id"] for r in rows(wh, "tracks")] == ["m1", "m2", "m3"]


def test_torn_tail_loads_once_it_is_complete(tmp_path: Path, wh: Warehouse):
    write(tmp_path, [msg(1)])
    (archive,) = find_archive_files(tmp_path)
    complete = gzip.compress(orjson.dumps(msg(2)) + b"\n")
    with archive.path.open("ab") as out:
        out.write(complete[:10])
    result = load_archive(wh, tmp_path)
    assert result.torn_files == [str(archive.path)]
    assert [r["id"] for r in rows(wh, "tracks")] == ["m1"]
    with archive.path.open("ab") as out:
        out.write(complete[10:])
    load_archive(wh, tmp_path)
    assert [r["id"] for r in rows(wh, "tracks")] == ["m1", "m2"]


def test_rows_dedupe_on_id_across_files(tmp_path: Path, wh: Warehouse):
    write(tmp_path, [msg(1), msg(2)])
    write(tmp_path, [msg(2), msg(3), msg(3)])
    result = load_archive(wh, tmp_path)
    assert [r["id"] for r in rows(wh, "tracks")] == ["m1", "m2", "m3"]
    assert result.rows_inserted["shop.tracks"] == 3


def test_users_keep_the_latest_traits_and_old_ones_not_resent(tmp_path: Path, wh: Warehouse):
    write(tmp_path, [
        msg(1, "identify", userId="ann", receivedAt="2025-11-24T10:00:00Z", traits={"plan": "free", "city": "Oslo"}),
        msg(2, "identify", userId="ann", receivedAt="2025-11-24T11:00:00Z", traits={"plan": "pro"}),
        msg(3, "identify", userId="bob", receivedAt="2025-11-24T10:00:00Z", traits={"plan": "free"}),
    ])
    load_archive(wh, tmp_path)
    write(tmp_path, [
        # Older than what is loaded: must not win.
        msg(4, "identify", userId="ann", receivedAt="2025-11-24T09:00:00Z", traits={"plan": "trial", "age": 40}),
        msg(5, "identify", userId="bob", receivedAt="2025-11-24T12:00:00Z", traits={"plan": "pro"}),
    ])
    result = load_archive(wh, tmp_path)
    users = {u["id"]: u for u in rows(wh, "users")}
    assert set(users) == {"ann", "bob"}
    assert (users["ann"]["plan"], users["ann"]["city"], users["ann"]["age"]) == ("pro", "Oslo", 40)
    assert users["bob"]["plan"] == "pro"
    assert result.rows_inserted.get("shop.users", 0) == 0  # updated, not added
    assert len(rows(wh, "identifies")) == 5


def test_segment_s3_style_file_and_schema_override(tmp_path: Path, wh: Warehouse):
    # As downloaded from Segment's S3 destination: one gzip stream, extra fields, no layout.
    file = tmp_path / "1764000000000.abc.gz"
    body = b"".join(
        orjson.dumps({**msg(i), "projectId": "abc", "version": 2, "channel": "server"}) + b"\n"
        for i in range(5)
    )
    file.write_bytes(gzip.compress(body))
    result = load_archive(wh, file, schema="from_s3")
    assert result.schemas == ["from_s3"]
    assert len(rows(wh, "tracks", "from_s3")) == 5
    assert "project_id" not in wh.table("tracks", "from_s3").columns


def test_messages_without_message_id_still_dedupe(tmp_path: Path, wh: Warehouse):
    plain = {k: v for k, v in msg(1).items() if k != "messageId"}
    write(tmp_path, [plain, plain])
    load_archive(wh, tmp_path)
    (row,) = rows(wh, "tracks")
    assert row["id"].startswith("sha1-")


def test_unusable_source_folder_asks_for_schema(tmp_path: Path, wh: Warehouse):
    from segloop.errors import DataError

    write(tmp_path, [msg(1)], source="9abc")
    with pytest.raises(DataError, match="--schema"):
        load_archive(wh, tmp_path)
    assert load_archive(wh, tmp_path, schema="s9").messages == 1


def test_cli_load_archive_into_a_duckdb_file(tmp_path: Path):
    write(tmp_path, [msg(1), msg(2, "identify", traits={"email": "e"})])
    target = tmp_path / "cli.duckdb"
    runner = CliRunner()
    result = runner.invoke(app, ["load-archive", str(tmp_path / "segment-logs"), "--duckdb", str(target)])
    assert result.exit_code == 0, result.output
    assert "shop.tracks: +1" in result.output
    again = runner.invoke(app, ["load-archive", str(tmp_path / "segment-logs"), "--duckdb", str(target)])
    assert "1 already loaded" in again.output
    missing = runner.invoke(app, ["load-archive", str(tmp_path / "nope"), "--duckdb", str(target)])
    assert missing.exit_code == 1
    assert "does not exist" in " ".join(missing.output.split())


def test_failed_users_upsert_leaves_users_unchanged(tmp_path: Path, wh: Warehouse, monkeypatch):
    write(tmp_path, [msg(1, "identify", userId="ann", traits={"plan": "free"})])
    load_archive(wh, tmp_path)
    write(tmp_path, [msg(2, "identify", userId="ann", receivedAt="2025-11-25T00:00:00Z", traits={"plan": "pro"})])
    real = wh.raw_sql

    def failing(query: str):
        if "INSERT INTO" in query and '"users"' in query:
            raise RuntimeError("disk full")
        return real(query)

    monkeypatch.setattr(wh, "raw_sql", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        load_archive(wh, tmp_path)
    monkeypatch.setattr(wh, "raw_sql", real)
    assert [(u["id"], u["plan"]) for u in rows(wh, "users")] == [("ann", "free")]
    load_archive(wh, tmp_path)  # the retry completes the upsert
    assert [(u["id"], u["plan"]) for u in rows(wh, "users")] == [("ann", "pro")]
