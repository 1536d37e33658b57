"""Node `propensity`: how likely each known customer is to do (or skip) an event soon.

What Segment sells as "Likelihood to Purchase" / "Likelihood to Churn", done in the open:

- Features are built inside the warehouse (one Ibis query for all three snapshots, kept as
  one table per run and shared by the run's propensity nodes that read the same events;
  segloop.operators.propensity_rows) from the events
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
  timestamp (segloop.models.calibration). The level of those probabilities is then set for
  the scoring window (``base_rate: clv``): the validation window's rate moved by the drift
  the clv node's BG/NBD model expects between the two snapshots
  (segloop.operators.propensity_drift). With ``calibration: none`` the model is refitted
  on both snapshots and its scores are sent as they are.
- Output per customer: ``probability`` and ``percentile`` (0..1; 0.85 = top 15%, as
  Segment's percentile cohorts).

Only per-customer feature rows come to Python, within ``memory_limit``: a stratified sample
to train on when a snapshot is larger, and chunks to score (on Spark, the executors score);
the model is scikit-learn's HistGradientBoostingClassifier (handles missing values, e.g.
"never did this").
"""

from __future__ import annotations

import logging
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
from segloop.models.scoring import deciles, log_loss, roc_auc, top_lift
from segloop.operators.base import NodeConfig, NodeOutput, Operator, RunContext
from segloop.operators.columns import require_columns
from segloop.operators.gates import ModelNodeConfig, check_requirements
from segloop.operators.propensity_drift import expected_buying_rate, logit_shift, shifted
from segloop.operators.propensity_features import FeatureBuilder, Snapshot, snake
from segloop.operators.propensity_rows import (
    SCORE,
    TRAIN,
    VALID,
    Budget,
    Counts,
    labelled_rows,
    matrix,
    prepare,
    ranked_output,
    score_chunks,
    score_in_spark,
    scoring_table,
    spark_session,
)

if TYPE_CHECKING:  # pragma: no cover
    import ibis.expr.types as ir
    import numpy as np
    import pyarrow as pa

log = logging.getLogger("segloop")

