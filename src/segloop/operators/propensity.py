"""Node `propensity`: how likely each known customer is to do (or skip) an event soon.

What Segment sells as "Likelihood to Purchase" / "Likelihood to Churn", done in the open:

- Features are built inside the warehouse (one Ibis query per snapshot) from the events
  strictly before a snapshot time: activity counts and recency overall and per event type,
  active days, sessions (30-minute gaps), tenure, and purchase RFM (orders, spend, days
  since last order) from the ``orders`` input or the events' ``amount`` column.
- The label is whether the customer does ``target_event`` in the ``window_days`` after
  the snapshot (``mode: churn`` flips it: the customer does *not* do it).
- Time-based validation: train on the snapshot ``cutoff - window``, validate on ``cutoff``
  (default: latest timestamp minus the window, the last fully observed window); report
  AUC, lift in the top decile, log loss, Brier score, calibration error, a grade and a
  recency-only baseline.
- Calibration (default ``isotonic``): the validation window is the most recent labelled
  one, so the map from the trained model's score to the rate actually observed there is
  fitted on it and applied when the same model scores every customer as of the latest
  timestamp; a drifting base rate is absorbed (segloop.models.calibration). With
  ``calibration: none`` the model is refitted on both snapshots and its scores are sent as
  they are.
- Output per customer: ``probability`` and ``percentile`` (0..1; 0.85 = top 15%, as
  Segment's percentile cohorts).

Only per-customer feature rows come to Python; the model is scikit-learn's
HistGradientBoostingClassifier (handles missing values, e.g. "never did this").
"""

from __future__ import annotations

import re
import time
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from segloop.errors import DataError, NodeError
from segloop.models.calibration import (
    Calibrator,
    brier,
    cross_fitted,
    expected_calibration_error,
    reliability,
)
from segloop.models.scoring import deciles, log_loss, percentile_rank, roc_auc, top_lift
from segloop.operators.base import NodeConfig, NodeOutput, Operator, RunContext
from segloop.operators.columns import require_columns
from segloop.operators.gates import ModelNodeConfig, check_requirements

if TYPE_CHECKING:  # pragma: no cover
    import ibis.expr.types as ir
    import numpy as np
    import pyarrow as pa

DAY_SECONDS = 86400.0
SESSION_GAP_SECONDS = 30 * 60
QUALITY = ((0.8, "excellent"), (0.7, "good"), (0.6, "fair"), (0.0, "poor"))  # by validation AUC
GATE_METRICS = frozenset(
    {"auc", "lift_top_decile", "log_loss", "brier", "ece", "baseline_auc", "base_rate",
     "validation_positives", "validation_negatives", "scored_customers"}
)


def snake(name: str) -> str:
    """Segment's table/column form of an event name: ``Order Completed`` -> ``order_completed``."""
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


class PropensityConfig(ModelNodeConfig):
    GATE_METRICS: ClassVar[frozenset[str]] = GATE_METRICS

    type: Literal["propensity"] = "propensity"
    customer_id: str = Field(default="user_id", description="Column identifying the customer.")
    timestamp: str = Field(default="timestamp", description="Column with the event time.")
    event: str = Field(
        default="event",
        description="Column with the event name (`event` or `event_text` in Segment tables); "
        "names are compared in snake_case, so either works.",
    )
    target_event: str = Field(default="Order Completed", description="The event to predict.")
    mode: Literal["perform", "churn"] = Field(
        default="perform",
        description="perform: probability of doing target_event within the window; "
        "churn: probability of not doing it.",
    )
    window_days: int = Field(default=30, ge=1, le=3650, description="Prediction window.")
    cutoff: date | datetime | None = Field(
        default=None,
        description="Start of the validation window; default: latest timestamp - window_days.",
    )
    orders: str | None = Field(
        default=None,
        description="Upstream node with purchases (customer_id, timestamp, amount columns) "
        "for spend features, e.g. Segment's order_completed table.",
    )
    amount: str = Field(default="revenue", description="Purchase amount column.")
    event_types: list[str] | None = Field(
        default=None,
        description="Event types to build per-type features for; default: the most frequent.",
    )
    max_event_types: int = Field(default=15, ge=0, le=200)
    lookback_days: int | None = Field(
        default=None, ge=1, description="Only use events this many days before a snapshot."
    )
    calibration: Literal["isotonic", "platt", "none"] = Field(
        default="isotonic",
        description="Map scores to the rate observed in the most recent labelled window "
        "(isotonic: any monotone shape; platt: a logistic curve) so probabilities mean what "
        "they say when the base rate drifts; none: the raw scores of a model refitted on both "
        "windows.",
    )
    max_iter: int = Field(default=200, ge=10, le=5000, description="Boosting iterations.")
    learning_rate: float = Field(default=0.1, gt=0.0, le=1.0)
    seed: int = 0
    threads: int = Field(
        default=1,
        ge=1,
        le=256,
        description="OpenMP threads for training; more only help on an otherwise idle machine.",
    )

    def upstream(self) -> list[str]:
        names = super().upstream()
        if self.orders and self.orders not in names:
            names.append(self.orders)
        return names


