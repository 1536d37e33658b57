"""Node `recommend`: top-N products per customer from implicit feedback (views, adds, orders).

How it works, and why:

1. The customer x item interaction matrix is aggregated in the warehouse (one Ibis
   ``group_by``): each event counts with its configured weight, and customers and items
   get integer codes there (models/interactions.py), so only compact arrays (int32 codes,
   float32 weights) of one row per (customer, item) pair reach Python, never the raw
   events nor a Python object per pair. Beyond what ``memory_limit`` allows, the model
   trains on a sample of customers (metrics ``sampled``, ``training_pairs``).
2. Collaborative filtering with the ``implicit`` library's ALS (CPU, fixed
   ``random_state``, ``threads`` threads, BLAS kept single-threaded as implicit advises).
   A pair's confidence is ``alpha * log1p(weight)`` (implicit multiplies the log1p weights it
   is given by ``alpha``; pairs without events: 1): a hundred views should not outweigh
   everything else.
3. Cold items (fewer than ``cold_item_min_customers`` customers) have no reliable ALS
   factors; they are scored by item-to-item cosine similarity with the customer's history
   and compete with ALS items on score.
4. Customers with no weighted history get the most popular items (``source = popular``);
   lists shorter than ``top_n`` (small catalogues, exclusions) are filled the same way.
5. Items the customer already bought are left out unless ``exclude_purchased: false``.
6. Every customer is scored, one chunk of customers at a time, and the output streams
   back to the warehouse (operators/recommend_output.py).

Evaluation (``holdout_days > 0``): the model is trained on everything before the last
``holdout_days`` days and scored on what customers bought in them, next to a popularity
baseline; precision@10, recall@10, NDCG@10 and catalogue coverage@10 (the quality card)
go to the run's metrics (see docs/recommend.md). The published recommendations come from a
second fit on all data, or from popularity alone when the model did not beat popularity on
the holdout (``model: popular`` on the card). With ``tune: true`` the ALS settings are first
chosen on the window before the holdout (models/als_tune.py).
"""

from __future__ import annotations

import re
import time
from datetime import timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, model_validator

from segloop.errors import DataError
from segloop.models.als import AlsSettings, HoldoutSplit, Scorer, fit_als, metrics_at_k
from segloop.models.interactions import (
    TUNE_COLUMNS,
    Budget,
    ItemStats,
    ScratchTables,
    TrainingData,
    scratch_prefix,
)
from segloop.operators.base import NodeConfig, NodeOutput, Operator, RunContext
from segloop.operators.columns import require_columns
from segloop.operators.gates import ModelNodeConfig, check_requirements
from segloop.operators.propensity_rows import spark_session
from segloop.operators.recommend_output import OutputStream

if TYPE_CHECKING:  # pragma: no cover
    import ibis.expr.types as ir
    import numpy as np

_metrics_at_k = metrics_at_k  # the name tests and older code import

DEFAULT_WEIGHTS = {"Product Viewed": 1.0, "Product Added": 3.0, "Order Completed": 5.0}
RESERVED = {"recommended", "scores", "source"}
WEIGHT_TYPE = "decimal(18, 6)"


class RecommendConfig(ModelNodeConfig):
    GATE_METRICS: ClassVar[frozenset[str]] = frozenset(
        {f"{m}_at_10" for m in ("precision", "recall", "ndcg", "coverage")}
        | {"ndcg_at_10_lift", "evaluated_customers"}
    )

    type: Literal["recommend"] = "recommend"
    customer_id: str = Field(default="user_id", description="Column identifying the customer.")
    item_id: str = Field(default="product_id", description="Column identifying the item.")
    timestamp: str = Field(default="timestamp", description="Column with the event time.")
    event: str | None = Field(default=None, description="Column with the event name; "
                              "without it every row is a purchase with weight 1.")
    weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    purchase_event: str = Field(default="Order Completed", description="The event that is a purchase.")
    top_n: int = Field(default=10, ge=1, le=100)
    holdout_days: int = Field(default=30, ge=0, description="Days held out to evaluate; 0: no evaluation.")
    exclude_purchased: bool = True
    factors: int = Field(default=16, ge=1)
    iterations: int = Field(default=15, ge=1)
    regularization: float = Field(default=0.5, ge=0)
    alpha: float = Field(default=2.0, gt=0, description="Confidence per log1p(weight).")
    tune: bool = Field(default=False, description="Choose factors, regularization and alpha on the "
                       "`holdout_days` before the holdout.")
    seed: int = 42
    threads: int = Field(default=2, ge=1)
    cold_item_min_customers: int = Field(default=3, ge=1)
    wide_items: list[str] | None = Field(default=None, description="Items that get their own score column.")

    @model_validator(mode="after")
    def _check(self) -> RecommendConfig:
        if self.event and not any(w > 0 for w in self.weights.values()):
            raise ValueError("`weights` gives no event a positive weight; e.g. {Order Completed: 5}")
        if any(w < 0 for w in self.weights.values()):
            raise ValueError("`weights` must be >= 0 (0 ignores an event)")
        if self.tune and not self.holdout_days:
            raise ValueError("`tune: true` chooses settings on held-out purchases: set `holdout_days` "
                             "(e.g. 30) or remove `tune`")
        return self