QUALITY = ((0.8, "excellent"), (0.7, "good"), (0.6, "fair"), (0.0, "poor"))  # by validation AUC
GATE_METRICS = frozenset(
    {"auc", "lift_top_decile", "log_loss", "brier", "ece", "baseline_auc", "base_rate",
     "validation_positives", "validation_negatives", "scored_customers"}
)


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
    base_rate: Literal["clv", "validation", "model"] = Field(
        default="clv",
        description="The level of the calibrated probabilities when the base rate drifts: "
        "clv: the validation window's rate moved by the change a BG/NBD model (the clv "
        "node's) expects by the scoring snapshot; validation: that window's rate; model: as "
        "calibration gives them. Ignored with `calibration: none`.",
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


class PropensityOperator(Operator[PropensityConfig]):
    """Trains a gradient-boosted classifier on warehouse-built features and scores customers."""

    type_name: ClassVar[str] = "propensity"
    config_model: ClassVar[type[NodeConfig]] = PropensityConfig
    REPORT_SECTION = "propensity"
    OUTPUT_IN_PYTHON: ClassVar[bool] = True
    max_inputs: ClassVar[int | None] = 2
    MIN_CLASS_COUNT: ClassVar[int] = 100  # Segment asks for 100+ positives and negatives

    def run(self, inputs: dict[str, ir.Table], ctx: RunContext) -> NodeOutput:
        config = self.config
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
        builder = FeatureBuilder(ctx.warehouse, events, orders, config, shared=ctx.shared)
        if config.event_types is not None:
            builder.event_types = list(dict.fromkeys(snake(e) for e in config.event_types))
        else:
            builder.event_types = builder.top_event_types(config.max_event_types)
        snapshots = [Snapshot(TRAIN, train_at, window), Snapshot(VALID, cutoff, window),
                     Snapshot(SCORE, score_at)]
        prepared = prepare(ctx, builder, snapshots)
        counts = prepared.counts
        names = builder.feature_names()
        budget = Budget.of(ctx.memory_limit, len(names))
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
            "features_prepared_by": prepared.built_by,  # another node of the run: shared
            "feature_queries": prepared.parts,  # >1: built a share of the customers at a time
        }
        self._check_classes(counts.train_positives, counts.train_negatives, "training", train_at,
                            ctx, metrics)
        self._check_classes(counts.valid_positives, counts.valid_negatives, "validation", cutoff,
                            ctx, metrics)
        train_rows, train_sampled = labelled_rows(
            builder, prepared.table, TRAIN, counts.train_positives, counts.train_negatives,
            budget.train_rows)
        valid_rows, valid_sampled = labelled_rows(
            builder, prepared.table, VALID, counts.valid_positives, counts.valid_negatives,
            budget.valid_rows)
        train = ctx.warehouse.to_arrow(train_rows)
        valid = ctx.warehouse.to_arrow(valid_rows)
        ctx.progress(train.num_rows + valid.num_rows, None)
        x_train, y_train = matrix(train, names), _labels(train, config)
        x_valid, y_valid = matrix(valid, names), _labels(valid, config)
        metrics.update(_sample_metrics(train.num_rows, train_sampled, valid.num_rows,
                                       valid_sampled, budget, ctx.memory_limit))
        if train_sampled or valid_sampled:
            log.info("node `%s`: trained on %s of %s customers (memory_limit %s bytes)", ctx.node,
                     f"{train.num_rows:,}", f"{metrics['training_customers']:,}", ctx.memory_limit)
        metrics["seconds_features"] = time.perf_counter() - started

        model = _fit(x_train, y_train, config)
        p_valid = _predict(model, x_valid, config)
        metrics.update(_validation_metrics(y_valid, p_valid, valid, config))
        del train, valid
        if metrics["auc"] <= metrics["baseline_auc"]:
            ctx.warn(
                f"the model (AUC {metrics['auc']:.3f}) is no better than ranking by recency "
                f"alone (AUC {metrics['baseline_auc']:.3f}); more history or events may help"
            )
        calibrator: Calibrator | None = None
        if config.calibration == "none":
            model = _fit(
                np.concatenate([x_train, x_valid]), np.concatenate([y_train, y_valid]), config
            )
            p_card = p_valid
        else:
            calibrator = Calibrator.fit(p_valid, y_valid, config.calibration)
            p_card = cross_fitted(p_valid, y_valid, config.calibration)
        del x_train, x_valid
        score = _Scorer(model, calibrator, config)
        name = scoring_table(ctx)
        ctx.shared.on_close(lambda: ctx.warehouse.drop_table(name))
        session = spark_session(ctx)
        chunks = [0]
        if session is not None:  # the model goes to the executors; Spark writes the scores
            score_in_spark(ctx, session, builder, prepared, name, score)
            metrics["scoring"] = "spark"
        else:

            def on_chunk(rows: int) -> None:
                chunks[0] += 1
                ctx.progress(rows, None)

            reader = score_chunks(ctx, builder, prepared, budget.chunk_rows, score, on_chunk)
            ctx.warehouse.replace_table(name, reader, count=False)
            metrics["scoring"] = "chunks"
            metrics["scoring_chunks"] = chunks[0]
        scores = ctx.warehouse.table(name)
        if calibrator is not None and config.base_rate != "model":
            scores = self._set_level(ctx, builder, scores, counts, cutoff, score_at, window,
                                     budget.train_rows, metrics)
        summary = ctx.warehouse.rows(scores.aggregate(n=scores.count(), mean=scores.probability.mean()))[0]
        scored = int(summary["n"] or 0)
        metrics.update(_calibration_metrics(y_valid, p_valid, p_card, config))
        metrics["mean_probability"] = float(summary["mean"]) if scored else float("nan")
        metrics["scored_customers"] = scored
        metrics["seconds"] = time.perf_counter() - started
        out = ranked_output(ctx, scores, config.customer_id, scored)
        extra = {
            "validation": pa.table(deciles(p_card, y_valid)),
            "reliability": pa.table(reliability(y_valid, p_card)),
        }
        return check_requirements(
            NodeOutput(table=out, extra=extra, metrics=metrics, rows=scored), config
        )

    def _set_level(
        self,
        ctx: RunContext,
        builder: FeatureBuilder,
        scores: ir.Table,
        counts: Counts,
        cutoff: datetime,
        score_at: datetime,
        window: timedelta,
        max_rows: int,
        metrics: dict[str, Any],
    ) -> ir.Table:
        """Move the calibrated probabilities on the logit scale so their mean is the rate
        expected in the scoring window (segloop.operators.propensity_drift)."""
        config = self.config
        labelled = counts.valid_positives + counts.valid_negatives
        rate = counts.valid_positives / labelled  # did the target event (perform label)
        method = config.base_rate
        if method == "clv":
            then = expected_buying_rate(ctx, builder, cutoff, window, max_rows)
            now = expected_buying_rate(ctx, builder, score_at, window, max_rows) if then else None
            if then is None or now is None:
                log.info("node `%s`: too few buyers of `%s` for BG/NBD; the probabilities keep "
                         "the validation window's rate", ctx.node, config.target_event)
                method = "validation"
            else:
                drift = now.rate / then.rate
                metrics["clv_expected_rate_validation"] = then.rate
                metrics["clv_expected_rate_scoring"] = now.rate
                metrics["clv_drift"] = drift
                metrics["clv_buyers"] = now.buyers
                metrics["clv_summary_rows"] = then.rows + now.rows  # fetched to fit BG/NBD
                rate *= drift
        rate = min(max(rate, 0.5 / labelled), 1.0 - 0.5 / labelled)
        target = rate if config.mode == "perform" else 1.0 - rate
        before = ctx.warehouse.scalar(scores.probability.mean())
        d = logit_shift(ctx, scores, target)
        metrics.update({
            "base_rate_method": method,
            "expected_rate": target,  # the mean probability sent
            "mean_probability_calibrated": float(before) if before is not None else float("nan"),
            "level_shift": d,  # added to every probability's logit
        })
        return scores.mutate(probability=shifted(scores.probability, d))

    def _check_classes(
        self,
        positives: int,
        negatives: int,
        which: str,
        snapshot: datetime,
        ctx: RunContext,
        metrics: dict[str, Any],
    ) -> None:
        """Customers of a snapshot by label (counted in the warehouse, before any sample)."""
        if self.config.mode == "churn":  # counted for the perform label
            positives, negatives = negatives, positives
        metrics[f"{which}_customers"] = positives + negatives
        metrics[f"{which}_positives"] = positives
        metrics[f"{which}_negatives"] = negatives
        if positives + negatives == 0:
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


