"""recommend's holdout NDCG@10 on DuckDB (`implicit`) and on local Spark (MLlib), same data, same split.

    .venv/bin/python bench/recommend_engines.py [--seeds 42,43,44] [--weights default|demo]
        [--mappings now,before,now*4]

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="42,43,44")
    parser.add_argument("--weights", choices=("default", "demo"), default="default")
    parser.add_argument("--mappings", default="now,before")
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
