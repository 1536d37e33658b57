"""`identity: profiles` with `incremental: true`, on DuckDB and PostgreSQL: the event views
hold only the rows received since the last run, while the Profiles Sync graph is resolved
again from every row on each run (docs/identity.md says why), so a merge that lands in a
later run re-attributes the earlier events and profiles."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from tests.fixtures_pg import duckdb_or_pg_workspace
from tests.segment.test_profiles_sync import (
    EVENT_TYPES,
    EXPECTED,
    EXTERNAL_ID_MAPPING_UPDATES,
    ID_GRAPH_UPDATES,
    IDENTIFIES,
    PAGES,
    PROFILE_TRAITS_UPDATES,
    _event,
    pipeline,
    query,
    table,
)

workspace = duckdb_or_pg_workspace  # DuckDB, then a throwaway PostgreSQL database

NODE = "    type: segment_source\n    schema: ps\n    identity: profiles\n    incremental: true\n"


def test_a_merge_landing_in_a_later_run_moves_earlier_profiles_and_events(workspace: Path) -> None:
    merge = [i for i, r in enumerate(ID_GRAPH_UPDATES.to_pylist()) if r["triggering_event_id"] == "event_7"]
    before = ID_GRAPH_UPDATES.filter(pa.array([i not in merge for i in range(ID_GRAPH_UPDATES.num_rows)]))
    p = pipeline(workspace, NODE)
    with p.connect() as wh:
        for name, data in (("id_graph_updates", before), ("external_id_mapping_updates", EXTERNAL_ID_MAPPING_UPDATES),
                           ("profile_traits_updates", PROFILE_TRAITS_UPDATES), ("pages", PAGES),
                           ("identifies", IDENTIFIES)):
            wh.create_table(name, data, schema="ps")
    first = p.run()
    assert first.ok, [n.error for n in first.nodes]
    got = {(r["id"], r["id_type"]): r["canonical_segment_id"] for r in query(p, "select * from ps__src__identities")}
    assert got[("profile_2", "segment_id")] == "profile_1"  # profile_1 not merged into profile_0 yet
    assert {r["id"] for r in query(p, "select id from ps__src__pages")} == {"event_1", "event_3", "event_8"}

    with p.connect() as wh:  # the merge profile_1 -> profile_0 lands, with a new page view
        wh.insert("id_graph_updates", ID_GRAPH_UPDATES.take(pa.array(merge)), schema="ps")
        wh.insert("pages", table([_event("event_9", "profile_1", "5285bc35-05ef-4d21", None, "2022-08-02 09:00:00",
                                         context_url="twilio.com/docs")], {**EVENT_TYPES, "context_url": pa.string()}),
                  schema="ps")
    second = p.run()
    assert second.ok, [n.error for n in second.nodes]
    rows = query(p, "select * from ps__src__identities")
    got2 = {(r["id"], r["id_type"]): (r["canonical_segment_id"], r["canonical_user_id"]) for r in rows}
    assert got2 == EXPECTED  # as one run over every row gives
    pages = {r["id"]: (r["canonical_segment_id"], r["canonical_user_id"]) for r in query(p, "select * from ps__src__pages")}
    assert pages == {"event_9": ("profile_0", "jane-0")}  # only the new row, through the new merge
    catalog = {r["table"]: r["window"] for r in query(p, "select * from ps__src")}
    assert catalog["identities"] == "all rows" and catalog["pages"].startswith("received_at >")
    traits = {(r["canonical_segment_id"], r["name"]): r["value"] for r in query(p, "select * from ps__src__user_traits")}
    assert traits[("profile_0", "plan")] == "enterprise" and ("profile_1", "plan") not in traits