class PropensityOperator(Operator):
    """Trains a gradient-boosted classifier on warehouse-built features and scores customers."""

    type_name: ClassVar[str] = "propensity"
    config_model: ClassVar[type[NodeConfig]] = PropensityConfig
    max_inputs: ClassVar[int | None] = 2
    MIN_CLASS_COUNT: ClassVar[int] = 100  # Segment asks for 100+ positives and negatives

    def run(self, inputs: dict[str, ir.Table], ctx: RunContext) -> NodeOutput:
        config = self.config
        if not isinstance(config, PropensityConfig):  # pragma: no cover - engine guarantees it
            raise NodeError(ctx.node, "internal: wrong config type for a propensity node")
        import numpy as np
        import pyarrow as pa

        events, orders = _split_inputs(inputs, config, ctx)
        started = time.perf_counter()
        latest = _latest_timestamp(events, config, ctx)
        score_at = latest + timedelta(seconds=1)
        window = timedelta(days=config.window_days)
        cutoff = _as_datetime(config.cutoff) if config.cutoff else score_at - window
        train_at = cutoff - window
        if cutoff + window > score_at:
            ctx.warn(
                f"`cutoff` {cutoff:%Y-%m-%d} + {config.window_days} days ends after the latest "
                f"event ({latest:%Y-%m-%d}); validation labels are incomplete, so the metrics "
                "understate positives. Leave `cutoff` unset or move it earlier"
            )
        builder = FeatureBuilder(ctx.warehouse, events, orders, config)
        builder.cache()
        try:
            if config.event_types is not None:
                builder.event_types = list(dict.fromkeys(snake(e) for e in config.event_types))
            else:
                builder.event_types = builder.top_event_types(config.max_event_types)
            train = ctx.warehouse.to_arrow(builder.labelled(train_at, window).order_by("_cid"))
            valid = ctx.warehouse.to_arrow(builder.labelled(cutoff, window).order_by("_cid"))
            current = ctx.warehouse.to_arrow(builder.features(score_at).order_by("_cid"))
        finally:
            builder.release()
        ctx.progress(train.num_rows + valid.num_rows + current.num_rows, None)
        names = builder.feature_names()
        x_train, y_train = _matrix(train, names), _labels(train, config)
        x_valid, y_valid = _matrix(valid, names), _labels(valid, config)
        metrics: dict[str, Any] = {
            "mode": config.mode,
            "target_event": config.target_event,
            "window_days": config.window_days,
            "train_snapshot": train_at.isoformat(),
            "validation_snapshot": cutoff.isoformat(),
            "score_snapshot": score_at.isoformat(),
            "features": len(names),
            "event_types": builder.event_types,
            "spend_features": builder.has_orders,
            "seconds_features": time.perf_counter() - started,
        }
        self._check_classes(y_train, "training", train_at, ctx, metrics)
        self._check_classes(y_valid, "validation", cutoff, ctx, metrics)

        model = _fit(x_train, y_train, config)
        p_valid = _predict(model, x_valid, config)
        metrics.update(_validation_metrics(y_valid, p_valid, valid, config))
        if metrics["auc"] <= metrics["baseline_auc"]:
            ctx.warn(
                f"the model (AUC {metrics['auc']:.3f}) is no better than ranking by recency "
                f"alone (AUC {metrics['baseline_auc']:.3f}); more history or events may help"
            )
        x_current = _matrix(current, names)
        if config.calibration == "none":
            final = _fit(
                np.concatenate([x_train, x_valid]), np.concatenate([y_train, y_valid]), config
            )
            score = _predict(final, x_current, config)
            probability, p_card = score, p_valid
        else:
            score = _predict(model, x_current, config)
            probability = Calibrator.fit(p_valid, y_valid, config.calibration).apply(score)
            p_card = cross_fitted(p_valid, y_valid, config.calibration)
        metrics.update(_calibration_metrics(y_valid, p_valid, p_card, probability, config))
        metrics["scored_customers"] = current.num_rows
        metrics["seconds"] = time.perf_counter() - started
        out = _output(current, probability, score, config)
        extra = {
            "validation": pa.table(deciles(p_card, y_valid)),
            "reliability": pa.table(reliability(y_valid, p_card)),
        }
        return check_requirements(
            NodeOutput(table=out, extra=extra, metrics=metrics, rows=out.num_rows), config
        )

    def _check_classes(
        self,
        y: np.ndarray,
        which: str,
        snapshot: datetime,
        ctx: RunContext,
        metrics: dict[str, Any],
    ) -> None:
        positives, negatives = int(y.sum()), int(len(y) - y.sum())
        metrics[f"{which}_customers"] = len(y)
        metrics[f"{which}_positives"] = positives
        metrics[f"{which}_negatives"] = negatives
        if len(y) == 0:
            raise DataError(
                f"node `{ctx.node}`: no customer has events before the {which} snapshot "
                f"({snapshot:%Y-%m-%d}); the node needs more than 2 x window_days "
                f"({2 * metrics['window_days']} days) of history before the latest event"
            )
        if positives == 0 or negatives == 0:
            raise DataError(
                f"node `{ctx.node}`: the {which} snapshot ({snapshot:%Y-%m-%d}) has "
                f"{positives} positive and {negatives} negative customers; a model needs both. "
                "Check `target_event`, or move `cutoff` / change `window_days`"
                + (f" (the input's most frequent events: {', '.join(metrics['event_types'][:10])})"
                   if positives == 0 and metrics.get("event_types") else "")
            )
        if min(positives, negatives) < self.MIN_CLASS_COUNT:
            ctx.warn(
                f"the {which} snapshot ({snapshot:%Y-%m-%d}) has only {positives} positive and "
                f"{negatives} negative customers (fewer than {self.MIN_CLASS_COUNT}); "
                "predictions and metrics are unreliable"
            )


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


