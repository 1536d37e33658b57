"""Node `lift`: did the sends change what customers do? Treatment against holdout.

A Segment node with ``holdout:`` records every customer's group and the time it was first
assigned (``<pipeline>__<node>__holdout``, segment/send/holdout.py). This node counts, per
group, the customers with at least one outcome event (``input``: one row per event, e.g.
Order Completed) within ``window_days`` of their assignment, and estimates the difference
in conversion rate, treatment minus holdout, with a 95% confidence interval.

- Only customers whose window has closed by ``as_of`` (default: now) are counted, so every
  counted customer had the same time to convert; the others are reported as
  ``customers_window_open``. An event counts when ``first_assigned <= timestamp <
  first_assigned + window_days``.
- The interval for the difference of two independent proportions is Newcombe's hybrid
  score interval (Newcombe 1998, method 10): it combines the two groups' Wilson score
  intervals, keeps within [-1, 1] and covers close to 95% even with small groups or rates
  near 0, where the textbook Wald interval is too narrow. The p-value is the two-sided
  pooled two-proportion z-test.
- Counting runs as SQL in the warehouse (a join of the assignments with the events); only
  two rows of counts come back to Python for the interval.
- ``require:`` gates it like a model node (segloop.operators.gates): ``{lift_ci_low: 0}``
  fails the node unless the sends measurably helped, ``{lift: 0}`` unless the estimate is
  at least zero; nodes downstream (a Segment node sending on the strength of the result)
  are skipped and alerts fire. While no customer's window has closed there is no lift to
  check, and a gate on it fails with that reason.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from segloop.errors import NodeError
from segloop.operators.base import NodeConfig, NodeOutput, Operator, RunContext
from segloop.operators.columns import require_columns
from segloop.operators.gates import ModelNodeConfig, check_requirements

if TYPE_CHECKING:  # pragma: no cover
    import ibis.expr.types as ir

Z_95 = 1.959963984540054  # the standard normal's 97.5% quantile
CI_METHOD = "Newcombe hybrid score (Wilson), 95%"


class LiftConfig(ModelNodeConfig):
    GATE_METRICS: ClassVar[frozenset[str]] = frozenset(
        {"lift", "lift_ci_low", "lift_ci_high", "relative_lift", "p_value", "treatment_rate",
         "holdout_rate", "incremental_conversions", "treatment_customers", "holdout_customers"}
    )

    type: Literal["lift"] = "lift"
    holdout_of: str = Field(description="The Segment node whose `holdout:` groups are compared.")
    customer_id: str = Field(default="user_id", description="Column of the input holding the customer id.")
    timestamp: str = Field(default="timestamp", description="Column of the input holding the event's time.")
    event: str | None = Field(
        default=None, description="Only input rows of this event (its name, e.g. `Order Completed`, "
        "matched against `event_column`); default: every row of the input is an outcome.")
    event_column: str | None = Field(
        default=None, description="Column holding the event name; default `event_text` when the "
        "input has it (Segment's original name), else `event`.")
    window_days: int = Field(default=30, ge=1, le=3650, description="Days after assignment an outcome counts.")
    as_of: datetime | None = Field(default=None, description="Measure as of this time (UTC); default: now.")

    def referenced_nodes(self) -> dict[str, str]:
        return {"holdout_of": self.holdout_of}


class LiftOperator(Operator[LiftConfig]):
    """Conversion rate of treatment vs holdout within N days of assignment, with a 95% CI."""

    type_name: ClassVar[str] = "lift"
    config_model: ClassVar[type[NodeConfig]] = LiftConfig
    OUTPUT_IN_PYTHON: ClassVar[bool] = True  # two rows of counts and their intervals
    REPORT_SECTION = "lift"
    PROGRESS_UNIT: ClassVar[str] = "customers"

    def run(self, inputs: dict[str, ir.Table], ctx: RunContext) -> NodeOutput:
        import ibis
        import pyarrow as pa

        cfg = self.config
        wh = ctx.warehouse
        source_name, events = next(iter(inputs.items()))
        event_column = self._event_column(events)
        needed = {"customer_id": cfg.customer_id, "timestamp": cfg.timestamp}
        if cfg.event is not None:
            needed["event_column"] = event_column
        require_columns(events, needed, node=ctx.node, source=source_name)
        assignments = self._assignments(ctx)
        as_of = _utc(cfg.as_of or datetime.now(UTC))
        window = ibis.interval(days=cfg.window_days)
        closes = assignments.first_assigned + window
        closed = assignments.filter(closes <= ibis.literal(as_of, type="timestamp"))
        open_count = wh.count(assignments.filter(closes > ibis.literal(as_of, type="timestamp")))
        if cfg.event is not None:  # `Order Completed` also matches Segment's snake_cased `order_completed`
            names = sorted({cfg.event, re.sub(r"[^0-9a-z]+", "_", cfg.event.lower()).strip("_")})
            events = events.filter(events[event_column].cast("string").isin(names))
        outcome = events.select(_cid=events[cfg.customer_id].cast("string"),
                                _ts=events[cfg.timestamp].cast("timestamp"))
        hits = closed.join(outcome, [closed.customer_id == outcome._cid,
                                     outcome._ts >= closed.first_assigned,
                                     outcome._ts < closed.first_assigned + window])
        converted = hits.select(_hit=hits.customer_id).distinct()
        per_customer = closed.left_join(converted, closed.customer_id == converted._hit)
        counts = per_customer.group_by("group_name").aggregate(
            customers=per_customer.count(),
            converted=ibis.ifelse(per_customer._hit.notnull(), 1, 0).sum(),
        )
        found = {str(r["group_name"]): (int(r["customers"]), int(r["converted"] or 0)) for r in wh.rows(counts)}
        (n_t, x_t), (n_h, x_h) = found.get("treatment", (0, 0)), found.get("holdout", (0, 0))
        ctx.progress(n_t + n_h, n_t + n_h)
        metrics: dict[str, Any] = {
            "outcome": cfg.event or source_name, "window_days": cfg.window_days,
            "as_of": as_of.isoformat(timespec="seconds"), "assignments": f"{wh.schema}.{self._table(ctx)}",
            "treatment_customers": n_t, "treatment_converted": x_t,
            "holdout_customers": n_h, "holdout_converted": x_h,
            "customers_window_open": open_count, "ci_method": CI_METHOD,
        }
        metrics.update(lift_metrics(x_t, n_t, x_h, n_h))
        if not n_t or not n_h:
            missing = "holdout" if not n_h else "treatment"
            ctx.warn(f"no customer of the {missing} group has had {cfg.window_days} days since assignment "
                     f"by {metrics['as_of']} ({open_count:,} are still in their window); the lift is "
                     "measured once they have")
        rows = []
        for group, (n, x) in (("treatment", (n_t, x_t)), ("holdout", (n_h, x_h))):
            low, high = wilson(x, n)
            rows.append({"group_name": group, "customers": n, "converted": x,
                         "conversion_rate": x / n if n else None, "ci_low": low, "ci_high": high})
        table = pa.Table.from_pylist(rows, schema=pa.schema([
            ("group_name", pa.string()), ("customers", pa.int64()), ("converted", pa.int64()),
            ("conversion_rate", pa.float64()), ("ci_low", pa.float64()), ("ci_high", pa.float64())]))
        out = check_requirements(NodeOutput(table=table, metrics=metrics), cfg)
        if out.error and metrics["lift"] is None:
            out.error += (f". No lift was measured: {open_count:,} customers are still within "
                          f"their {cfg.window_days} days of assignment; the gate can pass once "
                          "their windows have closed")
        return out

    # -- inputs --------------------------------------------------------------------------

    def _event_column(self, events: ir.Table) -> str:
        if self.config.event_column:
            return self.config.event_column
        return "event_text" if "event_text" in events.columns else "event"

    def _table(self, ctx: RunContext) -> str:
        from segloop.segment.send.holdout import SUFFIX

        return ctx.table_name(SUFFIX, node=self.config.holdout_of)

    def _assignments(self, ctx: RunContext) -> ir.Table:
        """The Segment node's assignment table; a sentence saying what to do when it is missing."""
        cfg = self.config
        node = ctx.pipeline_nodes.get(cfg.holdout_of) if ctx.pipeline_nodes else None
        if ctx.pipeline_nodes and (node is None or node.type != "segment"):
            segment_nodes = [n for n, c in ctx.pipeline_nodes.items() if c.type == "segment"]
            raise NodeError(ctx.node, f"`holdout_of: {cfg.holdout_of}` is not a Segment node of this "
                            f"pipeline (Segment nodes: {', '.join(segment_nodes) or 'none'}); fix `holdout_of:`")
        ended = node is not None and getattr(node, "holdout", None) is None
        table = ctx.warehouse.table_if_exists(self._table(ctx))
        if ended and table is None:
            raise NodeError(ctx.node, f"Segment node `{cfg.holdout_of}` has no `holdout:`; add "
                            "`holdout: {percent: 10, salt: ...}` to it, run it, and measure the lift "
                            "once its customers have been assigned")
        if ended:
            ctx.warn(f"Segment node `{cfg.holdout_of}` has no `holdout:` any more: its customers are "
                     "all sent now, so the lift measured here is that of the groups recorded until then")
        if table is None:
            raise NodeError(ctx.node, f"{ctx.warehouse.schema}.{self._table(ctx)} does not exist yet: "
                            f"Segment node `{cfg.holdout_of}` assigns its holdout groups when it runs "
                            "(not in a dry run); run the pipeline once")
        return table