class _Scorer:
    """The trained model (and its calibrator) as a function of a feature matrix: the
    probabilities and the raw scores. A plain object, so Spark can ship it to executors."""

    def __init__(self, model: Any, calibrator: Calibrator | None, config: PropensityConfig):
        self.model, self.calibrator, self.config = model, calibrator, config

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raw = _predict(self.model, x, self.config)
        probability = self.calibrator.apply(raw) if self.calibrator is not None else raw
        return probability, raw


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
    latest = events[config.timestamp].cast("timestamp").max()
    key = ("propensity.latest", ctx.warehouse.compile(latest.as_table()))
    value = ctx.shared.get(key, lambda: ctx.warehouse.scalar(latest))
    if value is None:
        raise DataError(f"node `{ctx.node}`: the input has no events with a `{config.timestamp}`")
    return _as_datetime(value)


def _as_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.replace(tzinfo=None)
    if isinstance(value, date):
        return datetime.combine(value, datetime.min.time())
    return datetime.fromisoformat(str(value))


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
    config: PropensityConfig,
) -> dict[str, Any]:
    """How far the validation window's probabilities are from what happened.

    ``calibrated`` are the probabilities as sent (cross-fitted on the validation window,
    so the calibrator is not graded on its own rows); the ``*_uncalibrated`` figures are the
    model's raw scores, to show what calibration changed.
    """

    return {
        "calibration": config.calibration,
        "log_loss": log_loss(y, calibrated),
        "brier": brier(y, calibrated),
        "ece": expected_calibration_error(y, calibrated),
        "log_loss_uncalibrated": log_loss(y, raw),
        "ece_uncalibrated": expected_calibration_error(y, raw),
    }


def _sample_metrics(train: int, train_sampled: bool, valid: int, valid_sampled: bool,
                    budget: Budget, memory_limit: int) -> dict[str, Any]:
    """What the model was trained and graded on, when ``memory_limit`` asked for a sample."""
    return {
        "memory_limit": memory_limit,
        "training_sample": train,  # rows the model was fitted on
        "training_sampled": train_sampled,
        "validation_sample": valid,  # rows the card's figures come from
        "validation_sampled": valid_sampled,
        "scoring_chunk_rows": budget.chunk_rows,
    }
