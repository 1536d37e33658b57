"""recommend's holdout NDCG@10 on DuckDB (`implicit`) and on local Spark (MLlib), same data, same split.

    .venv/bin/python bench/recommend_engines.py [--seeds 42,43,44] [--weights default|demo]
        [--mappings now,before,now*4] [--variants]

The demo shop with 1,000 customers (the events of tests/operators/test_recommend_spark.py:
views, adds and the products of orders), the last 30 days held out, top 5. DuckDB runs the
whole node; Spark runs the node's evaluation only (coding, the fit before the holdout,
scoring in the executors), once per ALS parameter mapping (``MllibAls``):

- ``now``: operators/recommend_spark.py as it is (rating ``alpha * log1p(w) - 1``, MLlib
  alpha 1, ``regParam = regularization / sqrt(m_u m_i)``);
- ``before``: the mapping before (rating ``log1p(w)``, MLlib alpha = ``alpha``,
  ``regParam = regularization / m_u``);
- ``now*4``: the current mapping with 4x the ``regParam`` (any factor).

Prints one line per engine, mapping and seed (NDCG@10, recall@10, popularity's NDCG@10).

``--variants`` runs no Spark: it runs DuckDB's node with its ALS fit replaced, one by one,
by fits that differ from ``implicit``'s in one way MLlib does (``VARIANTS``): the exact
solver instead of three conjugate-gradient steps per sweep, MLlib's random start (unit-norm
Gaussian factors, items solved first) and ALS-WR's penalty at the mapped ``regParam``. Each
prints the mean, standard deviation and per-seed NDCG@10, to show which difference moves
the mean and which only the seed-to-seed spread.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DEMO_WEIGHTS = {"Product Added": 3.0, "Order Completed": 5.0}


def mapping(name: str) -> Any:
    """A replacement for ``MllibAls.of`` that applies the named mapping."""
    from segloop.operators.recommend_spark import MllibAls

    current = MllibAls.of.__func__  # type: ignore[attr-defined]
    base, _, factor = name.partition("*")
    times = float(factor or 1)

    def of(cls: type[MllibAls], settings: Any, shape: Any) -> MllibAls:
        if base == "before":
            return cls(reg_param=settings.regularization / (shape.pairs / max(shape.customers, 1)),
                       alpha=settings.alpha, scale=1.0, shift=0.0)
        out = current(cls, settings, shape)
        return cls(reg_param=out.reg_param * times, alpha=out.alpha, scale=out.scale, shift=out.shift)

    return classmethod(of)


class Factors:
    """What the evaluation reads from a fitted model."""

    def __init__(self, users: Any, items: Any):
        self.user_factors, self.item_factors = users.astype("float32"), items.astype("float32")


def solve_side(conf: Any, fixed: Any, current: Any, reg: float, per_pair: bool) -> Any:
    """One exact ALS half-sweep: each row of ``conf`` (a row's pairs, confidence ``c``,
    preference 1; other pairs confidence 1, preference 0) against the ``fixed`` factors;
    the penalty ``reg`` per row, times the row's pairs with ``per_pair`` (ALS-WR)."""
    import numpy as np

    k = fixed.shape[1]
    gram = fixed.T @ fixed
    out = np.zeros_like(current)
    for row in range(conf.shape[0]):
        start, end = conf.indptr[row], conf.indptr[row + 1]
        if start == end:
            continue
        y, c = fixed[conf.indices[start:end]], conf.data[start:end]
        a = gram + (y.T * (c - 1)) @ y + reg * ((end - start) if per_pair else 1) * np.eye(k)
        out[row] = np.linalg.solve(a, y.T @ c)
    return out


def numpy_als(start: str, penalty: str) -> Any:
    """A replacement for ``fit_als``: exact ALS on ``implicit``'s confidence ``alpha * log1p(w)``.

    ``start``: "implicit" (uniform [0, 0.01) factors, customers solved first) or "mllib"
    (unit-norm Gaussian factors, items first); ``penalty``: "flat" (``regularization`` on
    every factor, as ``implicit``) or "als-wr" (MLlib: ``MllibAls``'s ``regParam`` times each
    customer's and item's pairs).
    """
    import numpy as np

    def fit(weights: Any, settings: Any) -> Factors:
        conf = weights.tocsr().astype("float64")
        conf.data = settings.alpha * np.log1p(conf.data)
        conf_t = conf.T.tocsr()
        rng = np.random.default_rng(settings.seed)
        shape = (conf.shape[0], settings.factors), (conf.shape[1], settings.factors)
        if start == "implicit":
            users, items = (rng.random(s, dtype="float32").astype("float64") * 0.01 for s in shape)
        else:
            users, items = (rng.standard_normal(s) for s in shape)
            users /= np.linalg.norm(users, axis=1, keepdims=True)
            items /= np.linalg.norm(items, axis=1, keepdims=True)
        reg, per_pair = settings.regularization, penalty == "als-wr"
        if per_pair:  # MllibAls.of: regularization / sqrt(mean pairs per customer x per item)
            customers = int((np.diff(conf.indptr) > 0).sum())
            n_items = int((np.diff(conf_t.indptr) > 0).sum())
            reg /= np.sqrt(conf.nnz / customers * conf.nnz / n_items)
        for _ in range(settings.iterations):
            if start == "implicit":
                users = solve_side(conf, items, users, reg, per_pair)
                items = solve_side(conf_t, users, items, reg, per_pair)
            else:
                items = solve_side(conf_t, users, items, reg, per_pair)
                users = solve_side(conf, items, users, reg, per_pair)
        return Factors(users, items)

    return fit