def snake(name: str) -> str:
    """Segment's table/column spelling of an event name: `Order Completed` -> `order_completed`."""
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


class RecommendOperator(Operator[RecommendConfig]):
    """Implicit-feedback ALS recommendations with cold-item and popularity fallbacks."""

    type_name: ClassVar[str] = "recommend"
    config_model: ClassVar[type[NodeConfig]] = RecommendConfig
    REPORT_SECTION = "recommend"
    OUTPUT_IN_PYTHON: ClassVar[bool] = True
    EVAL_K: ClassVar[int] = 10

    def run(self, inputs: dict[str, ir.Table], ctx: RunContext) -> NodeOutput:
        config = self.config
        source_name, source = next(iter(inputs.items()))
        keys = {"customer_id": config.customer_id, "item_id": config.item_id, "timestamp": config.timestamp}
        if config.event:
            keys["event"] = config.event
        require_columns(source, keys, ctx.node, source_name)
        wide_columns = _wide_columns(config, ctx.node)
        session = spark_session(ctx)
        if session is not None:  # Spark MLlib trains, the executors score, Spark writes (recommend_spark.py)
            from segloop.operators.recommend_spark import LocalSteps, run_in_spark
            steps = LocalSteps(_settings(config), _warn_unknown_wide_items, beats_popularity)
            return run_in_spark(session, interactions_expr(source, config, ctx), source_name, config,
                                wide_columns, steps, ctx)

        clock = time.perf_counter()
        seconds: dict[str, float] = {}

        def lap(phase: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            seconds[phase] = round(now - clock, 3)
            clock = now

        pairs_expr, customers_expr, cutoff = interactions_expr(source, config, ctx)
        scratch = ScratchTables.build(ctx.warehouse, scratch_prefix(ctx.table_name()), config.customer_id,
                                      customers_expr, pairs_expr)
        try:
            n_customers, n_pairs = scratch.counts()
            if n_pairs == 0:
                raise DataError(
                    f"node `{ctx.node}`: input `{source_name}` has no rows with a customer, an item, a "
                    "timestamp and an event with a positive weight; check `weights:` and the event names"
                )
            budget = Budget.of(ctx.memory_limit, config.top_n, n_customers, n_pairs)
            stats = scratch.item_stats()
            columns = ("weight", "bought") + (("train_weight", "train_bought", "test_bought") if cutoff else ())
            columns += TUNE_COLUMNS if cutoff and config.tune else ()
            pairs = scratch.load_pairs(budget.batch_rows, budget.fraction, config.seed, columns)
            data = TrainingData.of(pairs, budget, n_customers, stats.n)
            lap("aggregate")
            metrics: dict[str, Any] = {
                "customers": n_customers, "items": stats.n, "pairs": n_pairs,
                "training_customers": data.n_rows if budget.sampled else n_customers,
                "training_pairs": pairs.n, "sampled": budget.sampled,
                "popular_fallback_customers": n_customers - scratch.customers_with_history(),
            }
            if budget.sampled:
                ctx.warn(f"{n_pairs:,} customer x item pairs are more than `memory_limit` "
                         f"({ctx.memory_limit:,} bytes) lets the model train on at once: it trained on a "
                         f"sample of {pairs.n:,} pairs ({budget.fraction:.1%} of the customers) and scored "
                         "every customer; raise `memory_limit` to train on all of them")
            settings = _settings(config)
            if cutoff is not None and config.tune:
                settings = choose_settings(data, stats, config, self.EVAL_K, metrics, ctx)
                lap("tune")
            use_model = True
            if cutoff is not None:
                metrics.update(evaluate(data, stats, config, self.EVAL_K, ctx, settings))
                metrics["holdout_from"] = cutoff.isoformat()
                use_model = beats_popularity(metrics, self.EVAL_K, ctx)
                lap("evaluate")
            metrics["model"] = "als" if use_model else "popular"
            weights = data.matrix("weight")
            model = fit_als(weights, settings) if use_model else None
            scorer = Scorer(model, settings, stats.n, stats.customers, stats.total, n_customers,
                            weights, recalculate=budget.sampled)
            bought = None if budget.sampled else data.matrix("bought")
            del pairs, data  # the fitted model and (without a sample) two matrices are all scoring needs
            lap("fit")
            if config.wide_items:
                _warn_unknown_wide_items(config.wide_items, stats.ids, ctx)
        except BaseException:
            scratch.drop()
            raise
        streamer = OutputStream(scratch, scorer, config, wide_columns, stats.ids, budget, n_customers,
                                weights if not budget.sampled else None, bought, metrics, seconds, ctx)
        metrics["seconds"] = seconds
        return check_requirements(NodeOutput(table=streamer.main(), extra={"long": streamer.long()},
                                             metrics=metrics), config)


def _settings(config: RecommendConfig) -> AlsSettings:
    return AlsSettings(factors=config.factors, iterations=config.iterations, regularization=config.regularization,
                       alpha=config.alpha, seed=config.seed, threads=config.threads,
                       cold_item_min_customers=config.cold_item_min_customers,
                       exclude_purchased=config.exclude_purchased)


def _warn_unknown_wide_items(wide_items: list[str], item_ids: np.ndarray, ctx: RunContext) -> None:
    known = set(item_ids.tolist())
    unknown = [item for item in wide_items if item not in known]
    if unknown:  # empty score columns would go on to Segment unnoticed
        examples = ", ".join(str(i) for i in item_ids[:5].tolist())
        ctx.warn(f"`wide_items` {', '.join(unknown)}: no such item id in the input (ids look like: "
                 f"{examples}); their score columns are empty. Fix the ids in the pipeline file")


def _wide_columns(config: RecommendConfig, node: str) -> dict[str, str]:
    """Item id -> column name for ``wide_items`` (lower snake case, e.g. `apple_watch`)."""
    columns: dict[str, str] = {}
    taken = RESERVED | {config.customer_id} | {f"rec_{i}" for i in range(1, config.top_n + 1)} \
        | {f"score_{i}" for i in range(1, config.top_n + 1)}
    for item in config.wide_items or []:
        name = snake(item) or "item"
        if name[0].isdigit():
            name = f"item_{name}"
        if name in taken:
            raise DataError(
                f"node `{node}`: `wide_items` entry `{item}` would become column `{name}`, which "
                "is already taken; rename it in the pipeline file"
            )
        taken.add(name)
        columns[item] = name
    return columns


def interactions_expr(source: ir.Table, config: RecommendConfig, ctx: RunContext
                      ) -> tuple[ir.Table, ir.Table, Any]:
    """(weighted customer x item pairs, all customer ids, holdout start) computed in the warehouse."""
    import ibis

    cid, item, ts = config.customer_id, config.item_id, config.timestamp
    t = source.filter(source[cid].notnull() & source[item].notnull() & source[ts].notnull())
    customers = t.select(t[cid]).distinct()
    # Weights are decimals in SQL: Postgres reads a bare `1.0` as numeric, and Ibis would
    # then skip the cast of the sums to float64 (it believes they are float64 already).
    def weight_literal(value: float) -> ir.Value:
        return ibis.literal(Decimal(str(value)), type=WEIGHT_TYPE)

    if config.event:
        branches = []
        for name, weight in config.weights.items():
            branches.append((t[config.event].isin([name, snake(name)]), weight_literal(weight)))
        w = ibis.cases(*branches, else_=weight_literal(0))
        buy = t[config.event].isin([config.purchase_event, snake(config.purchase_event)])
    else:
        w, buy = weight_literal(1), ibis.literal(True)
    t = t.mutate(_item=t[item].cast("string"), _ts=t[ts].cast("timestamp"), _w=w, _buy=buy)
    t = t.filter(t._w > 0)
    cutoff = None
    if config.holdout_days:
        latest = ctx.warehouse.scalar(t._ts.max())  # not .execute(): that imports pandas
        if latest is not None:
            cutoff = latest - timedelta(days=config.holdout_days)
    if cutoff is not None:
        train = t._ts < ibis.literal(cutoff).cast("timestamp")
    else:
        train = ibis.literal(True)
    one, zero = ibis.literal(1), ibis.literal(0)
    values = {
        "weight": t._w.sum().cast("float64"),
        "bought": ibis.ifelse(t._buy, one, zero).max().cast("int32"),
        "train_weight": ibis.ifelse(train, t._w, weight_literal(0)).sum().cast("float64"),
        "train_bought": ibis.ifelse(train & t._buy, one, zero).max().cast("int32"),
        "test_bought": ibis.ifelse(~train & t._buy, one, zero).max().cast("int32"),
    }
    if cutoff is not None and config.tune:  # the window before the holdout, to choose settings on
        before = t._ts < ibis.literal(cutoff - timedelta(days=config.holdout_days)).cast("timestamp")
        values["tune_weight"] = ibis.ifelse(before, t._w, weight_literal(0)).sum().cast("float64")
        values["tune_bought"] = ibis.ifelse(before & t._buy, one, zero).max().cast("int32")
        values["tune_test_bought"] = ibis.ifelse(~before & train & t._buy, one, zero).max().cast("int32")
    pairs = t.group_by([t[cid], t._item]).aggregate(**values)
    return pairs, customers, cutoff


def evaluate(data: TrainingData, stats: ItemStats, config: RecommendConfig, k: int, ctx: RunContext | None = None,
             settings: AlsSettings | None = None) -> dict[str, Any]:
    """Train before the holdout, score on holdout purchases; the same for a popularity baseline.

    Evaluated: the customers held for training (all, or the sample) who bought in the holdout.
    """
    settings = settings or _settings(config)
    split = HoldoutSplit.of(data.matrix("train_weight"), data.matrix("train_bought"), data.matrix("test_bought"),
                            config.exclude_purchased, stats.train_customers, stats.train_total)
    users = split.users
    if len(users) == 0:
        if ctx is not None:
            ctx.warn(f"no purchases in the last {config.holdout_days} days to evaluate on; "
                     "metrics are not computed (lower `holdout_days` or add data)")
        return {"evaluated_customers": 0}
    ours = split.measure(split.model_lists(split.scorer(settings), k), k)
    base = split.measure(split.popular_lists(settings, k), k)
    out: dict[str, Any] = {"evaluated_customers": len(users)}
    for name in ("precision", "recall", "ndcg", "coverage"):
        out[f"{name}_at_{k}"] = round(ours[name], 4)
        out[f"popular_{name}_at_{k}"] = round(base[name], 4)
    out[f"ndcg_at_{k}_lift"] = round(ours["ndcg"] / base["ndcg"], 3) if base["ndcg"] else None
    return out


def beats_popularity(metrics: dict[str, Any], k: int, ctx: RunContext) -> bool:
    """Whether the model's holdout NDCG@k beats popularity's; if not, say that popularity is published."""
    ours, base = metrics.get(f"ndcg_at_{k}"), metrics.get(f"popular_ndcg_at_{k}")
    if ours is None or base is None or ours > base:
        return True
    ctx.warn(f"the ALS model's NDCG@{k} on the holdout ({ours:.4f}) does not beat recommending the most "
             f"popular items ({base:.4f}): every customer gets the popular items they have not bought "
             "(`model: popular` on the card). More history per customer, other `weights:` or `tune: true` "
             "may give the model something to learn")
    return False


def choose_settings(data: TrainingData, stats: ItemStats, config: RecommendConfig, k: int,
                    metrics: dict[str, Any], ctx: RunContext) -> AlsSettings:
    """``tune: true``: the best ALS settings on the window before the holdout (models/als_tune.py)."""
    from segloop.models.als_tune import MIN_VALIDATION_CUSTOMERS, tune

    configured = _settings(config)
    split = HoldoutSplit.of(data.matrix("tune_weight"), data.matrix("tune_bought"), data.matrix("tune_test_bought"),
                            config.exclude_purchased)
    n = len(split.users)
    if n < MIN_VALIDATION_CUSTOMERS or split.train_weight.nnz == 0:
        ctx.warn(f"`tune: true`: only {n} customers bought in the {config.holdout_days} days before the "
                 f"holdout (at least {MIN_VALIDATION_CUSTOMERS} are needed to choose settings); the configured "
                 "settings are used. More history, or a shorter `holdout_days`, lets the node tune")
        metrics["tuning"] = {"winner": "configured", "chosen": configured.describe(), "validation_customers": n}
        return configured
    result = tune(split, configured, k, stats.n)
    metrics["tuning"] = result.card()
    return result.chosen
