"""Identity stitching: one canonical user id per person, computed in the warehouse.

In Segment data one person is several ids. Events before sign-up carry only an
``anonymous_id``; ``identify`` (and every later event of analytics.js) carries the
``anonymous_id`` with the ``user_id``; ``alias`` says ``previous_id`` is now ``user_id``.
The ``segment_source`` node's ``identity: stitch`` resolves them here, in SQL (Ibis
expressions, so DuckDB, PostgreSQL, Snowflake, BigQuery and Spark each get their own SQL;
no recursive CTE), in three steps:

1. **Links** (``<pipeline>__<node>__identity_links``): every (id, id type, linked user id)
   seen in ``identifies``, ``tracks``, ``pages``, ``screens``, ``groups`` and ``aliases``,
   with the first and last time it was seen. This is the only step that reads events;
   with ``incremental: true`` it reads only the rows received since the last successful run
   and merges them into the links table (min of first seen, max of last seen: merging the
   same rows twice changes nothing, so a failed run that is re-run is harmless).
2. **User ids** follow ``alias`` calls between user ids (a -> b -> c resolves a and b to c).
   When one user id was aliased to two others, the latest alias wins. Chains are followed
   for at most ``MAX_ALIAS_HOPS`` rounds (one join each, no recursion, each round written to
   a scratch table, stopping when no chain can move: the memory a round needs does not
   depend on how many rounds there are, so DuckDB can spill it); an id still
   pointing further after that (a longer chain, or a cycle such as a -> b -> a) keeps
   where it got to, and the node warns with the count.
3. **Anonymous ids** resolve to the canonical user of the user ids they were seen with.
   Only ``alias`` merges two user ids; an anonymous id never does. An anonymous id seen
   with two or more (canonical) users is a **shared device** (a family laptop, a store's
   iPad). Segment's identity resolution, with its default merge protection (``user_id``
   limited to 1 per profile, ``anonymous_id`` of lower priority), keeps such an anonymous
   id on the profile it joined first and puts the second user's events on their own
   profile. ``shared_device: first`` (the default) does the same: the anonymous id's
   events without a user id go to the user it was first seen with (ties: the smaller user
   id), while events that carry a user id always go to that user.
   ``shared_device: none`` leaves them unattributed (``canonical_user_id`` NULL).

The result, ``<pipeline>__<node>__identities``, is one row per (id, id type): the canonical
user id, first and last seen, how many users the id was seen with and the rule that
resolved it. Each event view then gets ``canonical_user_id``: the canonical user of the
event's ``user_id`` if it has one, else of its ``anonymous_id``; NULL for a visitor who
never identified.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # pragma: no cover
    import ibis.expr.types as ir

    from segloop.warehouses import Warehouse

# Call tables whose rows link an anonymous id to a user id; track event tables repeat
# `tracks` rows, so they are read only when the source has no `tracks` table.
LINK_TABLES = ("identifies", "tracks", "pages", "screens", "groups")
ALIASES = "aliases"
MAX_ALIAS_HOPS = 16
CANONICAL_COLUMN = "canonical_user_id"
LINKS_SUFFIX = "identity_links"
IDENTITIES_SUFFIX = "identities"
USER, ANONYMOUS, ALIAS = "user_id", "anonymous_id", "alias"
SharedDevice = Literal["first", "none"]
LINK_SCHEMA = {"id": "string", "id_type": "string", "linked_user_id": "string",
               "first_seen": "timestamp", "last_seen": "timestamp"}


@dataclass
class IdentityGraph:
    """What ``build_identity_graph`` wrote and found."""

    identities: str  # table name in the output schema
    links: str
    metrics: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def column_of(table: ir.Table, name: str) -> str | None:
    """The actual name of column ``name`` (any case: Snowflake's are upper case)."""
    for column in table.columns:
        if column.lower() == name:
            return column
    return None


def _id(table: ir.Table, column: str) -> ir.StringValue:
    """An id column as text, empty strings as NULL (Segment treats them as absent)."""
    value = table[column]
    text = value if value.type().is_string() else value.cast("string")
    return text.nullif("")


def _time(table: ir.Table) -> ir.TimestampValue | None:
    for name in ("timestamp", "received_at", "original_timestamp", "sent_at"):
        column = column_of(table, name)
        if column is not None and table[column].type().is_timestamp():
            return table[column].cast("timestamp")
    return None


def link_rows(tables: Mapping[str, ir.Table]) -> ir.Table | None:
    """(id, id_type, linked_user_id, first_seen, last_seen) of every call in Segment's call tables
    (a row per call and id; ``write_links`` groups them).

    ``tables`` maps a short name (``identifies``, ``aliases``, ...) to its rows (already
    windowed for an incremental run). None when no table has an id column.
    """
    import ibis

    parts: list[ir.Table] = []
    null_text = ibis.null().cast("string")
    for name, table in tables.items():
        when = _time(table)
        if when is None:
            continue
        user = column_of(table, "user_id")
        anon = column_of(table, "anonymous_id")
        if user is not None:
            parts.append(table.select(id=_id(table, user), id_type=ibis.literal(USER),
                                      linked_user_id=null_text, seen=when))
        if name == ALIASES:
            previous = column_of(table, "previous_id")
            if previous is not None and user is not None:
                parts.append(table.select(id=_id(table, previous), id_type=ibis.literal(ALIAS),
                                          linked_user_id=_id(table, user), seen=when))
        if anon is not None:
            linked = _id(table, user) if user is not None else null_text
            parts.append(table.select(id=_id(table, anon), id_type=ibis.literal(ANONYMOUS),
                                      linked_user_id=linked, seen=when))
    if not parts:
        return None
    rows = ibis.union(*parts) if len(parts) > 1 else parts[0]
    rows = rows.filter(rows.id.notnull() & (rows.linked_user_id.isnull() | (rows.linked_user_id != rows.id)))
    return rows.select("id", "id_type", "linked_user_id", first_seen=rows.seen, last_seen=rows.seen)


def merge_links(previous: ir.Table, new: ir.Table) -> ir.Table:
    """The links of an earlier run and the new rows, to be grouped into one set (idempotent)."""
    import ibis

    columns = list(LINK_SCHEMA)
    old = previous.select(**{c: previous[c].cast(t) for c, t in LINK_SCHEMA.items()})
    return ibis.union(old.select(*columns), new.select(*columns))


def write_links(wh: Warehouse, name: str, rows: ir.Table) -> None:
    """Table ``name``: ``rows`` grouped per (id, id type, linked user id), first and last seen.

    One query per id type (the key includes it, so the result is the same): on a million
    customers' events DuckDB failed the single GROUP BY over every type within 512 MiB,
    while each type's (user ids: ~1M groups, anonymous ids: ~3.5M, from ~270M rows) spills
    and passes within 128 MiB.
    """
    for i, kind in enumerate((USER, ANONYMOUS, ALIAS)):
        of_kind = rows.filter(rows.id_type == kind)
        grouped = of_kind.group_by(["id", "id_type", "linked_user_id"]).aggregate(
            first_seen=of_kind.first_seen.min(), last_seen=of_kind.last_seen.max())
        if i == 0:
            wh.replace_table(name, grouped, count=False)
        else:
            wh.insert(name, grouped)


def _user_ids(links: ir.Table) -> ir.Table:
    users = links.filter(links.id_type == USER)
    return users.group_by("id").aggregate(first_seen=users.first_seen.min(), last_seen=users.last_seen.max())


def alias_pointers(links: ir.Table) -> ir.Table:
    """(``id``, ``next_id``): where each user id that was aliased went. The latest alias
    of a user id says it (a -> b, later a -> c: c); at most one row per id."""
    import ibis

    aliases = links.filter(links.id_type == ALIAS)
    known = _user_ids(links).select(known_id="id")
    user_aliases = aliases.semi_join(known, aliases.id == known.known_id)
    latest = ibis.row_number().over(group_by=user_aliases.id,
                                    order_by=[user_aliases.last_seen.desc(), user_aliases.linked_user_id])
    return user_aliases.mutate(_rank=latest).filter(lambda t: t["_rank"] == 0).select(
        "id", next_id="linked_user_id")


def resolve(links: ir.Table, chased: ir.Table,
            shared_device: SharedDevice = "first") -> ir.Table:
    """One row per (id, id_type) with its canonical user id; ``chased``: (``id``,
    ``canonical``) for every aliased user id, as ``chase`` wrote it."""
    import ibis

    user_ids = _user_ids(links)
    aliases = links.filter(links.id_type == ALIAS)
    known = user_ids.view().select(known_id="id")
    canon_of = chased.select(alias_id="id", canonical="canonical")
    user_rows = user_ids.left_join(canon_of, user_ids.id == canon_of.alias_id)
    user_rows = user_rows.select(
        id=user_rows.id, id_type=ibis.literal(USER),
        canonical_user_id=ibis.coalesce(user_rows.canonical, user_rows.id),
        first_seen=user_rows.first_seen, last_seen=user_rows.last_seen,
        user_ids=ibis.literal(1).cast("int64"),
        rule=ibis.ifelse(user_rows.canonical.isnull() | (user_rows.canonical == user_rows.id),
                         ibis.literal("user_id"), ibis.literal("alias")))

    canonical_users = user_rows.view().select(link_id="id", link_canonical="canonical_user_id")
    # Anonymous ids: those seen on events, and alias previous ids that are not user ids.
    anon_alias = aliases.anti_join(known, aliases.id == known.known_id)
    anonymous = ibis.union(links.filter(links.id_type == ANONYMOUS).select(*LINK_SCHEMA),
                           anon_alias.select(*LINK_SCHEMA))
    seen = anonymous.group_by("id").aggregate(first_seen=anonymous.first_seen.min(),
                                              last_seen=anonymous.last_seen.max())
    linked = anonymous.filter(anonymous.linked_user_id.notnull())
    linked = linked.inner_join(canonical_users, linked.linked_user_id == canonical_users.link_id)
    per_user = linked.group_by(["id", "link_canonical"]).aggregate(since=linked.first_seen.min())
    first = ibis.row_number().over(group_by=per_user.id, order_by=[per_user.since, per_user.link_canonical])
    counted = per_user.mutate(_rank=first, _users=per_user.link_canonical.count().over(group_by=per_user.id))
    chosen = counted.filter(counted["_rank"] == 0).select(
        owner_id="id", owner="link_canonical", n_users="_users")
    chosen = chosen.view()
    anon_rows = seen.left_join(chosen, seen.id == chosen.owner_id)
    n_users = ibis.coalesce(anon_rows.n_users, 0).cast("int64")
    shared = n_users > 1
    owner = anon_rows.owner
    if shared_device == "none":
        owner = ibis.ifelse(shared, ibis.null().cast("string"), owner)
    anon_rows = anon_rows.select(
        id=anon_rows.id, id_type=ibis.literal(ANONYMOUS), canonical_user_id=owner,
        first_seen=anon_rows.first_seen, last_seen=anon_rows.last_seen, user_ids=n_users,
        rule=ibis.cases((n_users == 0, "unlinked"), (shared, f"shared_device_{shared_device}"),
                        else_="linked"))
    return ibis.union(user_rows, anon_rows)


def chase_tables(scratch: str) -> tuple[str, str, str]:
    """The tables ``chase`` writes: the pointers, and two for the rounds (each reads the other)."""
    return f"{scratch}_pointer", f"{scratch}_a", f"{scratch}_b"


def chase(wh: Warehouse, pointer: ir.Table, scratch: str, hops: int = MAX_ALIAS_HOPS) -> tuple[ir.Table, int]:
    """Follow ``pointer`` (``id`` -> ``next_id``, one per id) to the end of each chain.

    Returns (``id``, ``canonical``) for every id with a pointer, as a table written in the
    warehouse, and how many ids still point further after ``hops`` rounds (a longer chain or
    a cycle: they stay where ``hops`` rounds got them). One join per round, so no recursive
    CTE: every warehouse runs it. Each round is written before the next, and the rounds stop
    when no chain can move, which is at once for most shops (aliases are rarely chained).
    A single query of ``hops`` stacked joins needs memory for every join at once: DuckDB
    failed it within its ``memory_limit`` instead of spilling. The caller drops
    ``chase_tables(scratch)`` when done with the result.
    """
    pointers, *rounds = chase_tables(scratch)
    wh.replace_table(pointers, pointer, count=False)
    step = wh.table(pointers).select(hop_id="id", next_id="next_id")
    current = step.select(id="hop_id", canonical="next_id")
    for done in range(hops + 1):
        name = rounds[done % 2]
        wh.replace_table(name, current, count=False)
        chased = wh.table(name)
        ends = step.select(end_id="hop_id")
        # Ids whose chain goes on from where it got to: one more round moves each of them.
        moving = chased.semi_join(ends, chased.canonical == ends.end_id)
        if done == hops or not wh.count(moving):
            return chased, wh.count(moving.filter(moving.canonical != moving.id))
        joined = chased.left_join(step, chased.canonical == step.hop_id)
        current = joined.select("id", canonical=joined.next_id.coalesce(joined.canonical))
    raise AssertionError("unreachable: the loop returns at its last round")


def stitch(table: ir.Table, identities: ir.Table) -> ir.Table:
    """``table`` with ``canonical_user_id``: the canonical user of its ``user_id``, else of
    its ``anonymous_id`` (NULL for a visitor who never identified). Tables with neither
    column come back unchanged.

    A left join per id column, keyed by the column as stored. One lookup per event (the
    identities pivoted to a row per id, keyed by ``coalesce(user_id, anonymous_id)``) gives
    the same ids but was 1.3-1.4x slower on DuckDB (bench/identity.py ``--stitch-timing``,
    bench/README.md): DuckDB joins on a computed key at 2-3x the cost of a join on a
    stored column, more than the second join costs.
    """
    import ibis

    user = column_of(table, "user_id")
    anon = column_of(table, "anonymous_id")
    if user is None and anon is None or column_of(table, CANONICAL_COLUMN) is not None:
        return table
    columns = list(table.columns)
    joined = table
    picks: list[ir.Value] = []
    for column, kind, tag in ((user, USER, "u"), (anon, ANONYMOUS, "a")):
        if column is None:
            continue
        side = identities.filter(identities.id_type == kind).select(
            **{f"_sl_{tag}_id": identities.id, f"_sl_{tag}_canonical": identities.canonical_user_id})
        key = joined[column] if joined[column].type().is_string() else joined[column].cast("string")
        joined = joined.left_join(side, key == side[f"_sl_{tag}_id"])
        picks.append(joined[f"_sl_{tag}_canonical"])
        if kind == USER:  # a user id missing from the graph is still that user's
            raw = joined[column] if joined[column].type().is_string() else joined[column].cast("string")
            picks.append(raw.nullif(""))
    canonical = ibis.coalesce(*picks) if len(picks) > 1 else picks[0]
    return joined.select(*[joined[c] for c in columns], **{CANONICAL_COLUMN: canonical})


def graph_metrics(wh: Warehouse, identities: ir.Table, unresolved: int) -> dict[str, Any]:
    """Counts a user reads in the run's metrics: how many ids, people, stitched, shared."""
    t = identities
    summary = wh.rows(t.aggregate(
        ids=t.count(),
        user_ids=(t.id_type == USER).sum(),
        canonical_users=t.canonical_user_id.nunique(where=t.id_type == USER),
        anonymous_ids=(t.id_type == ANONYMOUS).sum(),
        anonymous_stitched=((t.id_type == ANONYMOUS) & t.canonical_user_id.notnull()).sum(),
        shared_devices=((t.id_type == ANONYMOUS) & (t.user_ids > 1)).sum(),
        aliased_user_ids=(t.rule == "alias").sum(),
    ))[0]
    summary = {k: int(v or 0) for k, v in summary.items()}
    summary["unresolved_aliases"] = unresolved
    return summary


def build_identity_graph(
    wh: Warehouse,
    tables: Mapping[str, ir.Table],
    names: tuple[str, str],
    shared_device: SharedDevice = "first",
    incremental: bool = False,
) -> IdentityGraph:
    """Write the links and identities tables (``names``: their names in the output schema).

    ``tables`` are the source's call tables (short name -> rows; windowed to the new rows
    when ``incremental``). An incremental run merges its links into the links table of the
    earlier runs; when that table is missing, the caller must pass every row.
    """
    identities_name, links_name = names
    new = link_rows(tables)
    if new is None:
        import ibis

        new = ibis.memtable({c: [] for c in LINK_SCHEMA}, schema=LINK_SCHEMA)
    previous = wh.table_if_exists(links_name) if incremental else None
    if previous is not None:
        # Built beside the old table first: the new one reads the old one.
        staged = f"{links_name}__new"
        write_links(wh, staged, merge_links(previous, new))
        wh.replace_table(links_name, wh.table(staged), count=False)
        wh.drop_table(staged)
    else:
        write_links(wh, links_name, new)
    links = wh.table(links_name)
    scratch = f"{identities_name}__chase"
    try:
        chased, unresolved = chase(wh, alias_pointers(links), scratch)
        wh.replace_table(identities_name, resolve(links, chased, shared_device), count=False)
    finally:
        for name in chase_tables(scratch):
            wh.drop_table(name)
    graph = IdentityGraph(identities=identities_name, links=links_name)
    graph.metrics = graph_metrics(wh, wh.table(identities_name), unresolved)
    if graph.metrics["unresolved_aliases"]:
        graph.warnings.append(
            f"{graph.metrics['unresolved_aliases']} user id(s) are in `alias` chains longer than "
            f"{MAX_ALIAS_HOPS} hops or in alias cycles (a -> b -> a); they resolve to where "
            f"{MAX_ALIAS_HOPS} hops got them. Check them with: select * from {wh.schema}.{links_name} "
            "where id_type = 'alias'")
    return graph
