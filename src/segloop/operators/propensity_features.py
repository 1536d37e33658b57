"""Features and labels of the propensity node, built in the warehouse as Ibis expressions.

Per customer, from the events strictly before a snapshot time: activity counts and recency
overall and per event type (counts also in the last 7, 14 and 30 days: browsing intensity
before a purchase), active days, sessions (30-minute gaps), tenure, and purchase
RFM from the orders (see segloop.operators.propensity for how they are used). Kept apart
from the node so the SQL side can be read and tested on its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from segloop.errors import DataError
from segloop.operators.columns import money

if TYPE_CHECKING:  # pragma: no cover
    import ibis.expr.types as ir

    from segloop.operators.base import RunScope
    from segloop.operators.propensity import PropensityConfig

DAY_SECONDS = 86400.0
SESSION_GAP_SECONDS = 30 * 60


def snake(name: str) -> str:
    """Segment's table/column form of an event name: ``Order Completed`` -> ``order_completed``."""
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


class FeatureBuilder:
    """Ibis expressions for per-customer features and labels at a snapshot time."""

    MAX_EVENT_NAMES: ClassVar[int] = 10_000

    def __init__(
        self,
        warehouse: Any,
        events: ir.Table,
        orders: ir.Table | None,
        config: PropensityConfig,
        event_types: list[str] | None = None,
        shared: RunScope | None = None,
    ):
        c = config
        ev = events.select(
            _cid=events[c.customer_id],
            _ts=events[c.timestamp].cast("timestamp"),
            _ev=events[c.event].cast("string"),
        )
        self.rows: ir.Table = ev.filter(ev._cid.notnull() & ev._ts.notnull())
        self.events: ir.Table = _with_flags(self.rows)
        self.orders: ir.Table | None = None
        if orders is not None:
            o = orders.select(
                _cid=orders[c.customer_id],
                _ts=orders[c.timestamp].cast("timestamp"),
                # Exact decimals: a sum of doubles depends on the order the warehouse adds
                # them in (Spark's partitions), which changed scores in the last bits and so
                # the order of near-tied customers between engines.
                _amount=money(orders[c.amount]),
            )
            self.orders = o.filter(o._cid.notnull() & o._ts.notnull())
        self.config = config
        self.event_types = event_types or []
        self.target = snake(config.target_event)
        self._warehouse = warehouse
        self._names: tuple[dict[str, list[str]], dict[str, int]] | None = None
        self._shared = shared

    def _event_names(self) -> tuple[dict[str, list[str]], dict[str, int]]:
        if self._names is None:  # read once per builder, and once per run for the same events
            scan = self._scan_event_names
            if self._shared is None:
                self._names = scan(self._warehouse)
            else:
                key = ("propensity.event_names", self._warehouse.compile(self._names_query()))
                self._names = self._shared.get(key, lambda: scan(self._warehouse))
        return self._names

    @property
    def raw_names(self) -> dict[str, list[str]]:
        """snake_case event name -> the spellings found in the data."""
        return self._event_names()[0]

    @property
    def counts(self) -> dict[str, int]:
        """snake_case event name -> number of events."""
        return self._event_names()[1]

    def _scan_event_names(self, warehouse: Any) -> tuple[dict[str, list[str]], dict[str, int]]:
        """Distinct event names, grouped by their snake_case form, with event counts.

        Matching names on this short list (``event IN (...)``) instead of normalising every
        row's text in SQL keeps the per-row work of the feature queries to comparisons.
        """
        rows = warehouse.to_arrow(self._names_query())
        if rows.num_rows > self.MAX_EVENT_NAMES:
            raise DataError(
                f"column `{self.config.event}` has more than {self.MAX_EVENT_NAMES:,} distinct "
                "values; it does not look like an event name. Set `event:` to the column with "
                "event names (Segment: `event` or `event_text`)"
            )
        raw: dict[str, list[str]] = {}
        total: dict[str, int] = {}
        for name, n in zip(rows["_ev"].to_pylist(), rows["_n"].to_pylist(), strict=True):
            key = snake(str(name))
            raw.setdefault(key, []).append(str(name))
            total[key] = total.get(key, 0) + int(n)
        return raw, total

    def _names_query(self) -> ir.Table:
        e = self.events
        counts = e.group_by("_ev").aggregate(_n=e.count())
        counts = counts.filter(counts._ev.notnull()).order_by(counts._n.desc())
        return counts.limit(self.MAX_EVENT_NAMES + 1)

    def is_event(self, table: ir.Table, name: str) -> ir.BooleanValue:
        """Rows whose event is ``name`` in any spelling (``Order Completed``, ``order_completed``)."""
        values = self.raw_names.get(snake(name))
        if values:
            return table._ev.isin(values)
        return table._ts.isnull() & table._ts.notnull()  # never seen: a false column, not a scalar

    def top_event_types(self, limit: int) -> list[str]:
        """The ``limit`` most frequent event types (snake_case), most frequent first."""
        ranked = sorted(self.counts.items(), key=lambda item: (-item[1], item[0]))
        return [name for name, _ in ranked[:limit]]

    @property
    def has_orders(self) -> bool:
        return self.orders is not None

    def feature_names(self) -> list[str]:
        names = [
            "events",
            "events_7d",
            "events_14d",
            "events_30d",
            "active_days",
            "active_days_30d",
            "sessions",
            "sessions_7d",
            "sessions_14d",
            "sessions_30d",
            "days_since_last_event",
            "days_since_first_event",
            "target_count",
            "target_30d",
            "days_since_last_target",
        ]
        for i, _ in enumerate(self.event_types):
            names += [f"ev{i}_count", f"ev{i}_7d", f"ev{i}_14d", f"ev{i}_30d", f"ev{i}_days_since"]
        if self.orders is not None:
            names += ["orders", "orders_30d", "spend", "spend_30d", "avg_order_value"]
            names += ["days_since_last_order", "days_between_orders"]
        return names

    def features(self, snapshot: datetime) -> ir.Table:
        """One row per customer with any event before ``snapshot`` (within the lookback)."""
        wide = self.snapshots([Snapshot("", snapshot)])
        return self.select_snapshot(wide, "")

    def labelled(self, snapshot: datetime, window: timedelta) -> ir.Table:
        """Features at ``snapshot`` plus ``_label``: did the target event occur in the window."""
        wide = self.snapshots([Snapshot("", snapshot, window)])
        return self.select_snapshot(wide, "", labelled=True)

    def snapshots(self, snapshots: list[Snapshot], part: tuple[int, int] | None = None) -> ir.Table:
        """Features (and labels) of several snapshots in one pass over the events.

        One row per customer with any event; the columns of snapshot ``s`` are prefixed with
        ``s.prefix`` (its label is ``<prefix>_label``). The session and day flags need a
        window over each customer's events; computing every snapshot's aggregates in the
        same GROUP BY reads and sorts the events once per run instead of once per snapshot,
        and nothing event-sized is kept afterwards (``select_snapshot`` reads one back).

        ``part=(i, n)``: only the customers of part ``i`` of ``n`` (by a hash of their id,
        taken before the window), so that each of ``n`` queries holds a share of the
        customers' aggregate states (``aggregates`` per customer).
        """
        import ibis

        e = self.events if part is None else _with_flags(in_part(self.rows, part))
        aggs: dict[str, Any] = {}
        for snap in snapshots:
            aggs.update(self._event_aggregates(e, snap))
            if snap.window is not None:
                start = ibis.literal(snap.at).cast("timestamp")
                stop = ibis.literal(snap.at + snap.window).cast("timestamp")
                hit = self.is_event(e, self.target) & (e._ts >= start) & (e._ts < stop)
                aggs[f"{snap.prefix}_label"] = _flag(hit).max()
        feats = e.group_by("_cid").aggregate(**aggs)
        if self.orders is None:
            return feats
        o = self.orders if part is None else in_part(self.orders, part)
        per: dict[str, Any] = {}
        for snap in snapshots:
            per.update(self._order_aggregates(o, snap))
        orders = o.group_by(o._cid.name("_ocid")).aggregate(**per)
        joined = feats.left_join(orders, feats._cid == orders._ocid)
        columns: dict[str, Any] = {}
        for snap in snapshots:
            p = snap.prefix
            at_s = ibis.literal(snap.at).cast("timestamp").epoch_seconds()
            n = joined[f"{p}_orders"].fill_null(0)
            first, last = joined[f"{p}_first"], joined[f"{p}_last"]
            spend = joined[f"{p}_spend"]
            columns[f"{p}orders"] = n
            columns[f"{p}orders_30d"] = joined[f"{p}_orders_30d"].fill_null(0)
            columns[f"{p}spend"] = spend.fill_null(0.0)
            columns[f"{p}spend_30d"] = joined[f"{p}_spend_30d"].fill_null(0.0)
            columns[f"{p}avg_order_value"] = ibis.ifelse(n > 0, spend / n, ibis.null("float64"))
            columns[f"{p}days_since_last_order"] = (at_s - last.epoch_seconds()) / DAY_SECONDS
            columns[f"{p}days_between_orders"] = ibis.ifelse(
                n > 1,
                (last.epoch_seconds() - first.epoch_seconds()) / DAY_SECONDS / (n - 1),
                ibis.null("float64"),
            )
        return joined.select(*feats.columns, **columns)

    def aggregates(self, snapshots: list[Snapshot]) -> int:
        """How many aggregates ``snapshots`` computes per customer: the state each customer
        holds in the warehouse while they are grouped."""
        n = 0
        for snap in snapshots:
            n += len(self._event_aggregates(self.events, snap)) + (snap.window is not None)
            if self.orders is not None:
                n += len(self._order_aggregates(self.orders, snap))
        return n

    def _order_aggregates(self, o: ir.Table, snap: Snapshot) -> dict[str, Any]:
        import ibis

        before = o._ts < ibis.literal(snap.at).cast("timestamp")
        recent = before & (o._ts >= ibis.literal(snap.at - timedelta(days=30)))
        p = snap.prefix
        return {
            f"{p}_orders": _flag(before).sum(),
            f"{p}_orders_30d": _flag(recent).sum(),
            f"{p}_spend": o._amount.sum(where=before).cast("float64"),
            f"{p}_spend_30d": o._amount.sum(where=recent).cast("float64"),
            f"{p}_first": o._ts.min(where=before),
            f"{p}_last": o._ts.max(where=before),
        }

    def _event_aggregates(self, e: ir.Table, snap: Snapshot) -> dict[str, Any]:
        import ibis

        at = ibis.literal(snap.at).cast("timestamp")
        at_s = at.epoch_seconds()
        seen = e._ts < at
        if self.config.lookback_days:
            seen = seen & (
                e._ts >= ibis.literal(snap.at - timedelta(days=self.config.lookback_days))
            )
        recent7 = seen & (e._ts >= ibis.literal(snap.at - timedelta(days=7)))
        recent14 = seen & (e._ts >= ibis.literal(snap.at - timedelta(days=14)))
        recent30 = seen & (e._ts >= ibis.literal(snap.at - timedelta(days=30)))

        def since(last: ir.TimestampValue) -> ir.FloatingValue:
            return (at_s - last.epoch_seconds()) / DAY_SECONDS

        is_target = self.is_event(e, self.target)
        p = snap.prefix
        aggs: dict[str, Any] = {
            f"{p}events": _flag(seen).sum(),
            f"{p}events_7d": _flag(recent7).sum(),
            f"{p}events_14d": _flag(recent14).sum(),
            f"{p}events_30d": _flag(recent30).sum(),
            f"{p}active_days": e._new_day.sum(where=seen),
            f"{p}active_days_30d": e._new_day.sum(where=recent30),
            f"{p}sessions": e._new_session.sum(where=seen),
            # Browsing intensity just before the snapshot: people look at what they are
            # about to buy, often on a device (or before a sign-up) that only identity
            # stitching ties to them.
            f"{p}sessions_7d": _flag(recent7 & (e._new_session == 1)).sum(),
            f"{p}sessions_14d": _flag(recent14 & (e._new_session == 1)).sum(),
            f"{p}sessions_30d": e._new_session.sum(where=recent30),
            f"{p}days_since_last_event": since(e._ts.max(where=seen)),
            f"{p}days_since_first_event": since(e._ts.min(where=seen)),
            f"{p}target_count": _flag(is_target & seen).sum(),
            f"{p}target_30d": _flag(is_target & recent30).sum(),
            f"{p}days_since_last_target": since(e._ts.max(where=is_target & seen)),
        }
        for i, name in enumerate(self.event_types):
            hit = self.is_event(e, name)
            aggs[f"{p}ev{i}_count"] = _flag(hit & seen).sum()
            aggs[f"{p}ev{i}_7d"] = _flag(hit & recent7).sum()
            aggs[f"{p}ev{i}_14d"] = _flag(hit & recent14).sum()
            aggs[f"{p}ev{i}_30d"] = _flag(hit & recent30).sum()
            aggs[f"{p}ev{i}_days_since"] = since(e._ts.max(where=hit & seen))
        return aggs

    def select_snapshot(self, wide: ir.Table, prefix: str, labelled: bool = False) -> ir.Table:
        """The rows and columns of one snapshot of ``snapshots()``, without the prefix.

        Customers whose first event is after the snapshot (or whose events all fall outside
        the lookback) are not part of it.
        """
        rows = wide.filter(wide[f"{prefix}events"] > 0)
        columns = {name: rows[f"{prefix}{name}"] for name in self.feature_names()}
        if labelled:
            columns["_label"] = rows[f"{prefix}_label"]
        return rows.select(_cid=rows._cid, **columns)