def _split_inputs(
    inputs: dict[str, ir.Table], config: PropensityConfig, ctx: RunContext
) -> tuple[ir.Table, ir.Table | None]:
    names = list(inputs)
    events_name = config.input or next((n for n in names if n != config.orders), names[0])
    if events_name not in inputs:
        raise NodeError(ctx.node, f"input `{events_name}` was not provided to the node")
    events = inputs[events_name]
    keys = {"customer_id": config.customer_id, "timestamp": config.timestamp}
    require_columns(events, {**keys, "event": config.event}, ctx.node, events_name)
    if config.orders:
        if config.orders not in inputs:
            raise NodeError(ctx.node, f"`orders: {config.orders}` was not provided to the node")
        orders = inputs[config.orders]
        require_columns(orders, {**keys, "amount": config.amount}, ctx.node, config.orders)
        return events, orders
    if config.amount in events.columns:
        # Purchases are the event rows that carry an amount (e.g. a joined revenue column).
        return events, events.filter(events[config.amount].notnull())
    return events, None


def _latest_timestamp(events: ir.Table, config: PropensityConfig, ctx: RunContext) -> datetime:
    value = ctx.warehouse.scalar(events[config.timestamp].cast("timestamp").max())
    if value is None:
        raise DataError(f"node `{ctx.node}`: the input has no events with a `{config.timestamp}`")
    return _as_datetime(value)


def _as_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.replace(tzinfo=None)
    if isinstance(value, date):
        return datetime.combine(value, datetime.min.time())
    return datetime.fromisoformat(str(value))