def implicit_exact(weights: Any, settings: Any) -> Any:
    """``implicit``'s ALS with its exact solver (``use_cg=False``), otherwise as fit_als."""
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    from segloop.models.als import confidence

    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(factors=settings.factors, regularization=settings.regularization,
                                        alpha=settings.alpha, iterations=settings.iterations,
                                        random_state=settings.seed, num_threads=1, use_cg=False)
        model.fit(confidence(weights), show_progress=False)
    return model


VARIANTS: dict[str, Any] = {
    "implicit (as shipped: 3 CG steps)": None,
    "implicit, exact solver": implicit_exact,
    "numpy exact, implicit's start, flat": numpy_als("implicit", "flat"),
    "numpy exact, MLlib's start, flat": numpy_als("mllib", "flat"),
    "numpy exact, MLlib's start, ALS-WR (MLlib's model)": numpy_als("mllib", "als-wr"),
}


def variants(duck: Any, options: dict[str, Any], seeds: list[int]) -> None:
    """DuckDB's holdout NDCG@10 with each of ``VARIANTS`` as the evaluation's ALS fit."""
    import statistics

    import segloop.models.als as als
    from segloop.operators.base import RunContext, RunScope
    from segloop.operators.recommend import RecommendConfig, RecommendOperator

    shipped = als.fit_als
    for name, fit in VARIANTS.items():
        als.fit_als = fit or shipped  # HoldoutSplit.scorer looks it up in models/als.py
        scores = []
        try:
            for seed in seeds:
                with RunScope() as scope:
                    ctx = RunContext(warehouse=duck, pipeline="p", node="recs", run_id="r", shared=scope)
                    out = RecommendOperator(RecommendConfig(**options, seed=seed)).run(
                        {"events": duck.table("rec_events")}, ctx)
                scores.append(out.metrics["ndcg_at_10"])
        finally:
            als.fit_als = shipped
        spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
        print(f"{name:<52} ndcg@10 mean {statistics.mean(scores):.4f} sd {spread:.4f}: "
              + " ".join(f"{s:.4f}" for s in scores), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="42,43,44")
    parser.add_argument("--weights", choices=("default", "demo"), default="default")
    parser.add_argument("--mappings", default="now,before")
    parser.add_argument("--variants", action="store_true", help="DuckDB only, one ALS difference at a time")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the test's events (tests/)

    from tests.operators.test_recommend_spark import CUSTOMERS, EVENTS

    import segloop.operators.recommend_spark as spark_recommend
    from segloop.demo import write_demo_data
    from segloop.operators.base import RunContext, RunScope
    from segloop.operators.recommend import (
        RecommendConfig,
        RecommendOperator,
        _settings,
        _warn_unknown_wide_items,
        beats_popularity,
        interactions_expr,
    )
    from segloop.warehouses import Warehouse
    from segloop.warehouses.pyspark import PySparkConfig

    seeds = [int(s) for s in args.seeds.split(",")]
    options: dict[str, Any] = {"event": "event_text", "holdout_days": 30, "top_n": 5}
    if args.weights == "demo":
        options["weights"] = DEMO_WEIGHTS
    duck = Warehouse.duckdb()
    write_demo_data(duck, customers=CUSTOMERS, days=365)
    events = duck.to_arrow(duck.sql(EVENTS))
    duck.create_table("rec_events", events)
    if args.variants:
        variants(duck, options, seeds)
        return

    def line(engine: str, seed: int, m: dict[str, Any], seconds: float) -> None:
        print(f"{engine:<16} seed {seed}: ndcg@10 {m['ndcg_at_10']:.4f}  recall@10 {m['recall_at_10']:.4f}  "
              f"popular ndcg@10 {m['popular_ndcg_at_10']:.4f}  ({seconds:.0f} s)", flush=True)

    for seed in seeds:
        started = time.perf_counter()
        with RunScope() as scope:
            ctx = RunContext(warehouse=duck, pipeline="p", node="recs", run_id="r", shared=scope)
            config = RecommendConfig(**options, seed=seed)
            metrics = RecommendOperator(config).run({"events": duck.table("rec_events")}, ctx).metrics
        line("duckdb", seed, metrics, time.perf_counter() - started)

    root = Path(tempfile.mkdtemp(prefix="segloop-recommend-engines-"))
    spark = Warehouse.connect(PySparkConfig(master="local[2]", metastore="in-memory",
                                            warehouse_dir=str(root / "warehouse"),
                                            conf={"spark.sql.shuffle.partitions": "2"}), root)
    spark.session.sparkContext.setLogLevel("ERROR")  # type: ignore[attr-defined]
    spark.create_table("rec_events", events)
    original = spark_recommend.MllibAls.of
    for name in args.mappings.split(","):
        spark_recommend.MllibAls.of = mapping(name)  # type: ignore[method-assign]
        try:
            for seed in seeds:
                started = time.perf_counter()
                config = RecommendConfig(**options, seed=seed)
                with RunScope() as scope:
                    ctx = RunContext(warehouse=spark, pipeline="p", node="recs", run_id="r", shared=scope)
                    steps = spark_recommend.LocalSteps(_settings(config), _warn_unknown_wide_items, beats_popularity)
                    node = spark_recommend.SparkRecommender(spark.session, config, steps, ctx)  # type: ignore[attr-defined]
                    pairs_expr, customers_expr, _ = interactions_expr(spark.table("rec_events"), config, ctx)
                    try:
                        customers, pairs, catalogue = node.coded(pairs_expr, customers_expr)
                        counts = spark_recommend._counts(pairs, spark_recommend.WEIGHTS[:2])
                        metrics = node.evaluate(pairs, catalogue, customers.count(), counts)
                    finally:
                        node.release()
                line(f"spark {name}", seed, metrics, time.perf_counter() - started)
        finally:
            spark_recommend.MllibAls.of = original  # type: ignore[method-assign]
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
