"""The `segment_source` node's `identity:` option: which tables feed the identity graph,
their windows with `incremental: true`, and what the node exposes and records about it.

The resolution itself is in ``segloop.segment.identity`` (identifies and aliases,
``identity: stitch``) and ``segloop.segment.profiles_sync`` (Segment's Profiles Sync
tables, ``identity: profiles``); this module only wires them into the node.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from segloop.segment.identity import (
    ALIASES,
    IDENTITIES_SUFFIX,
    LINK_TABLES,
    LINKS_SUFFIX,
    build_identity_graph,
    column_of,
    stitch,
)
from segloop.segment.schema import STANDARD_TABLES

if TYPE_CHECKING:  # pragma: no cover
    import ibis.expr.types as ir

    from segloop.operators.base import RunContext
    from segloop.operators.segment_source import SegmentSourceOperator

MARKS_KEY = "identity_high_water_marks"


@dataclass
class SourceIdentity:
    """How the node's views get ``canonical_user_id``, and what it adds to its catalog."""

    apply: Callable[[ir.Table], ir.Table]
    catalog: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)


def build_identity(op: SegmentSourceOperator, ctx: RunContext, schema: str,
                   present: dict[str, str], chosen: list[str]) -> SourceIdentity:
    """Build the node's identity graph in the warehouse (``identity: stitch`` or ``profiles``)."""
    config, wh = op.config, ctx.warehouse
    if config.identity == "profiles":
        from segloop.segment.profiles_sync import apply, build_profiles_graph

        profiles = build_profiles_graph(wh, ctx.node, ctx.table_name, schema, present, config.profiles_schema)
        for warning in profiles.warnings:
            ctx.warn(warning)
        return SourceIdentity(apply=lambda table: apply(table, profiles.identities), catalog=profiles.catalog,
                              metrics={"identity": profiles.metrics})
    names = [t for t in (*LINK_TABLES, ALIASES) if t in present]
    if "tracks" not in present:  # event tables repeat `tracks`; read them only without it
        names += [t for t in chosen if t not in STANDARD_TABLES and t not in names]
    links_name = ctx.table_name(LINKS_SUFFIX)
    # An incremental run merges new rows into the links of earlier runs; without that table
    # (first run, or dropped) it reads every row once.
    merge = config.incremental and wh.table_if_exists(links_name) is not None
    marks_before = op._previous_marks(ctx, MARKS_KEY) if merge else {}
    tables: dict[str, ir.Table] = {}
    marks: dict[str, str] = {}
    for short in names:
        table = wh.table(present[short], schema=schema)
        column = column_of(table, "received_at")
        if config.incremental and column is not None:
            table, high = _window(wh, table, column, marks_before.get(short))
            if high is not None:
                marks[short] = high
        tables[short] = table
    graph = build_identity_graph(wh, tables, (ctx.table_name(IDENTITIES_SUFFIX), links_name),
                                 config.shared_device, incremental=merge)
    for warning in graph.warnings:
        ctx.warn(warning)
    identities = wh.table(graph.identities)
    source = ", ".join(f"{schema}.{present[t]}" for t in names)
    window = "new rows merged into earlier runs' links" if merge else "all rows"
    catalog = [{"table": IDENTITIES_SUFFIX, "view": f"{wh.schema}.{graph.identities}",
                "source": source, "window": window},
               {"table": LINKS_SUFFIX, "view": f"{wh.schema}.{graph.links}",
                "source": source, "window": window}]
    metrics: dict[str, Any] = {"identity": graph.metrics}
    if config.incremental:
        metrics[MARKS_KEY] = {**marks_before, **marks}
    return SourceIdentity(apply=lambda table: stitch(table, identities), catalog=catalog,
                          metrics=metrics)


def _window(wh: Any, table: ir.Table, column: str, start: str | None) -> tuple[ir.Table, str | None]:
    """Rows received after ``start`` (an earlier run's mark) and up to the current maximum."""
    import ibis

    kind = table[column].type()
    high = wh.scalar(table[column].max())
    if high is None:
        return table, None
    table = table.filter(table[column] <= ibis.literal(high).cast(kind))
    if start is not None:
        table = table.filter(table[column] > ibis.literal(datetime.fromisoformat(start)).cast(kind))
    return table, high.isoformat()