def _matrix(table: pa.Table, names: list[str]) -> np.ndarray:
    """Feature columns as a float matrix; nulls become NaN (the model treats them as missing)."""
    import numpy as np
    import pyarrow.compute as pc

    if table.num_rows == 0:
        return np.zeros((0, len(names)))
    columns = [pc.cast(table[n], "float64").to_numpy(zero_copy_only=False) for n in names]
    return np.column_stack(columns).astype(np.float64)


def _labels(table: pa.Table, config: PropensityConfig) -> np.ndarray:
    import numpy as np

    y = table["_label"].to_numpy(zero_copy_only=False).astype(np.int64)
    return 1 - y if config.mode == "churn" else y


def _fit(x: np.ndarray, y: np.ndarray, config: PropensityConfig) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier

    model = HistGradientBoostingClassifier(
        max_iter=config.max_iter,
        learning_rate=config.learning_rate,
        early_stopping=len(y) >= 2000,
        validation_fraction=0.1,
        n_iter_no_change=15,
        l2_regularization=1.0,
        random_state=config.seed,
    )
    with _thread_limit(config):
        return model.fit(x, y)


def _predict(model: Any, x: np.ndarray, config: PropensityConfig) -> np.ndarray:
    import numpy as np

    with _thread_limit(config):
        return np.asarray(model.predict_proba(x)[:, 1], dtype=np.float64)


def _thread_limit(config: PropensityConfig) -> Any:
    """Cap scikit-learn's OpenMP threads: on a busy machine its spinning threads stall.

    Measured on 2 shared cores under load: 2 s with one thread, 60 s with two.
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=config.threads, user_api="openmp")


def _validation_metrics(
    y: np.ndarray, p: np.ndarray, table: pa.Table, config: PropensityConfig
) -> dict[str, Any]:
    """Holdout quality plus a recency-only baseline (the bar a model must clear)."""
    import numpy as np

    sign = 1.0 if config.mode == "churn" else -1.0  # recent activity -> likely to act
    baselines = []
    for column in ("days_since_last_event", "days_since_last_target"):
        days = table[column].to_numpy(zero_copy_only=False).astype(np.float64)
        days = np.where(np.isnan(days), np.nanmax(np.r_[days, 0.0]) + 1.0, days)
        baselines.append(roc_auc(y, sign * days))
    auc = roc_auc(y, p)
    quality = next(label for bound, label in QUALITY if auc >= bound)
    return {
        "auc": auc,
        "lift_top_decile": top_lift(y, p, 0.1),
        "baseline_auc": max(baselines),
        "base_rate": float(np.mean(y)),
        "quality": quality,
        "grade": quality.capitalize(),  # Segment's labels: Poor / Fair / Good / Excellent
    }


def _calibration_metrics(
    y: np.ndarray,
    raw: np.ndarray,
    calibrated: np.ndarray,
    scored: np.ndarray,
    config: PropensityConfig,
) -> dict[str, Any]:
    """How far the validation window's probabilities are from what happened.

    ``calibrated`` are the probabilities as sent (cross-fitted on the validation window,
    so the calibrator is not graded on its own rows); the ``*_uncalibrated`` figures are the
    model's raw scores, to show what calibration changed.
    """
    import numpy as np

    return {
        "calibration": config.calibration,
        "log_loss": log_loss(y, calibrated),
        "brier": brier(y, calibrated),
        "ece": expected_calibration_error(y, calibrated),
        "log_loss_uncalibrated": log_loss(y, raw),
        "ece_uncalibrated": expected_calibration_error(y, raw),
        "mean_probability": float(np.mean(scored)) if len(scored) else float("nan"),
    }


def _output(
    current: pa.Table, probability: np.ndarray, score: np.ndarray, config: PropensityConfig
) -> pa.Table:
    """Probability as calibrated; percentile from the model's score (calibration keeps the
    order but can merge neighbouring scores into one step, which would tie percentiles)."""
    import pyarrow as pa

    return pa.table(
        {
            config.customer_id: current["_cid"],
            "probability": pa.array(probability, pa.float64()),
            "percentile": pa.array(percentile_rank(score), pa.float64()),
        }
    )