@dataclass(frozen=True)
class Snapshot:
    """A time at which features are taken: ``prefix`` names its columns; with a ``window``,
    ``<prefix>_label`` says whether the target event happened in the window after it."""

    prefix: str
    at: datetime
    window: timedelta | None = None


def _with_flags(ev: ir.Table) -> ir.Table:
    """The events with ``_new_session`` and ``_new_day`` (1 on a customer's first event of
    a session, of a calendar day)."""
    # A session starts after 30 minutes without events. The gap to the previous event
    # does not depend on the snapshot, so it is computed once for all snapshots.
    previous = ev._ts.lag().over(group_by=ev._cid, order_by=ev._ts)
    gap = ev._ts.epoch_seconds() - previous.epoch_seconds()
    return ev.mutate(
        _new_session=_flag(gap.isnull() | (gap > SESSION_GAP_SECONDS)),
        # first event of a calendar day: summing it counts active days without DISTINCT
        _new_day=_flag(previous.isnull() | (previous.truncate("D") != ev._ts.truncate("D"))),
    )


def in_part(rows: ir.Table, part: tuple[int, int]) -> ir.Table:
    """The rows whose ``_cid`` falls in part ``i`` of ``n`` (a hash of the id: every row of
    a customer in the same part, the parts about equal)."""
    i, n = part
    return rows.filter((rows._cid.hash() % n).abs() == i)


def _flag(condition: ir.BooleanValue) -> ir.IntegerValue:
    """1/0 for a condition; PostgreSQL cannot cast booleans to bigint."""
    import ibis

    return ibis.ifelse(condition, 1, 0).cast("int64")
