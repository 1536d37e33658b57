"""Find the Segment sources in a warehouse: schemas holding `tracks` or `identifies`.

Segment writes one schema per source. ``segloop check-warehouse`` and the segment_source
node's error messages use this to show what is there. segloop's own tables in a source
schema (``_segloop_loaded_files``, ``_segloop_load_rejects``, ...) are not Segment data and
are never listed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from segloop.segment.schema import is_segloop_table

if TYPE_CHECKING:  # pragma: no cover
    from segloop.warehouses import Warehouse

MARKER_TABLES = ("tracks", "identifies")
CORE_TABLES = frozenset({"tracks", "identifies", "users", "pages", "screens", "groups", "accounts", "aliases"})
COUNTED_TABLES = ("tracks", "identifies", "users")
SYSTEM_SCHEMAS = frozenset({"information_schema", "pg_catalog", "pg_toast"})


@dataclass
class SegmentSource:
    """One Segment source schema: its tables and the row counts of the core tables."""

    schema: str
    tables: list[str]
    rows: dict[str, int] = field(default_factory=dict)

    @property
    def event_tables(self) -> list[str]:
        return [t for t in self.tables if t.lower() not in CORE_TABLES]


def segment_tables(tables: list[str]) -> list[str]:
    """The tables of a source schema that are Segment data (segloop's own left out)."""
    return [t for t in tables if not is_segloop_table(t)]


def segment_sources(wh: Warehouse, count_rows: bool = False) -> list[SegmentSource]:
    """Schemas holding `tracks` or `identifies` (any case), with row counts when asked."""
    sources = []
    for schema in sorted(wh.list_schemas()):
        if schema.lower() in SYSTEM_SCHEMAS or schema.lower().startswith("pg_temp"):
            continue
        try:
            tables = sorted(segment_tables(wh.list_tables(schema)))
        except Exception:  # a schema we may not read: not ours to report on
            continue
        lower = {t.lower(): t for t in tables}
        if not any(marker in lower for marker in MARKER_TABLES):
            continue
        source = SegmentSource(schema=schema, tables=tables)
        if count_rows:
            for name in COUNTED_TABLES:
                if name in lower:
                    source.rows[name] = wh.count(wh.table(lower[name], schema=schema))
        sources.append(source)
    return sources
