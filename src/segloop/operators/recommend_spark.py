"""Node `recommend` on a Spark warehouse: trained, scored and written by Spark, not its driver.

On ``pyspark`` the node does what it does elsewhere (operators/recommend.py), with Spark's
own machinery, so that nothing proportional to customers or events reaches the driver:

1. The weighted customer x item pairs come from the same Ibis expression as on every
   warehouse (``interactions_expr``: the same event weights, holdout and purchases), run
   as Spark SQL. Customers get dense integer codes in Spark (a window over their ids),
   items in id order as elsewhere.
2. Spark MLlib's ALS with ``implicitPrefs``, its parameters set so that it minimizes what
   ``implicit`` minimizes (``MllibAls``): the same confidence per pair, and a penalty that
   is ``implicit``'s for the typical customer and item. ``tune: true`` runs the local
   path's search (models/als_tune.py) on the same validation window, fitting in Spark.
3. Scoring runs in the executors (``mapInPandas``): each partition gets its customers'
   factors and histories and ranks items with the local path's own ``Scorer`` (models/als.py:
   cold items by item-to-item similarity, bought items left out, popularity fallback,
   ties by item). What it needs besides is catalogue-sized (item factors, popularity, the
   cold items' similarity, computed by a Spark join) and travels with the function.
4. The holdout evaluation (NDCG@10, recall@10, precision@10, catalogue coverage, next to
   the popularity baseline) is a second ALS fit on the pairs before the holdout, scored
   the same way in the executors; each partition sends back its sums only.
5. The scored rows are written by Spark to a scratch table of the run; the node's main and
   long tables are queries over it, which the engine writes with Spark too. The scratch
   table is dropped when the run ends.

What the driver holds: the catalogue (item ids, statistics, factors) and a handful of
numbers. Results agree with the local path within model noise (two ALS solvers with
different random starts, and ALS-WR's penalty): see docs/warehouses/pyspark.md, "What runs where".
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, cast

from segloop.errors import DataError, NodeError
from segloop.models.als import AlsSettings, Scorer, fill_popular, metrics_at_k
from segloop.operators.base import NodeOutput, RunContext
from segloop.operators.gates import check_requirements

if TYPE_CHECKING:  # pragma: no cover
    import ibis.expr.types as ir
    import numpy as np
    import scipy.sparse as sp

    from segloop.operators.recommend import RecommendConfig
    from segloop.warehouses.pyspark import PySparkWarehouse

SCORE_DECIMALS = 4
# Spark types of the columns a scoring partition returns (besides the customer id).
SCORED_COLUMNS = "recommended array<string>, scores string, source string, _scores array<double>"


@dataclass
class Catalogue:
    """What every executor needs about the items: ids, and statistics in code order."""

    ids: np.ndarray  # object array of item ids by code
    customers: dict[str, np.ndarray]  # per weight column: customers with a positive weight, by item
    totals: dict[str, np.ndarray]  # per weight column: the summed weight, by item

    @property
    def n(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Split:
    """One train / held-out split of the pairs: the columns of its training part (weight,
    bought) and of what was bought in its held-out part."""

    weight: str
    bought: str
    test: str


HOLDOUT = Split("train_weight", "train_bought", "test_bought")  # the quality card's split
VALIDATION = Split("tune_weight", "tune_bought", "tune_test_bought")  # `tune: true`'s, the window before
WEIGHTS = ("weight", HOLDOUT.weight, VALIDATION.weight)


class FactorModel:
    """Stands in for ``implicit``'s fitted model inside ``Scorer``: the item factors."""

    def __init__(self, item_factors: np.ndarray):
        self.item_factors = item_factors


