"""Identity stitching (`identity: stitch`) on a hand-written identity graph, on DuckDB and
PostgreSQL: chains of aliases, a shared device, merged user ids, anonymous browsing before
sign-up. Every id's canonical user is checked one by one."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa

from segloop.pipeline import Pipeline
from segloop.warehouses import Warehouse
from tests.fixtures_pg import duckdb_or_pg_workspace

T0 = datetime(2026, 3, 1, 9, 0)
PIPELINE = """\
name: stitched
warehouse: default
nodes:
  src:
    type: segment_source
    schema: web
    identity: stitch
{extra}
  per_person:
    type: sql
    input: src
    sql: select canonical_user_id, count(*) as events from tracks group by canonical_user_id
"""


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


# (anonymous_id, user_id, minute) of each call. Story, in order of time:
# - a1 browses anonymously, then signs up as u1 (anonymous history before sign-up);
# - a2 is identified as u2; u2 is later aliased to u3, and u3 to u4 (a chain: u2 -> u3 -> u4);
# - s1 is a shared device: first seen with u1, later with u5; then s1 browses logged out;
# - u7 is merged into u1 (alias u7 -> u1); a4 was seen with u7 and later with u1: one person;
# - a3 is aliased straight to u6 (alias from an anonymous id);
# - u8 is aliased to u9, and later to u10: the latest alias wins;
# - a5 never identifies.
IDENTIFIES = [("a1", "u1", 10), ("a2", "u2", 11), ("s1", "u1", 20), ("s1", "u5", 40),
              ("a4", "u7", 12), ("a4", "u1", 50)]
ALIASES = [("u2", "u3", 30), ("u3", "u4", 31), ("u7", "u1", 35), ("a3", "u6", 5),
           ("u8", "u9", 1), ("u8", "u10", 2)]
TRACKS = [("a1", None, 1), ("a1", None, 5), ("a1", "u1", 15), ("a2", None, 3), ("a2", "u2", 12),
          ("s1", None, 60), ("s1", "u5", 41), ("a3", None, 2), ("a4", None, 3), (None, "u7", 13),
          ("a5", None, 7), ("a6", "u8", 0)]
PAGES = [("a5", None, 8), ("a2", None, 2)]

EXPECTED_FIRST = {  # (id, id type) -> canonical user id, with `shared_device: first`
    ("u1", "user_id"): "u1", ("u2", "user_id"): "u4", ("u3", "user_id"): "u4",
    ("u4", "user_id"): "u4", ("u5", "user_id"): "u5", ("u6", "user_id"): "u6",
    ("u7", "user_id"): "u1", ("u8", "user_id"): "u10", ("u9", "user_id"): "u9",
    ("u10", "user_id"): "u10",
    ("a1", "anonymous_id"): "u1", ("a2", "anonymous_id"): "u4", ("a3", "anonymous_id"): "u6",
    ("a4", "anonymous_id"): "u1", ("a5", "anonymous_id"): None, ("a6", "anonymous_id"): "u10",
    ("s1", "anonymous_id"): "u1",
}


def _calls(rows: list[tuple[str | None, str | None, int]], prefix: str, **extra: Any) -> pa.Table:
    times = [at(m) for _, _, m in rows]
    return pa.table({
        "id": [f"{prefix}{i}" for i in range(len(rows))],
        "anonymous_id": pa.array([a for a, _, _ in rows], pa.string()),
        "user_id": pa.array([u for _, u, _ in rows], pa.string()),
        "timestamp": pa.array(times, pa.timestamp("us")),
        "received_at": pa.array([t + timedelta(seconds=2) for t in times], pa.timestamp("us")),
        **extra,
    })


def write_source(wh: Warehouse, identifies: list[Any] = IDENTIFIES, aliases: list[Any] = ALIASES,
                 tracks: list[Any] = TRACKS, pages: list[Any] = PAGES) -> None:
    wh.create_table("identifies", _calls(identifies, "idn-", email=[f"{u}@x.io" for _, u, _ in identifies]),
                    schema="web")
    alias_rows = [(None, u, m) for _, u, m in aliases]
    wh.create_table("aliases", _calls(alias_rows, "als-", previous_id=[p for p, _, _ in aliases]), schema="web")
    wh.create_table("tracks", _calls(tracks, "trk-", event=["product_viewed"] * len(tracks),
                                     event_text=["Product Viewed"] * len(tracks)), schema="web")
    wh.create_table("pages", _calls(pages, "pg-", name=["Home"] * len(pages)), schema="web")
    # An event table repeats `tracks` rows (not read for the graph); u99 is in no other table.
    # Its `products` (JSON text, as Segment lands it) give `order_completed_products`.
    orders = [("s1", "u99", 70), ("a1", None, 16)]
    products = ['[{"product_id": "p1"}]', '[{"product_id": "p2"}, {"product_id": "p3"}]']
    wh.create_table("order_completed", _calls(orders, "ord-", revenue=[10.0, 20.0], products=products),
                    schema="web")


workspace = duckdb_or_pg_workspace  # DuckDB, then a throwaway PostgreSQL database


def pipeline(root: Path, extra: str = "") -> Pipeline:
    path = root / "pipelines" / "stitched.yml"
    path.write_text(PIPELINE.format(extra=extra))
    return Pipeline.load(path)


def query(p: Pipeline, sql: str) -> list[dict[str, Any]]:
    with p.connect() as wh:
        return wh.sql(sql).to_pyarrow().to_pylist()


def canonical_ids(p: Pipeline) -> dict[tuple[str, str], str | None]:
    rows = query(p, "select id, id_type, canonical_user_id from stitched__src__identities")
    return {(r["id"], r["id_type"]): r["canonical_user_id"] for r in rows}


def test_each_id_resolves_to_its_canonical_user(workspace: Path) -> None:
    p = pipeline(workspace)
    with p.connect() as wh:
        write_source(wh)
    result = p.run()
    assert result.ok, [n.error for n in result.nodes]
    got = canonical_ids(p)
    for key, expected in EXPECTED_FIRST.items():
        assert got.get(key, "missing") == expected, key
    assert set(got) == set(EXPECTED_FIRST)

    by_id = {r["id"]: r for r in query(p, "select * from stitched__src__identities where id_type = 'anonymous_id'")}
    assert by_id["s1"]["user_ids"] == 2 and by_id["s1"]["rule"] == "shared_device_first"
    assert by_id["a4"]["user_ids"] == 1  # u7 and u1 are one person: not a shared device
    assert by_id["a5"]["rule"] == "unlinked"
    assert by_id["a1"]["first_seen"] == at(1) and by_id["a1"]["last_seen"] == at(15)

    # Every event gets the canonical user of its user id, else of its anonymous id.
    tracks = query(p, "select id, canonical_user_id from stitched__src__tracks")
    by_event = {r["id"]: r["canonical_user_id"] for r in tracks}
    assert [by_event[f"trk-{i}"] for i in range(len(TRACKS))] == [
        "u1", "u1", "u1", "u4", "u4",  # a1 before and after sign-up; a2 before the u2 -> u4 chain
        "u1", "u5",  # the shared device logged out goes to its first user; with u5, to u5
        "u6", "u1", "u1", None, "u10"]
    orders = {r["id"]: r["canonical_user_id"] for r in query(p, "select * from stitched__src__order_completed")}
    assert orders == {"ord-0": "u99", "ord-1": "u1"}  # a user id the graph lacks is still that user
    products = query(p, "select id, product_id, canonical_user_id from stitched__src__order_completed_products")
    assert sorted((r["id"], r["product_id"], r["canonical_user_id"]) for r in products) == [
        ("ord-0", "p1", "u99"), ("ord-1", "p2", "u1"), ("ord-1", "p3", "u1")]  # a1's order, stitched
    pages = {r["id"]: r["canonical_user_id"] for r in query(p, "select id, canonical_user_id from stitched__src__pages")}
    assert pages == {"pg-0": None, "pg-1": "u4"}
    people = {r["canonical_user_id"]: r["events"] for r in query(p, "select * from stitched__per_person")}
    assert people == {"u1": 6, "u4": 2, "u5": 1, "u6": 1, "u10": 1, None: 1}
    metrics = result.node("src").metrics["identity"]
    assert metrics["shared_devices"] == 1 and metrics["aliased_user_ids"] == 4
    assert metrics["anonymous_ids"] == 7 and metrics["anonymous_stitched"] == 6


def test_an_id_used_as_a_user_id_and_as_an_anonymous_id_resolves_by_its_column(workspace: Path) -> None:
    """One lookup per event by its user id, else its anonymous id: a string that is a user
    id in one row and an anonymous id in another takes the identity of the column it is in."""
    p = pipeline(workspace)
    extra = [("u2", None, 90), (None, "a1", 91), ("a1", None, 92), ("a1", "u2", 93)]
    with p.connect() as wh:
        write_source(wh, tracks=[*TRACKS, *extra])
    assert p.run().ok
    got = canonical_ids(p)
    assert got[("u2", "user_id")] == "u4" and got[("u2", "anonymous_id")] is None
    assert got[("a1", "user_id")] == "a1"
    tracks = {r["id"]: r["canonical_user_id"] for r in query(p, "select id, canonical_user_id from stitched__src__tracks")}
    n = len(TRACKS)
    # u2 as a device that never identified; a1 as a user of its own; a1 as u1's browser;
    # a row with both ids goes by its user id (u2 -> u3 -> u4).
    assert [tracks[f"trk-{n + i}"] for i in range(len(extra))] == [None, "a1", "u1", "u4"]


def test_shared_device_none_leaves_its_anonymous_events_unattributed(workspace: Path) -> None:
    p = pipeline(workspace, "    shared_device: none")
    with p.connect() as wh:
        write_source(wh)
    assert p.run().ok
    got = canonical_ids(p)
    assert got[("s1", "anonymous_id")] is None
    assert got[("a4", "anonymous_id")] == "u1"  # one person under two user ids is not shared
    tracks = {r["id"]: r["canonical_user_id"] for r in query(p, "select id, canonical_user_id from stitched__src__tracks")}
    assert tracks["trk-5"] is None and tracks["trk-6"] == "u5"


def test_incremental_runs_stitch_history_from_earlier_runs(workspace: Path) -> None:
    """The first run sees a1 browse anonymously; the second run's rows identify a1 as u1
    and alias u1 to u11: the earlier anonymous events now belong to u11."""
    p = pipeline(workspace, "    incremental: true")
    with p.connect() as wh:
        write_source(wh, identifies=[("a9", "u9", 0)], aliases=[("u0", "u00", 0)],
                     tracks=[("a1", None, 1), ("a1", None, 2)], pages=[("a1", None, 3)])
    first = p.run()
    assert first.ok, [n.error for n in first.nodes]
    assert canonical_ids(p)[("a1", "anonymous_id")] is None
    with p.connect() as wh:
        wh.insert("identifies", _calls([("a1", "u1", 100)], "idn-b", email=["u1@x.io"]), schema="web")
        wh.insert("aliases", _calls([(None, "u11", 101)], "als-b", previous_id=["u1"]), schema="web")
        wh.insert("tracks", _calls([("a1", "u1", 102)], "trk-b", event=["product_viewed"],
                                   event_text=["Product Viewed"]), schema="web")
    second = p.run()
    assert second.ok, [n.error for n in second.nodes]
    got = canonical_ids(p)
    assert got[("a1", "anonymous_id")] == "u11" and got[("u1", "user_id")] == "u11"
    assert got[("a9", "anonymous_id")] == "u9"  # kept from the first run's links
    links = query(p, "select * from stitched__src__identity_links where id = 'a1' and linked_user_id is null")
    assert [(r["first_seen"], r["last_seen"]) for r in links] == [(at(1), at(3))]
    # The view shows only the new rows, stitched with the whole history's graph.
    assert query(p, "select id, canonical_user_id from stitched__src__tracks") == [
        {"id": "trk-b0", "canonical_user_id": "u11"}]
    # a1, a9, and u0 (an alias's previous id never seen as a user id counts as anonymous)
    assert second.node("src").metrics["identity"]["anonymous_stitched"] == 3
    assert got[("u0", "anonymous_id")] == "u00"
    third = p.run()  # nothing new: same graph
    assert third.ok and canonical_ids(p) == got


def test_alias_cycles_are_bounded_and_reported(workspace: Path) -> None:
    p = pipeline(workspace)
    with p.connect() as wh:
        write_source(wh, aliases=[("c1", "c2", 1), ("c2", "c1", 2), *ALIASES])
    result = p.run()
    assert result.ok
    got = canonical_ids(p)
    assert got[("c1", "user_id")] in {"c1", "c2"} and got[("u2", "user_id")] == "u4"
    assert result.node("src").metrics["identity"]["unresolved_aliases"] == 2
    assert any("alias cycles" in w for w in result.node("src").warnings)


def test_the_graph_fits_a_small_duckdb_memory_limit(tmp_path: Path) -> None:
    """Alias chains used to be followed in one query of 16 stacked joins, which DuckDB needed
    memory for at once: "Out of Memory Error" under this 32 MiB `memory_limit` on these few
    thousand ids (and under 96 MiB on 20,000 demo customers). Each round is now a query of
    its own, and the rounds stop when no chain moves (passes at 16 MiB)."""
    root = tmp_path / "ws"
    (root / "pipelines").mkdir(parents=True)
    (root / "segloop.yml").write_text("warehouses:\n  default:\n    type: duckdb\n"
                                      "    path: .segloop/warehouse.duckdb\n    memory_limit: 32MiB\n    threads: 2\n")
    p = pipeline(root)
    people = [(f"anon{i}", f"user{i}", i % 500) for i in range(5000)]
    chain = [("c1", "c2", 1), ("c2", "c3", 2), ("c3", "c4", 3), ("x1", "x2", 4), ("x2", "x1", 5)]
    users = [(None, u, 0) for u in ("c1", "c2", "c3", "c4", "x1", "x2")]
    with p.connect() as wh:
        write_source(wh, identifies=[*IDENTIFIES, *people, *users], aliases=[*ALIASES, *chain])
    result = p.run()
    assert result.ok, [n.error for n in result.nodes]
    got = canonical_ids(p)
    assert got[("c1", "user_id")] == got[("c2", "user_id")] == "c4" and got[("u2", "user_id")] == "u4"
    assert got[("anon4321", "anonymous_id")] == "user4321"
    assert result.node("src").metrics["identity"]["unresolved_aliases"] == 2  # the cycle x1 <-> x2
