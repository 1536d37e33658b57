"""Which outgoing ids Segment already knows: the match rate of a Segment node.

A Segment node in a pipeline with ``segment_source`` nodes looks its customer ids up in
what those sources hold about known people:

- ``users``: one row per ``user_id`` Segment has seen in an identify (``id`` = the user id);
- ``user_identifiers`` (Profiles Sync, materialized): the ids of each unified profile, rows
  of ``type = 'user_id'`` and their ``value``. Found in the source schema, or as the
  ``<pipeline>__<source>__user_identifiers`` table or view a ``segment_source`` node
  materializes from the raw Profiles Sync tables.

An id found in neither is *unknown*: sending it makes Segment create a new profile, which
Segment bills as a monthly tracked user (MTU). The whole tables are read, not the source's
``since:``/``incremental:`` window: a customer identified a year ago is still known.
Everything is an Ibis expression: the lookup is a join inside the warehouse.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import ibis.expr.types as ir

    from segloop.operators.base import NodeConfig
    from segloop.warehouses import Warehouse

USERS, USER_IDENTIFIERS = "users", "user_identifiers"
# (type column, value column) pairs of an identifiers table: Profiles Sync's materialized
# `user_identifiers`, and the raw `external_id_mapping_updates` layout.
IDENTIFIER_COLUMNS = (("type", "value"), ("external_id_type", "external_id_value"))
USER_ID_TYPE = "user_id"


@dataclass(frozen=True)
class KnownIds:
    """The ids Segment knows (one text column ``_known``, no NULLs) and where they came from."""

    table: ir.Table
    sources: tuple[str, ...]  # qualified names of the tables read, for metrics and messages

    def contains(self, key: ir.StringValue) -> ir.BooleanValue:
        return key.isin(self.table._known)


def segment_sources(nodes: Mapping[str, NodeConfig]) -> list[tuple[str, str]]:
    """``(node, schema)`` of every ``segment_source`` node of a pipeline, in file order."""
    found: list[tuple[str, str]] = []
    for name, config in nodes.items():
        if config.type == "segment_source":
            found.append((name, str(getattr(config, "schema_", ""))))
    return found


def known_ids(wh: Warehouse, pipeline: str, nodes: Mapping[str, NodeConfig]) -> KnownIds | None:
    """The known ids of every ``segment_source`` of the pipeline; None without any (or
    when none of them has a ``users`` or ``user_identifiers`` table)."""
    parts: list[ir.Table] = []
    names: list[str] = []
    for node, schema in segment_sources(nodes):
        tables = _tables(wh, schema)
        if USERS in tables:
            users = wh.table(tables[USERS], schema=tables["."])
            id_column = _column(users, "id")
            if id_column is not None:
                parts.append(users.select(_known=users[id_column].cast("string")))
                names.append(f"{tables['.']}.{tables[USERS]}")
        identifiers, where = _identifiers(wh, tables, pipeline, node)
        if identifiers is not None:
            pair = next(((t, v) for t, v in ((_column(identifiers, a), _column(identifiers, b))
                                             for a, b in IDENTIFIER_COLUMNS) if t and v), None)
            if pair is not None:
                kind, value = pair
                rows = identifiers.filter(identifiers[kind].cast("string") == USER_ID_TYPE)
                parts.append(rows.select(_known=rows[value].cast("string")))
                names.append(where)
    if not parts:
        return None
    table = parts[0]
    for part in parts[1:]:
        table = table.union(part, distinct=False)
    return KnownIds(table.filter(table._known.notnull()), tuple(names))


def _tables(wh: Warehouse, schema: str) -> dict[str, str]:
    """Lower-case name -> actual name of a source schema's tables (``"."``: the schema's
    actual name); empty when the schema does not exist (the source node says so)."""
    schemas = {s.lower(): s for s in wh.list_schemas()}
    actual = schema if schema in schemas.values() else schemas.get(schema.lower())
    if actual is None:
        return {}
    return {".": actual, **{t.lower(): t for t in wh.list_tables(actual)}}


def _identifiers(wh: Warehouse, tables: dict[str, str], pipeline: str, node: str) -> tuple[Any, str]:
    if USER_IDENTIFIERS in tables:
        return wh.table(tables[USER_IDENTIFIERS], schema=tables["."]), f"{tables['.']}.{tables[USER_IDENTIFIERS]}"
    exposed = f"{pipeline}__{node}__{USER_IDENTIFIERS}"
    table = wh.table_if_exists(exposed)
    return table, f"{wh.schema}.{exposed}"


def _column(table: ir.Table, name: str) -> str | None:
    for column in table.columns:
        if column.lower() == name:
            return column
    return None