def _utc(moment: datetime) -> datetime:
    """A naive UTC time (how the assignment table stores ``first_assigned``)."""
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def wilson(converted: int, customers: int, z: float = Z_95) -> tuple[float | None, float | None]:
    """Wilson score interval of a proportion (None for an empty group)."""
    if customers <= 0:
        return None, None
    return _wilson(converted, customers, z)


def _wilson(converted: int, customers: int, z: float = Z_95) -> tuple[float, float]:
    p = converted / customers
    denominator = 1 + z * z / customers
    centre = (p + z * z / (2 * customers)) / denominator
    half = z * math.sqrt(p * (1 - p) / customers + z * z / (4 * customers * customers)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def lift_metrics(x_t: int, n_t: int, x_h: int, n_h: int) -> dict[str, Any]:
    """Rates, their difference (treatment - holdout) with Newcombe's 95% interval, the
    relative lift, the pooled z-test's p-value and the conversions the sends added."""
    if not n_t or not n_h:
        return {"treatment_rate": x_t / n_t if n_t else None, "holdout_rate": x_h / n_h if n_h else None,
                "lift": None, "lift_ci_low": None, "lift_ci_high": None, "relative_lift": None,
                "p_value": None, "significant": None, "incremental_conversions": None}
    p_t, p_h = x_t / n_t, x_h / n_h
    (l_t, u_t), (l_h, u_h) = _wilson(x_t, n_t), _wilson(x_h, n_h)
    difference = p_t - p_h
    low = difference - math.sqrt((p_t - l_t) ** 2 + (u_h - p_h) ** 2)
    high = difference + math.sqrt((u_t - p_t) ** 2 + (p_h - l_h) ** 2)
    pooled = (x_t + x_h) / (n_t + n_h)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_t + 1 / n_h))
    p_value = math.erfc(abs(difference) / se / math.sqrt(2)) if se > 0 else 1.0
    return {
        "treatment_rate": round(p_t, 6), "holdout_rate": round(p_h, 6),
        "lift": round(difference, 6), "lift_ci_low": round(low, 6), "lift_ci_high": round(high, 6),
        "relative_lift": round(difference / p_h, 6) if p_h else None,
        "p_value": round(p_value, 6), "significant": bool(low > 0 or high < 0),
        "incremental_conversions": round(difference * n_t, 1),
    }
