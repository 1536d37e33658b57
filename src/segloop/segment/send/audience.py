"""Who a Segment node sends to: its input's customers minus the holdout group, and (with
``on_unknown: skip``) minus the ids Segment does not know yet.

``Audience`` joins the two rules (segment/send/holdout.py, segment/send/known_ids.py) into
the one predicate the sync plan holds keys back with (``SyncState.plan(held=...)``), and
counts the node's customers by group and by match in one query inside the warehouse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import ibis.expr.types as ir

    from segloop.segment.send.holdout import Holdout
    from segloop.segment.send.known_ids import KnownIds
    from segloop.segment.sync import HeldKeys
    from segloop.warehouses import Warehouse


@dataclass(frozen=True)
class Audience:
    holdout: Holdout | None
    known: KnownIds | None
    skip_unknown: bool

    def held(self, wh: Warehouse) -> HeldKeys | None:
        """The keys never sent (and never sent as removed): held out, or unknown and skipped."""
        holdout, known = self.holdout, self.known
        rules: list[HeldKeys] = []
        if holdout is not None:
            rules.append(lambda key: holdout.held_out(wh, key))
        if known is not None and self.skip_unknown:
            rules.append(lambda key: ~known.contains(key))
        if not rules:
            return None

        def held(key: ir.StringValue) -> ir.BooleanValue:
            out = rules[0](key)
            for rule in rules[1:]:
                out = out | rule(key)
            return out

        return held

    @staticmethod
    def keys(narrow: ir.Table, key_column: str) -> ir.Table:
        """The input's distinct customer keys as text (``_key``), without NULLs."""
        keys = narrow.select(_key=narrow[key_column].cast("string"))
        return keys.filter(keys._key.notnull()).distinct()

    def counts(self, wh: Warehouse, narrow: ir.Table, key_column: str) -> dict[str, Any]:
        """Customers, held out, and (with known ids) known / unknown among those not held out."""
        import ibis

        if self.holdout is None and self.known is None:
            return {"_held_keys": 0}  # nothing to count: no extra query
        keys = self.keys(narrow, key_column)
        one, zero = ibis.literal(1), ibis.literal(0)
        if self.known is not None:
            known = self.known.table
            known = known.select(_kid=known._known).distinct()
            keys = keys.left_join(known, keys._key == known._kid)
        measures: dict[str, Any] = {"customers": keys.count()}
        held_out = self.holdout.held_out(wh, keys._key) if self.holdout is not None else None
        if held_out is not None:
            measures["held_out"] = ibis.ifelse(held_out, one, zero).sum()
        if self.known is not None:
            is_known = keys._kid.notnull() if held_out is None else ~held_out & keys._kid.notnull()
            measures["known_ids"] = ibis.ifelse(is_known, one, zero).sum()
        [row] = wh.rows(keys.aggregate(**measures))
        out: dict[str, Any] = {}
        customers = int(row["customers"] or 0)
        held = int(row.get("held_out") or 0)
        if self.holdout is not None:
            out.update(held_out=held, holdout_percent=self.holdout.percent)
        if self.known is not None:
            known_ids = int(row["known_ids"] or 0)
            unknown = customers - held - known_ids
            audience = known_ids + unknown
            out.update(known_ids=known_ids, unknown_ids=unknown,
                       match_rate=round(known_ids / audience, 4) if audience else None,
                       match_sources=list(self.known.sources))
            if self.skip_unknown:
                out["unknown_skipped"] = unknown
        out["_held_keys"] = held + (out.get("unknown_skipped", 0))
        return out

    def unknown_to_send(self, wh: Warehouse, pending: ir.Table, send_categories: tuple[str, ...]) -> int:
        """Of the rows this run sends, how many have an id Segment does not know (each
        creates a new profile)."""
        if self.known is None:
            return 0
        rows = pending.filter(pending._category.isin(send_categories) & pending._key.notnull())
        return wh.count(rows.filter(~self.known.contains(rows._key)))
