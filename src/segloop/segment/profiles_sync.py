"""Segment's Profiles Sync as the identity source (`segment_source` with `identity: profiles`).

With Segment Unify, Profiles Sync lands the identity graph Segment itself resolved in a
schema of its own (``<space>.<table>``), as documented on Segment's "Profiles Sync Tables
and Materialized Views" page:

- ``id_graph_updates`` (``segment_id``, ``canonical_segment_id``, ``triggering_event_*``,
  ``timestamp``, ``seq``): a row when a profile is created (pointing at itself) and when it
  is merged into another. The latest row of a ``segment_id`` says where it points now; a
  merged-into profile may itself be merged later, so the pointers are followed to the end
  of the chain (``identity.chase``, bounded rounds, as Segment's recursive entries do);
- ``external_id_mapping_updates`` (``segment_id``, ``external_id_type``,
  ``external_id_value``, ``timestamp``, ...): the ids (``user_id``, ``anonymous_id``,
  ``email``, ...) each profile was seen with;
- ``profile_traits_updates`` (``segment_id``, ``seq``, ``timestamp``, one column per trait);
- event tables (``identifies``, ``tracks``, ``pages``, ...) with ``segment_id``: the profile
  at the time of the event, which may since have been merged;
- optionally Segment's materialized tables ``profile_merges`` (``segment_id`` ->
  ``canonical_segment_id``), ``user_identifiers`` (``canonical_segment_id``, ``type``,
  ``value``) and ``user_traits`` (``canonical_segment_id``, ``name``, ``value``).

The node writes ``<pipeline>__<node>__identities``: one row per segment id and per
external id, with its ``canonical_segment_id`` and the profile's ``canonical_user_id`` (its
latest ``user_id``; NULL for a profile that never identified). Each event view gets both
columns: through its ``segment_id`` when it has one, else through its ``user_id``, then its
``anonymous_id`` (so a source schema's events can be resolved with a Profiles Sync schema
given as ``profiles_schema``). The node also exposes ``user_identifiers`` and
``user_traits``: Segment's materialized tables when the schema has them, else built here
from the raw tables (the latest value of each identifier / trait per canonical profile).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from segloop.errors import NodeError
from segloop.segment.identity import (
    CANONICAL_COLUMN,
    MAX_ALIAS_HOPS,
    chase,
    chase_tables,
    column_of,
)

if TYPE_CHECKING:  # pragma: no cover
    import ibis.expr.types as ir

    from segloop.warehouses import Warehouse

ID_GRAPH_UPDATES = "id_graph_updates"
EXTERNAL_IDS = "external_id_mapping_updates"
TRAITS_UPDATES = "profile_traits_updates"
PROFILE_MERGES = "profile_merges"
USER_IDENTIFIERS = "user_identifiers"
USER_TRAITS = "user_traits"
PROFILES_TABLES = frozenset([ID_GRAPH_UPDATES, EXTERNAL_IDS, TRAITS_UPDATES, PROFILE_MERGES,
                             USER_IDENTIFIERS, USER_TRAITS, "id_graph", "external_id_mapping",
                             "profile_traits"])
SEGMENT_COLUMN = "canonical_segment_id"
# Columns of profile_traits_updates that are not traits (Segment's dbt model leaves out
# the same ones, and every `context_*` / `_*` column).
NOT_TRAITS = frozenset(["id", "segment_id", "canonical_segment_id", "merged_to", "seq", "timestamp",
                        "received_at", "sent_at", "uuid_ts", "user_id", "anonymous_id",
                        "original_timestamp", "event_source_id"])


@dataclass
class ProfilesGraph:
    """What ``build_profiles_graph`` wrote: the identities table and what else it exposes."""

    identities: ir.Table
    catalog: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def build_profiles_graph(wh: Warehouse, node: str, table_name: Callable[[str], str], schema: str,
                         present: dict[str, str], profiles_schema: str | None = None) -> ProfilesGraph:
    """Resolve every id through the Profiles Sync tables (in ``schema``, or in
    ``profiles_schema``) and write identities, user_identifiers and user_traits.

    ``present``: the source schema's tables (lower-case name -> actual); ``table_name``
    names a table of the node in the output schema (``identities`` -> ``p__n__identities``).
    """
    ps_schema, tables = schema, present
    if profiles_schema is not None:
        ps_schema, tables = _schema_tables(wh, profiles_schema, node)
    if ID_GRAPH_UPDATES not in tables and PROFILE_MERGES not in tables:
        have = ", ".join(sorted(tables)) or "no tables"
        raise NodeError(node, f"`identity: profiles` needs Segment's Profiles Sync tables "
                        f"(`{ID_GRAPH_UPDATES}` or `{PROFILE_MERGES}`, and `{EXTERNAL_IDS}` or "
                        f"`{USER_IDENTIFIERS}`) in schema `{ps_schema}` (it has: {have}); name the "
                        "Profiles Sync schema in `profiles_schema:`, or use `identity: stitch`")

    def read(name: str) -> ir.Table:
        return wh.table(tables[name], schema=ps_schema)

    scratch = f"{table_name('identities')}__chase"
    try:
        return _build(wh, read, tables, table_name, schema, ps_schema, scratch)
    finally:
        for name in chase_tables(scratch):
            wh.drop_table(name)


def _build(wh: Warehouse, read: Callable[[str], ir.Table], tables: dict[str, str],
           table_name: Callable[[str], str], schema: str, ps_schema: str, scratch: str) -> ProfilesGraph:
    profiles, unresolved = _profiles(wh, read(ID_GRAPH_UPDATES) if ID_GRAPH_UPDATES in tables else None,
                                     read(PROFILE_MERGES) if PROFILE_MERGES in tables else None, scratch)
    identifiers = _identifiers(read(EXTERNAL_IDS) if EXTERNAL_IDS in tables else None,
                               read(USER_IDENTIFIERS) if USER_IDENTIFIERS in tables else None, profiles)
    owner = _profile_user(identifiers)
    identities = _identities(profiles, identifiers, owner)
    name = table_name("identities")
    wh.replace_table(name, identities, count=False)
    table = wh.table(name)
    catalog: list[dict[str, Any]] = [{"table": "identities", "view": f"{wh.schema}.{name}",
                                      "source": f"{ps_schema}.{tables.get(ID_GRAPH_UPDATES) or tables[PROFILE_MERGES]}",
                                      "window": "all rows"}]
    for short, build, raw in ((USER_IDENTIFIERS, lambda: _user_identifiers(identifiers), EXTERNAL_IDS),
                              (USER_TRAITS, lambda: _user_traits(read(TRAITS_UPDATES), profiles), TRAITS_UPDATES)):
        target = table_name(short)
        if short in tables:
            if ps_schema == schema:
                continue  # exposed as the schema's other tables are
            wh.replace_view(target, read(short))
            catalog.append({"table": short, "view": f"{wh.schema}.{target}",
                            "source": f"{ps_schema}.{tables[short]}", "window": "all rows"})
        elif raw in tables:
            wh.replace_table(target, build(), count=False)
            catalog.append({"table": short, "view": f"{wh.schema}.{target}",
                            "source": f"{ps_schema}.{tables[raw]} (materialized by segloop)", "window": "all rows"})
    graph = ProfilesGraph(identities=table, catalog=catalog, metrics=_metrics(wh, table, unresolved))
    if graph.metrics["unresolved_merges"]:
        graph.warnings.append(
            f"{graph.metrics['unresolved_merges']} profile(s) are in merge chains longer than "
            f"{MAX_ALIAS_HOPS} hops or in cycles; they resolve to where {MAX_ALIAS_HOPS} hops got them")
    return graph


def _schema_tables(wh: Warehouse, wanted: str, node: str) -> tuple[str, dict[str, str]]:
    by_lower = {s.lower(): s for s in wh.list_schemas()}
    if wanted.lower() not in by_lower:
        raise NodeError(node, f"`profiles_schema: {wanted}` does not exist in warehouse `{wh.name}`; "
                        "name the schema Profiles Sync writes to (the Unify space's name)")
    actual = by_lower[wanted.lower()]
    return actual, {t.lower(): t for t in wh.list_tables(actual)}


def _text(table: ir.Table, name: str) -> ir.StringValue:
    column = column_of(table, name)
    if column is None:
        raise NodeError("profiles", f"Profiles Sync table has no `{name}` column")
    value = table[column]
    return value if value.type().is_string() else value.cast("string")


def _when(table: ir.Table) -> ir.Value:
    import ibis

    for name in ("timestamp", "received_at", "uuid_ts"):
        column = column_of(table, name)
        if column is not None and table[column].type().is_timestamp():
            return table[column].cast("timestamp")
    return ibis.null().cast("timestamp")


def _latest(table: ir.Table, key: list[str]) -> ir.Table:
    """The latest row per ``key``: by ``seen``, then ``seq`` (Segment's ordering column)."""
    import ibis

    order = [table.seen.desc()] + ([table.seq.desc()] if "seq" in table.columns else [])
    rank = ibis.row_number().over(group_by=[table[k] for k in key], order_by=order)
    return table.mutate(_rank=rank).filter(lambda t: t["_rank"] == 0).drop("_rank")


def _profiles(wh: Warehouse, updates: ir.Table | None, merges: ir.Table | None,
              scratch: str) -> tuple[ir.Table, int]:
    """(segment_id, canonical_segment_id, first_seen, last_seen) for every profile id, and
    how many merge chains did not end within ``MAX_ALIAS_HOPS`` (``chase`` writes the chains
    to the ``scratch`` tables)."""
    import ibis

    source = updates if updates is not None else merges
    assert source is not None
    seq = column_of(source, "seq")
    rows = source.select(segment_id=_text(source, "segment_id"), next_id=_text(source, SEGMENT_COLUMN),
                         seen=_when(source), **({"seq": source[seq]} if seq else {}))
    rows = rows.filter(rows.segment_id.notnull())
    latest = _latest(rows, ["segment_id"])
    pointer = latest.filter(latest.next_id.notnull() & (latest.next_id != latest.segment_id)).select(
        id="segment_id", next_id="next_id")
    chased, unresolved = chase(wh, pointer, scratch)
    ids = ibis.union(rows.select(pid="segment_id", seen="seen"),
                     rows.filter(rows.next_id.notnull()).select(pid="next_id", seen="seen"))
    ids = ids.group_by("pid").aggregate(first_seen=ids.seen.min(), last_seen=ids.seen.max())
    joined = ids.left_join(chased, ids.pid == chased.id)
    profiles = joined.select(segment_id=joined.pid, canonical_segment_id=joined.canonical.coalesce(joined.pid),
                             first_seen=joined.first_seen, last_seen=joined.last_seen)
    return profiles, unresolved


def _identifiers(updates: ir.Table | None, materialized: ir.Table | None, profiles: ir.Table) -> ir.Table:
    """(id_type, id, canonical_segment_id, first_seen, last_seen): the latest mapping of each
    external id, through the current graph (a later merge moves it)."""
    import ibis

    if updates is not None:
        rows = updates.select(segment_id=_text(updates, "segment_id"), id_type=_text(updates, "external_id_type"),
                              id=_text(updates, "external_id_value"), seen=_when(updates))
        graph = profiles.view().select(g_id="segment_id", g_canonical="canonical_segment_id")
        joined = rows.left_join(graph, rows.segment_id == graph.g_id)
        rows = joined.select("id_type", "id", "seen",
                             canonical_segment_id=joined.g_canonical.coalesce(joined.segment_id))
    elif materialized is not None:
        rows = materialized.select(id_type=_text(materialized, "type"), id=_text(materialized, "value"),
                                   seen=_when(materialized),
                                   canonical_segment_id=_text(materialized, SEGMENT_COLUMN))
    else:
        schema = {"id_type": "string", "id": "string", "seen": "timestamp", "canonical_segment_id": "string"}
        rows = ibis.memtable({c: [] for c in schema}, schema=schema)
    rows = rows.filter(rows.id.notnull() & (rows.id != ""))
    spans = rows.group_by(["id_type", "id"]).aggregate(first_seen=rows.seen.min(), last_seen=rows.seen.max())
    latest = _latest(rows, ["id_type", "id"]).select("id_type", "id", "canonical_segment_id")
    latest = latest.view()
    joined = spans.inner_join(latest, [spans.id_type == latest.id_type, spans.id == latest.id])
    return joined.select(id_type=spans.id_type, id=spans.id, canonical_segment_id=latest.canonical_segment_id,
                         first_seen=spans.first_seen, last_seen=spans.last_seen)


def _profile_user(identifiers: ir.Table) -> ir.Table:
    """(p_segment_id, p_user_id): each profile's latest user id."""
    users = identifiers.filter(identifiers.id_type == "user_id").mutate(seen=identifiers.last_seen)
    latest = _latest(users.rename(owner="canonical_segment_id"), ["owner"])
    return latest.select(p_segment_id="owner", p_user_id="id")


def _identities(profiles: ir.Table, identifiers: ir.Table, owner: ir.Table) -> ir.Table:
    import ibis

    segment_rows = profiles.select(id="segment_id", id_type=ibis.literal("segment_id"),
                                   canonical_segment_id="canonical_segment_id",
                                   first_seen="first_seen", last_seen="last_seen")
    external = identifiers.select("id", "id_type", "canonical_segment_id", "first_seen", "last_seen")
    rows = ibis.union(segment_rows, external)
    owner = owner.view()
    joined = rows.left_join(owner, rows.canonical_segment_id == owner.p_segment_id)
    return joined.select("id", "id_type", "canonical_segment_id", **{CANONICAL_COLUMN: joined.p_user_id},
                         first_seen=joined.first_seen, last_seen=joined.last_seen)


def _user_identifiers(identifiers: ir.Table) -> ir.Table:
    """Segment's ``user_identifiers`` layout: one row per identifier of each profile."""
    return identifiers.select(canonical_segment_id="canonical_segment_id", type="id_type", value="id",
                              timestamp="last_seen")


def _user_traits(updates: ir.Table, profiles: ir.Table) -> ir.Table:
    """Segment's ``user_traits`` layout: the latest non-null value of each trait per profile."""
    import ibis

    traits = [c for c in updates.columns if c.lower() not in NOT_TRAITS
              and not c.lower().startswith(("context_", "_"))]
    graph = profiles.view().select(g_id="segment_id", g_canonical="canonical_segment_id")
    seq = column_of(updates, "seq")
    base = updates.mutate(_sid=_text(updates, "segment_id"), _seen=_when(updates))
    joined = base.left_join(graph, base._sid == graph.g_id)
    base = joined.mutate(_canonical=joined.g_canonical.coalesce(joined._sid))
    parts = []
    for trait in traits:
        value = base[trait] if base[trait].type().is_string() else base[trait].cast("string")
        parts.append(base.select(canonical_segment_id=base._canonical, name=ibis.literal(trait.lower()),
                                 value=value, seen=base._seen, **({"seq": base[seq]} if seq else {}))
                     .filter(lambda t: t.value.notnull()))
    if not parts:
        schema = {"canonical_segment_id": "string", "name": "string", "value": "string", "timestamp": "timestamp"}
        return ibis.memtable({c: [] for c in schema}, schema=schema)
    rows = ibis.union(*parts) if len(parts) > 1 else parts[0]
    latest = _latest(rows, ["canonical_segment_id", "name"])
    return latest.select("canonical_segment_id", "name", "value", timestamp="seen")


def apply(table: ir.Table, identities: ir.Table) -> ir.Table:
    """``table`` with ``canonical_segment_id`` and ``canonical_user_id``: through its
    ``segment_id`` if it has one, else its ``user_id``, then its ``anonymous_id``."""
    import ibis

    if column_of(table, SEGMENT_COLUMN) is not None or column_of(table, CANONICAL_COLUMN) is not None:
        return table  # a Profiles Sync table itself, or already resolved
    keys = [(c, kind) for c, kind in ((column_of(table, "segment_id"), "segment_id"),) if c]
    if not keys:
        keys = [(c, kind) for c, kind in ((column_of(table, "user_id"), "user_id"),
                                          (column_of(table, "anonymous_id"), "anonymous_id")) if c]
    if not keys:
        return table
    columns = list(table.columns)
    joined = table
    segments, users = [], []
    for n, (column, kind) in enumerate(keys):
        side = identities.filter(identities.id_type == kind).select(
            **{f"_sl{n}_id": identities.id, f"_sl{n}_segment": identities.canonical_segment_id,
               f"_sl{n}_user": identities[CANONICAL_COLUMN]})
        key = joined[column] if joined[column].type().is_string() else joined[column].cast("string")
        joined = joined.left_join(side, key == side[f"_sl{n}_id"])
        segments.append(joined[f"_sl{n}_segment"])
        users.append(joined[f"_sl{n}_user"])
    first = ibis.coalesce(*segments) if len(segments) > 1 else segments[0]
    user = ibis.coalesce(*users) if len(users) > 1 else users[0]
    return joined.select(*[joined[c] for c in columns], **{SEGMENT_COLUMN: first, CANONICAL_COLUMN: user})


def _metrics(wh: Warehouse, identities: ir.Table, unresolved: int) -> dict[str, Any]:
    t = identities
    row = wh.rows(t.aggregate(
        ids=t.count(),
        profiles=t.canonical_segment_id.nunique(),
        segment_ids=(t.id_type == "segment_id").sum(),
        merged_segment_ids=((t.id_type == "segment_id") & (t.id != t.canonical_segment_id)).sum(),
        profiles_with_user_id=t.canonical_segment_id.nunique(where=t[CANONICAL_COLUMN].notnull()),
    ))[0]
    out = {k: int(v or 0) for k, v in row.items()}
    out["unresolved_merges"] = unresolved
    return out
