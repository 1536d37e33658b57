"""Features and labels of the propensity node, built in the warehouse as Ibis expressions.

Per customer, from the events strictly before a snapshot time: activity counts and recency
overall and per event type, active days, sessions (30-minute gaps), tenure, and purchase
RFM from the orders (see segloop.operators.propensity for how they are used). Kept apart
from the node so the SQL side can be read and tested on its own.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from segloop.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    import ibis.expr.types as ir

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
    ):
        c = config
        ev = events.select(
            _cid=events[c.customer_id],
            _ts=events[c.timestamp].cast("timestamp"),
            _ev=events[c.event].cast("string"),
        )
        ev = ev.filter(ev._cid.notnull() & ev._ts.notnull())
        # A session starts after 30 minutes without events. The gap to the previous event
        # does not depend on the snapshot, so it is computed once for all snapshots.
        previous = ev._ts.lag().over(group_by=ev._cid, order_by=ev._ts)
        gap = ev._ts.epoch_seconds() - previous.epoch_seconds()
        self.events: ir.Table = ev.mutate(
            _new_session=_flag(gap.isnull() | (gap > SESSION_GAP_SECONDS)),
            # first event of a calendar day: summing it counts active days without DISTINCT
            _new_day=_flag(previous.isnull() | (previous.truncate("D") != ev._ts.truncate("D"))),
        )
        self.orders: ir.Table | None = None
        if orders is not None:
            o = orders.select(
                _cid=orders[c.customer_id],
                _ts=orders[c.timestamp].cast("timestamp"),
                _amount=orders[c.amount].cast("float64").fill_null(0.0),
            )
            self.orders = o.filter(o._cid.notnull() & o._ts.notnull())
        self.config = config
        self.event_types = event_types or []
        self.target = snake(config.target_event)
        self._cached: list[Any] = []
        self._warehouse = warehouse
        self._names: tuple[dict[str, list[str]], dict[str, int]] | None = None

    def _event_names(self) -> tuple[dict[str, list[str]], dict[str, int]]:
        if self._names is None:  # read once, after `cache()` when the node runs
            self._names = self._scan_event_names(self._warehouse)
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
        e = self.events
        counts = e.group_by("_ev").aggregate(_n=e.count())
        counts = counts.filter(counts._ev.notnull()).order_by(counts._n.desc())
        rows = warehouse.to_arrow(counts.limit(self.MAX_EVENT_NAMES + 1))
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

    def is_event(self, table: ir.Table, name: str) -> ir.BooleanValue:
        """Rows whose event is ``name`` in any spelling (``Order Completed``, ``order_completed``)."""
        values = self.raw_names.get(snake(name))
        if values:
            return table._ev.isin(values)
        return table._ts.isnull() & table._ts.notnull()  # never seen: a false column, not a scalar

    def cache(self) -> None:
        """Materialize the prepared events (and orders) once for the several snapshots."""
        self.events = self.events.cache()
        self._cached.append(self.events)
        if self.orders is not None:
            self.orders = self.orders.cache()
            self._cached.append(self.orders)

    def release(self) -> None:
        while self._cached:
            self._cached.pop().release()

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
            "events_30d",
            "active_days",
            "active_days_30d",
            "sessions",
            "sessions_30d",
            "days_since_last_event",
            "days_since_first_event",
            "target_count",
            "target_30d",
            "days_since_last_target",
        ]
        for i, _ in enumerate(self.event_types):
            names += [f"ev{i}_count", f"ev{i}_30d", f"ev{i}_days_since"]
        if self.orders is not None:
            names += ["orders", "orders_30d", "spend", "spend_30d", "avg_order_value"]
            names += ["days_since_last_order", "days_between_orders"]
        return names

    def features(self, snapshot: datetime) -> ir.Table:
        """One row per customer with any event before ``snapshot`` (within the lookback)."""
        import ibis

        at = ibis.literal(snapshot).cast("timestamp")
        at_s = at.epoch_seconds()
        e = self.events.filter(self.events._ts < at)
        if self.config.lookback_days:
            e = e.filter(
                e._ts >= ibis.literal(snapshot - timedelta(days=self.config.lookback_days))
            )
        e = e.mutate(
            _recent7=e._ts >= ibis.literal(snapshot - timedelta(days=7)),
            _recent30=e._ts >= ibis.literal(snapshot - timedelta(days=30)),
        )

        def since(last: ir.TimestampValue) -> ir.FloatingValue:
            return (at_s - last.epoch_seconds()) / DAY_SECONDS

        is_target = self.is_event(e, self.target)
        aggs: dict[str, Any] = {
            "events": e.count(),
            "events_7d": _flag(e._recent7).sum(),
            "events_30d": _flag(e._recent30).sum(),
            "active_days": e._new_day.sum(),
            "active_days_30d": e._new_day.sum(where=e._recent30),
            "sessions": e._new_session.sum(),
            "sessions_30d": e._new_session.sum(where=e._recent30),
            "days_since_last_event": since(e._ts.max()),
            "days_since_first_event": since(e._ts.min()),
            "target_count": _flag(is_target).sum(),
            "target_30d": _flag(is_target & e._recent30).sum(),
            "days_since_last_target": since(e._ts.max(where=is_target)),
        }
        for i, name in enumerate(self.event_types):
            hit = self.is_event(e, name)
            aggs[f"ev{i}_count"] = _flag(hit).sum()
            aggs[f"ev{i}_30d"] = _flag(hit & e._recent30).sum()
            aggs[f"ev{i}_days_since"] = since(e._ts.max(where=hit))
        feats = e.group_by("_cid").aggregate(**aggs)
        if self.orders is None:
            return feats
        o = self.orders.filter(self.orders._ts < at)
        recent = o._ts >= ibis.literal(snapshot - timedelta(days=30))
        per = o.group_by(o._cid.name("_ocid")).aggregate(
            orders=o.count(),
            orders_30d=_flag(recent).sum(),
            spend=o._amount.sum(),
            spend_30d=o._amount.sum(where=recent),
            _first=o._ts.min(),
            _last=o._ts.max(),
        )
        joined = feats.left_join(per, feats._cid == per._ocid)
        n = joined.orders.fill_null(0)
        return joined.select(
            *feats.columns,
            orders=n,
            orders_30d=joined.orders_30d.fill_null(0),
            spend=joined.spend.fill_null(0.0),
            spend_30d=joined.spend_30d.fill_null(0.0),
            avg_order_value=ibis.ifelse(n > 0, joined.spend / n, ibis.null("float64")),
            days_since_last_order=since(joined._last),
            days_between_orders=ibis.ifelse(
                n > 1,
                (joined._last.epoch_seconds() - joined._first.epoch_seconds())
                / DAY_SECONDS
                / (n - 1),
                ibis.null("float64"),
            ),
        )

    def labelled(self, snapshot: datetime, window: timedelta) -> ir.Table:
        """Features at ``snapshot`` plus ``_label``: did the target event occur in the window."""
        import ibis

        feats = self.features(snapshot)
        start = ibis.literal(snapshot).cast("timestamp")
        stop = ibis.literal(snapshot + window).cast("timestamp")
        e = self.events
        hits = e.filter(self.is_event(e, self.target) & (e._ts >= start) & (e._ts < stop))
        hit_ids = hits.select(_lcid=hits._cid).distinct()
        joined = feats.left_join(hit_ids, feats._cid == hit_ids._lcid)
        return joined.select(*feats.columns, _label=_flag(joined._lcid.notnull()))


def _flag(condition: ir.BooleanValue) -> ir.IntegerValue:
    """1/0 for a condition; PostgreSQL cannot cast booleans to bigint."""
    import ibis

    return ibis.ifelse(condition, 1, 0).cast("int64")