class PartitionScorer(Scorer):
    """``Scorer`` with the pieces computed by Spark: item factors, cold similarity, and the
    customers' factors given per batch (Spark's ALS computed them; nothing to recalculate)."""

    def __init__(self, item_factors: np.ndarray | None, settings: AlsSettings, customers_per_item: np.ndarray,
                 totals: np.ndarray, n_customers: int, cold: np.ndarray, similarity: sp.csr_matrix | None):
        from segloop.models.als import popularity_order

        self.model = FactorModel(item_factors) if item_factors is not None else None
        self.settings, self.n_items = settings, len(totals)
        self.recalculate = False
        self.cold, self.similarity = cold, similarity
        self.popular = popularity_order(totals)
        self.reach = (customers_per_item / max(n_customers, 1)).astype("float32")
        self.batch_factors: np.ndarray | None = None

    def factors(self, users: np.ndarray, weights: sp.csr_matrix) -> np.ndarray:
        if self.batch_factors is None:
            raise ValueError("no customer factors for this batch")
        return self.batch_factors[users]

    def score_batch(self, factors: np.ndarray, weights: sp.csr_matrix, bought: sp.csr_matrix, n: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        import numpy as np

        self.batch_factors = factors
        return self.score(np.arange(weights.shape[0]), weights, bought, n)


@dataclass(frozen=True)
class PairCounts:
    """The pairs with a positive value in one column, and the customers and items among them."""

    pairs: int
    customers: int
    items: int


@dataclass(frozen=True)
class MllibAls:
    """MLlib's ALS parameters that minimize what ``implicit``'s ALS does (models/als.py).

    ``implicit`` gives a pair with weight w the confidence ``c = alpha * log1p(w)`` (pairs
    without one: 1, preference 0) and penalizes ``regularization * (|x_u|^2 + |y_i|^2)``.
    MLlib's implicit ALS gives a rating r > 0 the confidence ``1 + alpha * r`` and penalizes
    each customer and item by its number of pairs (ALS-WR): ``regParam * (n_u |x_u|^2 + n_i
    |y_i|^2)``. So:

    - the rating is ``alpha * log1p(w) - 1`` with MLlib's alpha at 1: the same confidence
      (``MIN_RATING`` at least: a pair whose ``alpha * log1p(w)`` is at most 1, which
      ``implicit`` still counts as liked with a confidence below the pairs without any, gets
      the least confidence MLlib gives a liked pair, about 1);
    - customer factors times s and item factors divided by s change no score, so penalties
      (a, b) and (a s^2, b / s^2) are the same model; ``regParam = regularization / sqrt(m_u
      m_i)``, with m_u and m_i the mean pairs per customer and per item, penalizes the typical
      customer and item as ``implicit`` does (customers and items with more pairs than that
      more, fewer less).
    """

    MIN_RATING: ClassVar[float] = 1e-3

    reg_param: float
    alpha: float
    scale: float  # the rating is log1p(w) * scale - shift
    shift: float

    @classmethod
    def of(cls, settings: AlsSettings, shape: PairCounts) -> MllibAls:
        per_customer = shape.pairs / max(shape.customers, 1)
        per_item = shape.pairs / max(shape.items, 1)
        return cls(reg_param=settings.regularization / math.sqrt(per_customer * per_item), alpha=1.0,
                   scale=settings.alpha, shift=1.0)

    def rating(self, weight: Any) -> Any:
        from pyspark.sql import functions as F

        return F.greatest(F.lit(self.MIN_RATING), F.log1p(weight) * F.lit(self.scale) - F.lit(self.shift))


@dataclass(frozen=True)
class LocalSteps:
    """What the local path decides and this module reuses (operators/recommend.py passes them)."""

    settings: AlsSettings  # the node's ALS settings
    warn_unknown: Callable[[list[str], np.ndarray, RunContext], None]  # `wide_items` not in the catalogue
    beats_popularity: Callable[[dict[str, Any], int, RunContext], bool]  # the holdout gate (`model:`)


def run_in_spark(session: Any, interactions: tuple[ir.Table, ir.Table, Any], source_name: str,
                 config: RecommendConfig, wide_columns: dict[str, str], steps: LocalSteps, ctx: RunContext
                 ) -> NodeOutput:
    """The recommend node on Spark (module docstring): the output tables are Spark queries.

    ``interactions`` is the node's (pairs, customers, holdout start) expression, as the local
    path has it (operators/recommend.py).
    """
    return SparkRecommender(session, config, steps, ctx).run(interactions, source_name, wide_columns)


class SparkRecommender:
    """One run of the node on Spark; the frames it persists are released at the run's end."""

    EVAL_K: ClassVar[int] = 10
    # ALS truncates its lineage every this many sweeps where Spark has a checkpoint directory
    # (local mode: warehouses/pyspark.py sets one); 15 sweeps without it overflowed a stack.
    CHECKPOINT_SWEEPS: ClassVar[int] = 5

    def __init__(self, session: Any, config: RecommendConfig, steps: LocalSteps, ctx: RunContext):
        self.session, self.config, self.ctx, self.steps = session, config, ctx, steps
        self.als_settings = steps.settings
        self.persisted: list[Any] = []
        self.cold: dict[str, tuple[np.ndarray, sp.csr_matrix | None]] = {}  # per weight column
        self.seconds: dict[str, float] = {}
        self.clock = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = round(now - self.clock, 3)
        self.clock = now

    def keep(self, frame: Any) -> Any:
        """Persist a frame read several times (executors' memory and disk, not the driver)."""
        from pyspark import StorageLevel

        frame = frame.persist(StorageLevel.MEMORY_AND_DISK)
        self.persisted.append(frame)
        return frame

    def release(self) -> None:
        while self.persisted:
            self.persisted.pop().unpersist()

    def run(self, interactions: tuple[ir.Table, ir.Table, Any], source_name: str, wide_columns: dict[str, str]
            ) -> NodeOutput:
        config, ctx = self.config, self.ctx
        pairs_expr, customers_expr, cutoff = interactions
        try:
            customers, pairs, catalogue = self.coded(pairs_expr, customers_expr)
            n_customers = customers.count()
            tuning = config.tune and cutoff is not None
            counts = _counts(pairs, WEIGHTS if tuning else WEIGHTS[:2])
            n_pairs = counts["weight"].pairs
            if n_pairs == 0:
                raise DataError(
                    f"node `{ctx.node}`: input `{source_name}` has no rows with a customer, an item, a "
                    "timestamp and an event with a positive weight; check `weights:` and the event names"
                )
            with_history = counts["weight"].customers
            self.lap("aggregate")
            metrics: dict[str, Any] = {
                "customers": n_customers, "items": catalogue.n, "pairs": n_pairs,
                "training_customers": n_customers, "training_pairs": n_pairs, "sampled": False,
                "popular_fallback_customers": n_customers - with_history,
                "engine": "spark",
            }
            if tuning:
                self.als_settings = self.choose_settings(pairs, catalogue, n_customers, counts, metrics)
                self.lap("tune")
            use_model = True
            if cutoff is not None:
                metrics.update(self.evaluate(pairs, catalogue, n_customers, counts))
                metrics["holdout_from"] = cutoff.isoformat()
                use_model = self.steps.beats_popularity(metrics, 10, ctx)
                self.lap("evaluate")
            metrics["model"] = "als" if use_model else "popular"
            model = self.fit(pairs.select("_u", "_i", "weight"), "weight", counts["weight"], self.als_settings) \
                if use_model else None
            self.lap("fit")
            if config.wide_items:
                self.steps.warn_unknown(config.wide_items, catalogue.ids, ctx)
            scored = self.score(customers, pairs, model, catalogue, n_customers, wide_columns)
            # A name of its own (a preview of the node may run beside a run), dropped with the run.
            scratch = f"_segloop_{ctx.pipeline}__{ctx.node}__recs_{secrets.token_hex(6)}"
            ctx.shared.on_close(lambda: ctx.warehouse.drop_table(scratch))
            self.write(scored, scratch)
        finally:
            self.release()
        metrics["catalogue_coverage"] = self.coverage(scratch, catalogue.n)
        ctx.progress(n_customers, n_customers)
        self.lap("score")
        metrics["seconds"] = self.seconds
        main = ctx.warehouse.table(scratch).drop("_scores")
        return check_requirements(NodeOutput(table=main, extra={"long": self.long(scratch)}, metrics=metrics),
                                  config)

    # -- coding -----------------------------------------------------------------------------

    def coded(self, pairs_expr: ir.Table, customers_expr: ir.Table) -> tuple[Any, Any, Catalogue]:
        """(customers with ``_u``, pairs with ``_u`` / ``_i`` and their values, the catalogue)."""
        import numpy as np
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        cid, wh = self.config.customer_id, self.ctx.warehouse
        raw_pairs = self.keep(self.session.sql(wh.compile(pairs_expr)))  # read for the items and the pairs
        raw_customers = self.session.sql(wh.compile(customers_expr))
        # Codes in id order, as on every warehouse. The window sorts the ids in one executor
        # partition (Spark warns about it): ids only, never the driver.
        customers = self.keep(raw_customers.withColumn(
            "_u", (F.row_number().over(Window.orderBy(F.col(cid))) - 1).cast("int")))
        weights = [c for c in WEIGHTS if c in raw_pairs.columns]
        aggregates = []
        for column in weights:
            aggregates += [F.sum(F.when(F.col(column) > 0, 1).otherwise(0)).alias(f"{column}__customers"),
                           F.sum(column).alias(f"{column}__total")]
        items = raw_pairs.groupBy("_item").agg(*aggregates)
        items = items.withColumn("_i", (F.row_number().over(Window.orderBy("_item")) - 1).cast("int"))
        rows = items.orderBy("_i").toArrow()  # the catalogue: one row per item

        def col(name: str, dtype: str) -> np.ndarray:
            return np.asarray(rows[name].to_numpy(zero_copy_only=False), dtype=dtype)

        catalogue = Catalogue(np.asarray(rows["_item"].to_pylist(), dtype=object),
                              {c: col(f"{c}__customers", "int64") for c in weights},
                              {c: col(f"{c}__total", "float64") for c in weights})
        codes = items.select("_item", "_i")
        pairs = raw_pairs.join(customers.select(cid, "_u"), cid).join(F.broadcast(codes), "_item")
        values = ["weight", "bought", *(c for split in (HOLDOUT, VALIDATION)
                                        for c in (split.weight, split.bought, split.test) if c in raw_pairs.columns)]
        pairs = self.keep(pairs.select("_u", "_i", *(F.col(c).cast("double").alias(c) for c in values)))
        return customers, pairs, catalogue

    # -- fitting ----------------------------------------------------------------------------

    def fit(self, weighted: Any, column: str, shape: PairCounts, settings: AlsSettings) -> Any | None:
        """Spark's implicit ALS on ``column`` (``shape``: its pairs with a positive value, and
        the customers and items they join), with ``implicit``'s objective (``MllibAls``);
        None when there are no pairs."""
        from pyspark.ml.recommendation import ALS
        from pyspark.sql import functions as F

        if not shape.pairs:
            return None
        mapped = MllibAls.of(settings, shape)
        ratings = weighted.filter(F.col(column) > 0).select("_u", "_i", mapped.rating(F.col(column)).alias("_r"))
        blocks = max(1, int(self.session.conf.get("spark.sql.shuffle.partitions", "8")))
        als = ALS(rank=settings.factors, maxIter=settings.iterations, regParam=mapped.reg_param,
                  alpha=mapped.alpha, implicitPrefs=True, seed=settings.seed, userCol="_u", itemCol="_i",
                  ratingCol="_r", numUserBlocks=blocks, numItemBlocks=blocks, coldStartStrategy="nan",
                  checkpointInterval=self.CHECKPOINT_SWEEPS)
        try:
            return als.fit(ratings)
        except Exception as exc:
            raise NodeError(self.ctx.node, f"Spark's ALS failed: {_first_line(exc)}") from exc

    def item_factors(self, model: Any | None, n_items: int) -> np.ndarray | None:
        """Item factors in code order (items the fit did not see: zeros, as implicit gives)."""
        import numpy as np

        if model is None:
            return None
        out = np.zeros((n_items, model.rank), dtype="float32")
        rows = model.itemFactors.toArrow()  # one row per item
        ids = rows["id"].to_numpy(zero_copy_only=False)
        out[ids] = np.asarray(rows["features"].to_pylist(), dtype="float32")
        return out

    def cold_similarity(self, pairs: Any, column: str, customers_per_item: np.ndarray) -> tuple[np.ndarray, Any]:
        """(cold item codes, items x cold items cosine similarity over customers): the join
        in Spark, small by construction (a cold item has few customers)."""
        import numpy as np
        import scipy.sparse as sp
        from pyspark.sql import functions as F

        n_items = len(customers_per_item)
        cold = np.flatnonzero(customers_per_item < self.config.cold_item_min_customers)
        if len(cold) == n_items or not len(cold):
            return np.array([], dtype="int64"), None
        vectors = pairs.filter(F.col(column) > 0).select("_u", "_i", F.log1p(column).alias("v"))
        norms = vectors.groupBy("_i").agg(F.sqrt(F.sum(F.col("v") * F.col("v"))).alias("norm")).toArrow()
        norm = np.zeros(n_items)
        norm[norms["_i"].to_numpy(zero_copy_only=False)] = norms["norm"].to_numpy(zero_copy_only=False)
        cold_frame = self.session.createDataFrame([(int(c), j) for j, c in enumerate(cold)], "_c int, _j int")
        cold_vectors = vectors.join(F.broadcast(cold_frame), vectors._i == cold_frame._c).select(
            "_u", "_j", "_c", F.col("v").alias("vc"))
        dots = vectors.join(cold_vectors, "_u").filter(F.col("_i") != F.col("_c")).groupBy("_i", "_j").agg(
            F.sum(F.col("v") * F.col("vc")).alias("dot")).toArrow()  # at most items x cold items
        rows, cols = dots["_i"].to_numpy(zero_copy_only=False), dots["_j"].to_numpy(zero_copy_only=False)
        values = dots["dot"].to_numpy(zero_copy_only=False) / (norm[rows] * norm[cold[cols]])
        similarity = sp.csr_matrix((values.astype("float32"), (rows, cols)), shape=(n_items, len(cold)))
        return cold, similarity

    def scorer(self, model: Any | None, pairs: Any, column: str, customers_per_item: np.ndarray,
               totals: np.ndarray, n_customers: int) -> PartitionScorer:
        import numpy as np

        item_factors = self.item_factors(model, len(totals))
        if model is None:
            cold, similarity = np.array([], dtype="int64"), None
        else:  # the same for every fit on this column (tune: true fits a dozen)
            if column not in self.cold:
                self.cold[column] = self.cold_similarity(pairs, column, customers_per_item)
            cold, similarity = self.cold[column]
        return PartitionScorer(item_factors, self.als_settings, customers_per_item, totals, n_customers,
                               cold, similarity)

    # -- evaluation -------------------------------------------------------------------------

    def split_frame(self, pairs: Any, split: Split) -> tuple[Any, int]:
        """(one row per customer to evaluate: the items bought in the held-out part, the history
        before it; how many), persisted for the fits scored on it."""
        from pyspark.sql import functions as F

        relevant = F.col(split.test) > 0
        if self.config.exclude_purchased:
            relevant = relevant & (F.col(split.bought) <= 0)
        truth = pairs.filter(relevant).groupBy("_u").agg(F.collect_list("_i").alias("truth"))
        history = _histories(pairs.filter(F.col(split.weight) > 0), split.weight, split.bought)
        frame = self.keep(truth.join(history, "_u", "left"))
        return frame, frame.count()

    def measure(self, pairs: Any, frame: Any, split: Split, catalogue: Catalogue, n_customers: int,
                shape: PairCounts, settings: AlsSettings, popular: bool) -> dict[str, dict[str, float]] | None:
        """Fit on the split's training part, score its customers in the executors: the mean
        precision, recall, NDCG at 10 and coverage of the model's lists (``ours``) and, with
        ``popular``, of popularity's; None when no customer is evaluated."""
        from pyspark.sql import functions as F

        k, n_items, exclude = self.EVAL_K, catalogue.n, self.config.exclude_purchased
        model = self.fit(pairs.select("_u", "_i", split.weight), split.weight, shape, settings)
        scorer = self.scorer(model, pairs, split.weight, catalogue.customers[split.weight],
                             catalogue.totals[split.weight], n_customers)
        if model is not None:
            frame = frame.join(model.userFactors.withColumnRenamed("id", "_u"), "_u", "left")
        else:
            frame = frame.withColumn("features", F.lit(None).cast("array<float>"))
        names = ("ours", "popular") if popular else ("ours",)

        def evaluate_partition(batches: Iterator[Any]) -> Iterator[Any]:
            import numpy as np
            import pandas as pd

            for batch in batches:
                weights, bought, factors = _matrices(batch, n_items, scorer)
                lists = {"ours": scorer.score_batch(factors, weights, bought, k)[0]}
                if popular:
                    lists["popular"] = np.full((len(batch), k), -1, dtype="int64")
                    fill_popular(lists["popular"], np.zeros((len(batch), k), dtype="float32"), scorer.popular,
                                 scorer.reach, bought if exclude else None, k)
                truth_matrix = _csr(batch["truth"], None, n_items)
                row: dict[str, Any] = {"n": len(batch)}
                for name, ranked in lists.items():
                    means = metrics_at_k(ranked, truth_matrix, k)
                    for metric, value in means.items():
                        row[f"{name}_{metric}"] = value * len(batch)
                    row[f"{name}_shown"] = [np.unique(ranked[ranked >= 0]).astype("int32").tolist()]
                yield pd.DataFrame({key: [value] if not isinstance(value, list) else value
                                    for key, value in row.items()})

        sums = ", ".join(f"{name}_{m} double" for name in names for m in ("precision", "recall", "ndcg"))
        schema = f"n long, {sums}" + "".join(f", {name}_shown array<int>" for name in names)
        parts = frame.mapInPandas(evaluate_partition, schema)
        aggregates = [F.sum("n").alias("n")]
        for name in names:
            aggregates += [F.sum(f"{name}_{m}").alias(f"{name}_{m}") for m in ("precision", "recall", "ndcg")]
            aggregates.append(F.size(F.array_distinct(F.flatten(F.collect_list(f"{name}_shown")))).alias(
                f"{name}_coverage"))
        try:
            total = parts.agg(*aggregates).first()
        except Exception as exc:
            raise _executor_error(self.ctx, exc) from exc
        evaluated = int(total["n"] or 0) if total else 0
        if not evaluated:
            return None
        values = {}
        for name in names:
            values[name] = {m: total[f"{name}_{m}"] / evaluated for m in ("precision", "recall", "ndcg")}
            values[name]["coverage"] = total[f"{name}_coverage"] / n_items if n_items else 0.0
        return values

    def evaluate(self, pairs: Any, catalogue: Catalogue, n_customers: int, counts: dict[str, PairCounts]
                 ) -> dict[str, Any]:
        """The local path's ``evaluate`` in Spark: fit before the holdout, score the customers
        who bought in it (bought-before items excluded when ``exclude_purchased``)."""
        config, k = self.config, self.EVAL_K
        frame, evaluated = self.split_frame(pairs, HOLDOUT)
        values = self.measure(pairs, frame, HOLDOUT, catalogue, n_customers, counts[HOLDOUT.weight],
                              self.als_settings, popular=True) if evaluated else None
        if values is None:
            self.ctx.warn(f"no purchases in the last {config.holdout_days} days to evaluate on; "
                          "metrics are not computed (lower `holdout_days` or add data)")
            return {"evaluated_customers": 0}
        out: dict[str, Any] = {"evaluated_customers": evaluated}
        for metric in ("precision", "recall", "ndcg", "coverage"):
            out[f"{metric}_at_{k}"] = round(values["ours"][metric], 4)
            out[f"popular_{metric}_at_{k}"] = round(values["popular"][metric], 4)
        base = values["popular"]["ndcg"]
        out[f"ndcg_at_{k}_lift"] = round(values["ours"]["ndcg"] / base, 3) if base else None
        return out

    def choose_settings(self, pairs: Any, catalogue: Catalogue, n_customers: int, counts: dict[str, PairCounts],
                        metrics: dict[str, Any]) -> AlsSettings:
        """``tune: true``: the local path's search (models/als_tune.py) on the same validation
        window (the ``holdout_days`` before the holdout), each candidate fitted and scored in Spark."""
        from segloop.models.als_tune import MIN_VALIDATION_CUSTOMERS, search

        config, configured = self.config, self.als_settings
        frame, n = self.split_frame(pairs, VALIDATION)
        shape = counts[VALIDATION.weight]
        if n < MIN_VALIDATION_CUSTOMERS or shape.pairs == 0:
            self.ctx.warn(f"`tune: true`: only {n} customers bought in the {config.holdout_days} days before "
                          f"the holdout (at least {MIN_VALIDATION_CUSTOMERS} are needed to choose settings); the "
                          "configured settings are used. More history, or a shorter `holdout_days`, lets the "
                          "node tune")
            metrics["tuning"] = {"winner": "configured", "chosen": configured.describe(), "validation_customers": n}
            return configured

        def ndcg(settings: AlsSettings) -> float:
            values = self.measure(pairs, frame, VALIDATION, catalogue, n_customers, shape, settings, popular=False)
            return values["ours"]["ndcg"] if values else 0.0

        result = search(configured, catalogue.n, n, ndcg)
        metrics["tuning"] = result.card()
        return result.chosen

    # -- scoring ----------------------------------------------------------------------------

    def score(self, customers: Any, pairs: Any, model: Any, catalogue: Catalogue, n_customers: int,
              wide_columns: dict[str, str]) -> Any:
        """Every customer's row of the main table (plus ``_scores``), computed in the executors."""
        from pyspark.sql import functions as F

        config = self.config
        cid = config.customer_id
        scorer = self.scorer(model, pairs, "weight", catalogue.customers["weight"], catalogue.totals["weight"],
                             n_customers)
        history = _histories(pairs, "weight", "bought")
        frame = customers.join(history, "_u", "left").join(
            model.userFactors.withColumnRenamed("id", "_u"), "_u", "left") if model is not None else \
            customers.join(history, "_u", "left").withColumn("features", F.lit(None).cast("array<float>"))
        item_ids, n_items, top_n = catalogue.ids, catalogue.n, config.top_n
        lookup = {item: i for i, item in enumerate(item_ids.tolist())}
        wide = [(lookup.get(item), column) for item, column in wide_columns.items()]
        exclude = config.exclude_purchased

        def score_partition(batches: Iterator[Any]) -> Iterator[Any]:
            import numpy as np
            import orjson
            import pandas as pd

            for batch in batches:
                weights, bought, factors = _matrices(batch, n_items, scorer)
                items, scores, from_popular, _ = scorer.score_batch(factors, weights, bought, top_n)
                valid = items >= 0
                names = np.full(items.shape, None, dtype=object)
                names[valid] = item_ids[items[valid]]
                rounded = np.round(scores.astype("float64"), SCORE_DECIMALS)
                recommended = [[x for x in row if x is not None] for row in names.tolist()]
                out: dict[str, Any] = {
                    cid: batch[cid],
                    "recommended": recommended,
                    "scores": [orjson.dumps({item: float(rounded[r, j]) for j, item in enumerate(row)}).decode()
                               for r, row in enumerate(recommended)],
                    "source": np.where(from_popular, "popular", "model"),
                    "_scores": [rounded[r, :len(row)].tolist() for r, row in enumerate(recommended)],
                }
                for j in range(top_n):
                    out[f"rec_{j + 1}"] = names[:, j]
                for j in range(top_n):
                    out[f"score_{j + 1}"] = rounded[:, j]
                for index, column in wide:
                    values = np.full(len(batch), np.nan)
                    if index is not None and scorer.model is not None:
                        warm = ~from_popular
                        values[warm] = np.round((factors[warm] @ scorer.model.item_factors[index]).astype("float64"),
                                                SCORE_DECIMALS)
                        if exclude:
                            values[np.asarray(bought[:, index].todense()).ravel() > 0] = np.nan
                    out[column] = values
                yield pd.DataFrame(out)

        cid_type = customers.schema[cid].dataType.simpleString()
        schema = (f"`{cid}` {cid_type}, {SCORED_COLUMNS}, "
                  + ", ".join(f"rec_{j} string" for j in range(1, top_n + 1)) + ", "
                  + ", ".join(f"score_{j} double" for j in range(1, top_n + 1))
                  + "".join(f", `{column}` double" for column in wide_columns.values()))
        return frame.mapInPandas(score_partition, schema)

    # -- output -----------------------------------------------------------------------------

    def write(self, scored: Any, name: str) -> None:
        """Spark writes the scored rows (the warehouse's own write: its table listing stays current)."""
        try:
            cast("PySparkWarehouse", self.ctx.warehouse).write_dataframe(scored, name)
        except Exception as exc:
            raise _executor_error(self.ctx, exc) from exc

    def coverage(self, scratch: str, n_items: int) -> float:
        """Share of the catalogue in at least one customer's list, counted by Spark."""
        shown = self.session.sql(
            f"SELECT count(DISTINCT item) AS n FROM {self.ctx.warehouse.qualified(scratch)} "
            "LATERAL VIEW explode(recommended) AS item").first()["n"]
        return round(shown / n_items, 4) if n_items else 0.0

    def long(self, scratch: str) -> ir.Table:
        """One row per recommendation (customer, item, score, rank, source), as a Spark query."""
        wh = self.ctx.warehouse
        return wh.sql(
            f"SELECT {wh.quote(self.config.customer_id)}, _entry.recommended AS item_id, _entry._scores AS score, "
            f"CAST(_pos + 1 AS BIGINT) AS `rank`, source FROM {wh.qualified(scratch)} "
            "LATERAL VIEW posexplode(arrays_zip(recommended, _scores)) _exploded AS _pos, _entry"
        )


def _counts(pairs: Any, columns: tuple[str, ...]) -> dict[str, PairCounts]:
    """For each weight column: its pairs with a positive value, and their customers and
    items (one Spark job for all)."""
    from pyspark.sql import functions as F

    aggregates = []
    for column in columns:
        positive = F.col(column) > 0
        aggregates += [F.count(F.when(positive, 1)).alias(f"{column}__pairs"),
                       F.countDistinct(F.when(positive, F.col("_u"))).alias(f"{column}__customers"),
                       F.countDistinct(F.when(positive, F.col("_i"))).alias(f"{column}__items")]
    row = pairs.agg(*aggregates).first()
    return {column: PairCounts(*(int(row[f"{column}__{key}"] or 0) if row else 0
                                 for key in ("pairs", "customers", "items")))
            for column in columns}


def _histories(pairs: Any, weight: str, bought: str) -> Any:
    """Per customer code: the arrays of item codes, weights and purchase flags (a row each)."""
    from pyspark.sql import functions as F

    grouped = pairs.groupBy("_u").agg(F.collect_list(F.struct(
        F.col("_i").alias("i"), F.col(weight).alias("w"), F.col(bought).alias("b"))).alias("h"))
    return grouped.select("_u", F.col("h.i").alias("_items"), F.col("h.w").alias("_weights"),
                          F.col("h.b").alias("_bought"))


def _csr(items: Any, values: Any | None, n_items: int) -> sp.csr_matrix:
    """Rows of ``items`` (arrays of item codes, or None) as a CSR matrix; ``values`` the
    entries (1 when None), zeros left out."""
    import numpy as np
    import scipy.sparse as sp

    indptr = [0]
    indices: list[np.ndarray] = []
    data: list[np.ndarray] = []
    for r, row in enumerate(items):
        codes = np.asarray(row if row is not None else [], dtype="int64")
        vals = np.ones(len(codes), "float32") if values is None else np.asarray(
            values.iloc[r] if values.iloc[r] is not None else [], dtype="float32")
        keep = vals > 0
        indices.append(codes[keep])
        data.append(vals[keep])
        indptr.append(indptr[-1] + int(keep.sum()))
    return sp.csr_matrix((np.concatenate(data) if data else np.empty(0, "float32"),
                          np.concatenate(indices) if indices else np.empty(0, "int64"), indptr),
                         shape=(len(indptr) - 1, n_items))


def _matrices(batch: Any, n_items: int, scorer: PartitionScorer) -> tuple[sp.csr_matrix, sp.csr_matrix, np.ndarray]:
    """A batch's (weights, bought) rows and its customers' factors (zeros without history)."""
    import numpy as np

    weights = _csr(batch["_items"], batch["_weights"], n_items)
    bought = _csr(batch["_items"], batch["_bought"], n_items)
    width = scorer.model.item_factors.shape[1] if scorer.model is not None else 0
    factors = np.zeros((len(batch), width), dtype="float32")
    for r, vector in enumerate(batch["features"]):
        if vector is not None and width:
            factors[r] = vector
    return weights, bought, factors


def _first_line(exc: BaseException) -> str:
    return next(iter(str(exc).strip().splitlines()), type(exc).__name__)[:300]


def _executor_error(ctx: RunContext, exc: BaseException) -> NodeError:
    return NodeError(
        ctx.node,
        f"scoring in Spark failed ({_first_line(exc)}). The executors run the recommender in Python: "
        "they need segloop (with implicit and scikit-learn) installed (in local mode they use the Python "
        "that runs segloop, unless PYSPARK_PYTHON names another)",
    )
