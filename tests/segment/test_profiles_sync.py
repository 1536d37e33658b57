"""`identity: profiles`: Segment's Profiles Sync tables as the identity source, on DuckDB and
PostgreSQL. The fixtures follow the layout of Segment's "Profiles Sync Tables and
Materialized Views" page, starting from its case study (two anonymous visits, profile_2
merged into profile_1) and going on: profile_1 is later merged into profile_0 (a chain)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from segloop.pipeline import Pipeline
from segloop.warehouses import Warehouse
from tests.fixtures_pg import duckdb_or_pg_workspace


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text)


def table(rows: list[dict[str, Any]], types: dict[str, pa.DataType]) -> pa.Table:
    return pa.table({c: pa.array([r.get(c) for r in rows], t) for c, t in types.items()})


S, T = pa.string(), pa.timestamp("us")
ID_GRAPH_UPDATES = table([  # segment_id -> canonical_segment_id, with the triggering event
    {"segment_id": "profile_1", "canonical_segment_id": "profile_1", "triggering_event_type": "page",
     "triggering_event_id": "event_1", "timestamp": ts("2022-05-02 14:01:00"), "seq": "1651500060000"},
    {"segment_id": "profile_2", "canonical_segment_id": "profile_2", "triggering_event_type": "page",
     "triggering_event_id": "event_3", "timestamp": ts("2022-06-22 10:47:15"), "seq": "1655894835000"},
    {"segment_id": "profile_2", "canonical_segment_id": "profile_1", "triggering_event_type": "identify",
     "triggering_event_id": "event_4", "timestamp": ts("2022-06-22 10:48:00"), "seq": "1655894880000"},
    {"segment_id": "profile_0", "canonical_segment_id": "profile_0", "triggering_event_type": "identify",
     "triggering_event_id": "event_6", "timestamp": ts("2022-07-15 09:00:00"), "seq": "1657875600000"},
    {"segment_id": "profile_1", "canonical_segment_id": "profile_0", "triggering_event_type": "identify",
     "triggering_event_id": "event_7", "timestamp": ts("2022-08-01 12:00:00"), "seq": "1659355200000"},
    {"segment_id": "profile_3", "canonical_segment_id": "profile_3", "triggering_event_type": "identify",
     "triggering_event_id": "event_5", "timestamp": ts("2022-07-01 08:00:00"), "seq": "1656662400000"},
    {"segment_id": "profile_4", "canonical_segment_id": "profile_4", "triggering_event_type": "page",
     "triggering_event_id": "event_8", "timestamp": ts("2022-07-02 08:00:00"), "seq": "1656748800000"},
], {"segment_id": S, "canonical_segment_id": S, "triggering_event_type": S, "triggering_event_id": S,
    "timestamp": T, "seq": S})


def _external(segment_id: str, kind: str, value: str, when: str, event: str) -> dict[str, Any]:
    return {"external_id_hash": f"h-{kind}-{value}", "external_id_type": kind, "external_id_value": value,
            "id": f"x-{event}-{kind}", "received_at": ts(when), "segment_id": segment_id, "seq": when,
            "timestamp": ts(when), "triggering_event_id": event, "triggering_event_name": None,
            "triggering_event_source_id": "source_1", "triggering_event_source_name": "Website",
            "triggering_event_source_slug": "website", "triggering_event_type": "identify",
            "uuid_ts": ts(when)}


EXTERNAL_ID_MAPPING_UPDATES = table([
    _external("profile_1", "anonymous_id", "5285bc35-05ef-4d21", "2022-05-02 14:01:00", "event_1"),
    _external("profile_1", "email", "jane.kim@segment.com", "2022-05-02 14:01:47", "event_2"),
    _external("profile_2", "anonymous_id", "b50e18a5-1b8d-451c", "2022-06-22 10:48:00", "event_3"),
    _external("profile_0", "user_id", "jane-0", "2022-07-15 09:00:00", "event_6"),
    _external("profile_3", "user_id", "bob-3", "2022-07-01 08:00:00", "event_5"),
    _external("profile_3", "anonymous_id", "anon-bob", "2022-07-01 08:00:00", "event_5"),
    _external("profile_4", "anonymous_id", "anon-x", "2022-07-02 08:00:00", "event_8"),
], {c: (T if c in ("received_at", "timestamp", "uuid_ts") else S) for c in (
    "external_id_hash", "external_id_type", "external_id_value", "id", "received_at", "segment_id", "seq",
    "timestamp", "triggering_event_id", "triggering_event_name", "triggering_event_source_id",
    "triggering_event_source_name", "triggering_event_source_slug", "triggering_event_type", "uuid_ts")})

PROFILE_TRAITS_UPDATES = table([
    {"id": "t1", "segment_id": "profile_1", "seq": "1", "timestamp": ts("2022-05-02 14:01:47"),
     "email": "jane.kim@segment.com", "plan": "free"},
    {"id": "t2", "segment_id": "profile_2", "seq": "2", "timestamp": ts("2022-06-22 10:48:00"), "plan": "pro"},
    {"id": "t3", "segment_id": "profile_0", "seq": "3", "timestamp": ts("2022-08-01 12:00:00"),
     "plan": "enterprise", "visits": 12},
    {"id": "t4", "segment_id": "profile_3", "seq": "4", "timestamp": ts("2022-07-01 08:00:00"),
     "email": "bob@example.com", "plan": "free"},
], {"id": S, "segment_id": S, "seq": S, "timestamp": T, "email": S, "plan": S, "visits": pa.int64()})


def _event(event_id: str, segment_id: str, anon: str | None, user: str | None, when: str, **extra: Any) -> dict:
    return {"id": event_id, "segment_id": segment_id, "anonymous_id": anon, "user_id": user,
            "event_source_id": "source_1", "timestamp": ts(when), "received_at": ts(when), **extra}


EVENT_TYPES = {"id": S, "segment_id": S, "anonymous_id": S, "user_id": S, "event_source_id": S,
               "timestamp": T, "received_at": T}
PAGES = table([
    _event("event_1", "profile_1", "5285bc35-05ef-4d21", None, "2022-05-02 14:01:00", context_url="twilio.com"),
    _event("event_3", "profile_2", "b50e18a5-1b8d-451c", None, "2022-06-22 10:47:15",
           context_url="twilio.com/education"),
    _event("event_8", "profile_4", "anon-x", None, "2022-07-02 08:00:00", context_url="twilio.com/pricing"),
], {**EVENT_TYPES, "context_url": S})
IDENTIFIES = table([
    _event("event_2", "profile_1", "5285bc35-05ef-4d21", None, "2022-05-02 14:01:47", email="jane.kim@segment.com"),
    _event("event_4", "profile_2", "b50e18a5-1b8d-451c", None, "2022-06-22 10:48:00", email="jane.kim@segment.com"),
    _event("event_5", "profile_3", "anon-bob", "bob-3", "2022-07-01 08:00:00", email="bob@example.com"),
], {**EVENT_TYPES, "email": S})

EXPECTED = {  # (id, id type) -> (canonical_segment_id, canonical_user_id)
    ("profile_0", "segment_id"): ("profile_0", "jane-0"),
    ("profile_1", "segment_id"): ("profile_0", "jane-0"),
    ("profile_2", "segment_id"): ("profile_0", "jane-0"),  # profile_2 -> profile_1 -> profile_0
    ("profile_3", "segment_id"): ("profile_3", "bob-3"),
    ("profile_4", "segment_id"): ("profile_4", None),  # never identified
    ("5285bc35-05ef-4d21", "anonymous_id"): ("profile_0", "jane-0"),
    ("b50e18a5-1b8d-451c", "anonymous_id"): ("profile_0", "jane-0"),
    ("jane.kim@segment.com", "email"): ("profile_0", "jane-0"),
    ("jane-0", "user_id"): ("profile_0", "jane-0"),
    ("bob-3", "user_id"): ("profile_3", "bob-3"),
    ("anon-bob", "anonymous_id"): ("profile_3", "bob-3"),
    ("anon-x", "anonymous_id"): ("profile_4", None),
}


workspace = duckdb_or_pg_workspace  # DuckDB, then a throwaway PostgreSQL database


def pipeline(root: Path, node: str) -> Pipeline:
    path = root / "pipelines" / "ps.yml"
    path.write_text(f"name: ps\nwarehouse: default\nnodes:\n  src:\n{node}")
    return Pipeline.load(path)


def query(p: Pipeline, sql: str) -> list[dict[str, Any]]:
    with p.connect() as wh:
        return wh.sql(sql).to_pyarrow().to_pylist()


def write_raw(wh: Warehouse, schema: str = "ps") -> None:
    for name, data in (("id_graph_updates", ID_GRAPH_UPDATES), ("external_id_mapping_updates",
                       EXTERNAL_ID_MAPPING_UPDATES), ("profile_traits_updates", PROFILE_TRAITS_UPDATES),
                       ("pages", PAGES), ("identifies", IDENTIFIES)):
        wh.create_table(name, data, schema=schema)


def test_profiles_sync_resolves_merge_chains_and_materializes_identifiers_and_traits(workspace: Path) -> None:
    p = pipeline(workspace, "    type: segment_source\n    schema: ps\n    identity: profiles\n")
    with p.connect() as wh:
        write_raw(wh)
    result = p.run()
    assert result.ok, [n.error for n in result.nodes]
    rows = query(p, "select * from ps__src__identities")
    got = {(r["id"], r["id_type"]): (r["canonical_segment_id"], r["canonical_user_id"]) for r in rows}
    for key, expected in EXPECTED.items():
        assert got.get(key) == expected, key
    assert set(got) == set(EXPECTED)

    pages = {r["id"]: (r["canonical_segment_id"], r["canonical_user_id"])
             for r in query(p, "select * from ps__src__pages")}
    assert pages == {"event_1": ("profile_0", "jane-0"), "event_3": ("profile_0", "jane-0"),
                     "event_8": ("profile_4", None)}
    identifiers = {(r["canonical_segment_id"], r["type"], r["value"])
                   for r in query(p, "select * from ps__src__user_identifiers")}
    assert identifiers == {(seg, kind, value) for (value, kind), (seg, _) in EXPECTED.items()
                           if kind != "segment_id"}
    traits = {(r["canonical_segment_id"], r["name"]): r["value"]
              for r in query(p, "select * from ps__src__user_traits")}
    assert traits == {("profile_0", "email"): "jane.kim@segment.com", ("profile_0", "plan"): "enterprise",
                      ("profile_0", "visits"): "12", ("profile_3", "email"): "bob@example.com",
                      ("profile_3", "plan"): "free"}
    metrics = result.node("src").metrics["identity"]
    assert metrics["profiles"] == 3 and metrics["merged_segment_ids"] == 2
    catalog = {r["table"] for r in query(p, "select * from ps__src")}
    assert {"identities", "user_identifiers", "user_traits", "pages", "id_graph_updates"} <= catalog


def test_segments_materialized_tables_alone_are_enough(workspace: Path) -> None:
    """A schema with only Segment's materialized profile_merges / user_identifiers /
    user_traits (and events): resolved through them, and they are exposed as they are."""
    p = pipeline(workspace, "    type: segment_source\n    schema: ps\n    identity: profiles\n")
    merges = table([{"canonical_segment_id": c, "segment_id": s, "seq": "1", "timestamp": ts("2022-08-01 00:00:00")}
                    for s, c in (("profile_0", "profile_0"), ("profile_1", "profile_0"),
                                 ("profile_2", "profile_0"), ("profile_3", "profile_3"))],
                   {"canonical_segment_id": S, "segment_id": S, "seq": S, "timestamp": T})
    identifiers = table([{"canonical_segment_id": "profile_0", "type": "user_id", "value": "jane-0", "seq": "1",
                          "timestamp": ts("2022-08-01 00:00:00")},
                         {"canonical_segment_id": "profile_3", "type": "user_id", "value": "bob-3", "seq": "1",
                          "timestamp": ts("2022-08-01 00:00:00")}],
                        {"canonical_segment_id": S, "type": S, "value": S, "seq": S, "timestamp": T})
    traits = table([{"canonical_segment_id": "profile_0", "name": "plan", "value": "enterprise", "seq": "1",
                     "timestamp": ts("2022-08-01 00:00:00")}],
                   {"canonical_segment_id": S, "name": S, "value": S, "seq": S, "timestamp": T})
    with p.connect() as wh:
        for name, data in (("profile_merges", merges), ("user_identifiers", identifiers),
                           ("user_traits", traits), ("pages", PAGES), ("identifies", IDENTIFIES)):
            wh.create_table(name, data, schema="ps")
    result = p.run()
    assert result.ok, [n.error for n in result.nodes]
    pages = {r["id"]: (r["canonical_segment_id"], r["canonical_user_id"])
             for r in query(p, "select * from ps__src__pages")}
    assert pages == {"event_1": ("profile_0", "jane-0"), "event_3": ("profile_0", "jane-0"),
                     "event_8": (None, None)}  # profile_4 is in no table here
    assert query(p, "select name, value from ps__src__user_traits") == [{"name": "plan", "value": "enterprise"}]


def test_a_source_schema_resolves_through_a_profiles_sync_schema(workspace: Path) -> None:
    """Events of an ordinary source schema (no segment_id) get their profile through their
    user_id, else their anonymous_id, from the Profiles Sync schema named in profiles_schema."""
    p = pipeline(workspace, "    type: segment_source\n    schema: web\n    identity: profiles\n"
                            "    profiles_schema: ps\n")
    tracks = table([{"id": "t1", "anonymous_id": "b50e18a5-1b8d-451c", "user_id": None, "event": "a"},
                    {"id": "t2", "anonymous_id": "zzz", "user_id": "bob-3", "event": "a"},
                    {"id": "t3", "anonymous_id": "nobody", "user_id": None, "event": "a"}],
                   {"id": S, "anonymous_id": S, "user_id": S, "event": S})
    with p.connect() as wh:
        write_raw(wh)
        wh.create_table("tracks", tracks, schema="web")
    result = p.run()
    assert result.ok, [n.error for n in result.nodes]
    got = {r["id"]: (r["canonical_segment_id"], r["canonical_user_id"])
           for r in query(p, "select * from ps__src__tracks")}
    assert got == {"t1": ("profile_0", "jane-0"), "t2": ("profile_3", "bob-3"), "t3": (None, None)}
    assert {r["table"] for r in query(p, "select * from ps__src")} >= {"user_identifiers", "user_traits"}


def test_profiles_without_profiles_sync_tables_says_what_to_do(workspace: Path) -> None:
    p = pipeline(workspace, "    type: segment_source\n    schema: web\n    identity: profiles\n")
    with p.connect() as wh:
        wh.create_table("tracks", table([{"id": "t", "user_id": "u"}], {"id": S, "user_id": S}), schema="web")
    error = p.run().node("src").error
    assert "id_graph_updates" in error and "schema `web`" in error and "profiles_schema" in error
