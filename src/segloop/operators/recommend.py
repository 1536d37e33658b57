"""Node `recommend`: top-N products per customer from implicit feedback (views, adds, orders).

How it works, and why:

1. The customer x item interaction matrix is aggregated in the warehouse (one Ibis
   ``group_by``): each event counts with its configured weight, so only one row per
   (customer, item) pair moves to Python, never the raw events.
2. Collaborative filtering with the ``implicit`` library's ALS (CPU, fixed
   ``random_state``, ``threads`` threads, BLAS kept single-threaded as implicit advises).
   Confidence is ``1 + alpha * log1p(weight)``: a hundred views should not outweigh
   everything else.
3. Cold items (fewer than ``cold_item_min_customers`` customers) have no reliable ALS
   factors; they are scored by item-to-item cosine similarity with the customer's history
   and compete with ALS items on score.
4. Customers with no weighted history get the most popular items (``source = popular``);
   lists shorter than ``top_n`` (small catalogues, exclusions) are filled the same way.
5. Items the customer already bought are left out unless ``exclude_purchased: false``.

Evaluation (``holdout_days > 0``): the model is trained on everything before the last
``holdout_days`` days and scored on what customers bought in them, next to a popularity
baseline; precision@10, recall@10 and NDCG@10 go to the run's metrics (see
docs/recommend.md). The published recommendations come from a second fit on all data.
"""

from __future__ import annotations

import re
import time
from datetime import timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, model_validator

from segloop.errors import DataError
from segloop.operators.base import NodeConfig, NodeOutput, Operator, RunContext
from segloop.operators.columns import require_columns
from segloop.operators.gates import ModelNodeConfig, check_requirements

if TYPE_CHECKING:  # pragma: no cover
    import ibis.expr.types as ir
    import numpy as np
    import pyarrow as pa
    import scipy.sparse as sp

DEFAULT_WEIGHTS = {"Product Viewed": 1.0, "Product Added": 3.0, "Order Completed": 5.0}
RESERVED = {"recommended", "scores", "source"}
WEIGHT_TYPE = "decimal(18, 6)"


class RecommendConfig(ModelNodeConfig):
    GATE_METRICS: ClassVar[frozenset[str]] = frozenset(
        {f"{m}_at_10" for m in ("precision", "recall", "ndcg")} | {"ndcg_at_10_lift", "evaluated_customers"}
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
        import pyarrow as pa

        config = self.config
        source_name, source = next(iter(inputs.items()))
        keys = {"customer_id": config.customer_id, "item_id": config.item_id, "timestamp": config.timestamp}
        if config.event:
            keys["event"] = config.event
        require_columns(source, keys, ctx.node, source_name)
        wide_columns = _wide_columns(config, ctx.node)

        clock = time.perf_counter()
        seconds: dict[str, float] = {}

        def lap(phase: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            seconds[phase] = round(now - clock, 3)
            clock = now

        pairs_expr, customers_expr, cutoff = interactions_expr(source, config, ctx)
        batches = list(ctx.warehouse.to_batches(pairs_expr))
        pairs = pa.Table.from_batches(batches) if batches else pairs_expr.schema().to_pyarrow().empty_table()
        all_customers = pa.chunked_array(
            [b.column(0) for b in ctx.warehouse.to_batches(customers_expr)],
            type=customers_expr.schema().to_pyarrow().field(0).type,
        ).combine_chunks()
        if pairs.num_rows == 0:
            raise DataError(
                f"node `{ctx.node}`: input `{source_name}` has no rows with a customer, an item, a "
                "timestamp and an event with a positive weight; check `weights:` and the event names"
            )
        data = Interactions.from_arrow(pairs, all_customers, config.customer_id)
        lap("aggregate")
        metrics: dict[str, Any] = {
            "customers": data.n_customers, "items": data.n_items, "pairs": pairs.num_rows,
        }
        if cutoff is not None:
            metrics.update(evaluate(data, config, self.EVAL_K, ctx))
            metrics["holdout_from"] = cutoff.isoformat()
            lap("evaluate")
        ctx.progress(0, None)
        recs = recommend_all(data, config, data.weight, data.bought, ctx)
        lap("fit_and_score")
        main, long = _output_tables(data, recs, config, wide_columns)
        lap("tables")
        if config.wide_items:
            known = set(data.item_ids.tolist())
            unknown = [item for item in config.wide_items if item not in known]
            if unknown:  # empty score columns would go on to Segment unnoticed
                examples = ", ".join(str(i) for i in data.item_ids[:5].tolist())
                ctx.warn(f"`wide_items` {', '.join(unknown)}: no such item id in the input (ids look like: "
                         f"{examples}); their score columns are empty. Fix the ids in the pipeline file")
        metrics["popular_fallback_customers"] = int(recs.from_popular.sum())
        metrics["seconds"] = seconds
        return check_requirements(NodeOutput(table=main, extra={"long": long}, metrics=metrics), config)


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
    pairs = t.group_by([t[cid], t._item]).aggregate(
        weight=t._w.sum().cast("float64"),
        bought=ibis.ifelse(t._buy, one, zero).max().cast("int32"),
        train_weight=ibis.ifelse(train, t._w, weight_literal(0)).sum().cast("float64"),
        train_bought=ibis.ifelse(train & t._buy, one, zero).max().cast("int32"),
        test_bought=ibis.ifelse(~train & t._buy, one, zero).max().cast("int32"),
    )
    return pairs, customers, cutoff


class Interactions:
    """The aggregated pairs as sparse customer x item matrices (CSR), with the id lookups."""

    def __init__(self, customer_ids: pa.Array, item_ids: np.ndarray, n_customers: int, n_items: int,
                 mats: dict[str, sp.csr_matrix]):
        self.customer_ids, self.item_ids = customer_ids, item_ids
        self.n_customers, self.n_items = n_customers, n_items
        self.weight, self.bought = mats["weight"], mats["bought"]
        self.train_weight, self.train_bought = mats["train_weight"], mats["train_bought"]
        self.test_bought = mats["test_bought"]

    @classmethod
    def from_arrow(cls, pairs: pa.Table, all_customers: pa.Array, cid: str) -> Interactions:
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc
        import scipy.sparse as sp

        # sorted ids: the warehouse returns groups in any order, and ALS must see the same
        # matrix every run to give the same answer for the same seed
        customers = pc.unique(pa.concat_arrays([
            all_customers.cast(pairs.schema.field(cid).type), pairs[cid].combine_chunks()]))
        customers = customers.take(pc.sort_indices(customers))
        items = pc.unique(pairs["_item"].combine_chunks())
        items = items.take(pc.sort_indices(items))
        order = pc.sort_indices(pairs, sort_keys=[(cid, "ascending"), ("_item", "ascending")])
        pairs = pairs.take(order)
        rows = pc.index_in(pairs[cid], value_set=customers).to_numpy(zero_copy_only=False)
        cols = pc.index_in(pairs["_item"], value_set=items).to_numpy(zero_copy_only=False)
        shape = (len(customers), len(items))
        mats = {}
        for name in ("weight", "bought", "train_weight", "train_bought", "test_bought"):
            values = pairs[name].to_numpy().astype("float32")
            keep = values > 0
            mats[name] = sp.csr_matrix((values[keep], (rows[keep], cols[keep])), shape=shape)
        return cls(customers, np.asarray(items.to_pylist(), dtype=object), shape[0], shape[1], mats)


class Recommendations:
    """Per customer: ranked item indices and scores (-1 padded), and where they came from."""

    def __init__(self, items: np.ndarray, scores: np.ndarray, from_popular: np.ndarray,
                 wide: np.ndarray | None):
        self.items, self.scores, self.from_popular, self.wide = items, scores, from_popular, wide


def _confidence(weights: sp.csr_matrix) -> sp.csr_matrix:
    """log1p of the weights; implicit turns them into confidence ``1 + alpha * value``."""
    import numpy as np

    out = weights.copy().astype("float32")
    out.data = np.log1p(out.data).astype("float32")
    return out


def fit_als(weights: sp.csr_matrix, config: RecommendConfig) -> Any:
    """implicit's CPU ALS, deterministic for a seed; BLAS limited to one thread while it runs."""
    import warnings

    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    # implicit warns (when the model is created) if OpenBLAS runs its own thread pool, which
    # slows ALS badly; limiting BLAS to one thread while we create and fit the model avoids
    # both the slowdown and the warning, whatever OPENBLAS_NUM_THREADS says.
    with threadpool_limits(1, "blas"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*configured to use .* threads.*")
        model = AlternatingLeastSquares(
            factors=config.factors, regularization=config.regularization, alpha=config.alpha,
            iterations=config.iterations, random_state=config.seed, num_threads=config.threads,
        )
        model.fit(_confidence(weights), show_progress=False)
    return model


def _popularity(weights: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """(item indices, most popular first by total weight; each item's share of customers)."""
    import numpy as np

    totals = np.asarray(weights.sum(axis=0)).ravel()
    reach = np.bincount(weights.indices, minlength=weights.shape[1]) / max(weights.shape[0], 1)
    return np.lexsort((np.arange(len(totals)), -totals)), reach.astype("float32")


def _cold_scores(weights: sp.csr_matrix, cold: np.ndarray) -> sp.csr_matrix:
    """customers x cold items: mean cosine similarity of each cold item to the customer's history."""
    import scipy.sparse as sp
    from sklearn.preprocessing import normalize

    conf = _confidence(weights)
    item_vectors = normalize(conf.T.tocsr(), norm="l2", axis=1)  # items x customers
    sim = (item_vectors @ item_vectors[cold].T).tocoo()  # items x cold
    keep = sim.row != cold[sim.col]  # an item is not its own neighbour
    sim = sp.csr_matrix((sim.data[keep], (sim.row[keep], sim.col[keep])), shape=sim.shape)
    history = normalize(conf, norm="l1", axis=1)
    return (history @ sim).tocsr()


def recommend_all(data: Interactions, config: RecommendConfig, weights: sp.csr_matrix,
                  bought: sp.csr_matrix, ctx: RunContext | None = None, n: int | None = None,
                  customers: np.ndarray | None = None) -> Recommendations:
    """Top ``n`` items for ``customers`` (default: all) from ALS, cold items and popularity."""
    import numpy as np

    n = n or config.top_n
    users = np.arange(data.n_customers) if customers is None else customers
    has_history = np.diff(weights.indptr)[users] > 0
    customers_per_item = np.bincount(weights.indices, minlength=data.n_items)
    cold = np.flatnonzero(customers_per_item < config.cold_item_min_customers)
    if len(cold) == data.n_items:
        cold = np.array([], dtype="int64")  # everything is cold: let ALS do what it can
    exclude = bought if config.exclude_purchased else None
    popular = _popularity(weights)
    items = np.full((len(users), n), -1, dtype="int64")
    scores = np.full((len(users), n), np.nan, dtype="float32")
    wide = None
    warm_users = users[has_history]
    if len(warm_users):
        model = fit_als(weights, config)
        n_candidates = min(n, data.n_items)
        filter_matrix = (exclude if exclude is not None else weights)[warm_users]
        ids, vals = model.recommend(
            warm_users, filter_matrix, N=n_candidates,
            filter_already_liked_items=exclude is not None,
            filter_items=cold if len(cold) else None,
        )
        cold_matrix = _cold_scores(weights, cold)[warm_users] if len(cold) else None
        warm_rows = np.flatnonzero(has_history)
        for pos, row in enumerate(warm_rows):
            cand_items, cand_scores = list(ids[pos]), list(vals[pos])
            if cold_matrix is not None:
                start, end = cold_matrix.indptr[pos], cold_matrix.indptr[pos + 1]
                cand_items += list(cold[cold_matrix.indices[start:end]])
                cand_scores += list(cold_matrix.data[start:end])
            ranked = _rank(cand_items, cand_scores, exclude, warm_users[pos], n)
            items[row, :len(ranked)] = [i for i, _ in ranked]
            scores[row, :len(ranked)] = [s for _, s in ranked]
        if config.wide_items:  # scores of the few wide items only (never users x all items)
            lookup = {item: i for i, item in enumerate(data.item_ids.tolist())}
            index = [lookup.get(item, -1) for item in config.wide_items]
            known = np.array([max(i, 0) for i in index], dtype="int64")
            wide = np.asarray(model.user_factors[users] @ model.item_factors[known].T, dtype="float64")
            wide[:, [j for j, i in enumerate(index) if i < 0]] = np.nan
    from_popular = ~has_history
    _fill_popular(items, scores, popular, exclude, users, n)
    if ctx is not None:
        ctx.progress(len(users), None)
    return Recommendations(items, scores, from_popular, wide)


def _rank(cand_items: list[Any], cand_scores: list[Any], exclude: sp.csr_matrix | None,
          user: int, n: int) -> list[tuple[int, float]]:
    """Best ``n`` candidates by score: valid ids, no duplicates, not excluded."""
    import numpy as np

    excluded = set(exclude.indices[exclude.indptr[user]:exclude.indptr[user + 1]].tolist()) if exclude is not None else set()
    best: dict[int, float] = {}
    for item, score in zip(cand_items, cand_scores, strict=True):
        item = int(item)
        if item < 0 or item in excluded or not np.isfinite(score) or score <= -1e30:
            continue
        if item not in best or score > best[item]:
            best[item] = float(score)
    return sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def _fill_popular(items: np.ndarray, scores: np.ndarray, popularity: tuple[np.ndarray, np.ndarray],
                  exclude: sp.csr_matrix | None, users: np.ndarray, n: int) -> None:
    """Complete short lists with popular items the customer has not bought.

    Their score is the item's reach (share of customers who interacted with it), 0-1.
    """
    popular, reach = popularity
    import numpy as np

    short = np.flatnonzero((items < 0).any(axis=1))
    for row in short:
        taken = set(items[row][items[row] >= 0].tolist())
        if exclude is not None:
            u = users[row]
            taken |= set(exclude.indices[exclude.indptr[u]:exclude.indptr[u + 1]].tolist())
        free = np.flatnonzero(items[row] < 0)
        fill = [i for i in popular[: len(taken) + n].tolist() if i not in taken][: len(free)]
        items[row, free[: len(fill)]] = fill
        scores[row, free[: len(fill)]] = reach[fill]


def _metrics_at_k(ranked: np.ndarray, relevant: sp.csr_matrix, k: int) -> dict[str, float]:
    """Mean precision@k (hits / k), recall@k (hits / relevant) and NDCG@k (binary gains)."""
    import numpy as np

    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    precision, recall, ndcg = [], [], []
    for row in range(ranked.shape[0]):
        truth = set(relevant.indices[relevant.indptr[row]:relevant.indptr[row + 1]].tolist())
        hits = np.array([i in truth for i in ranked[row, :k].tolist()], dtype=float)
        precision.append(hits.sum() / k)
        recall.append(hits.sum() / len(truth))
        ideal = discounts[: min(len(truth), k)].sum()
        ndcg.append(float((hits * discounts[: len(hits)]).sum() / ideal))
    return {"precision": float(np.mean(precision)), "recall": float(np.mean(recall)),
            "ndcg": float(np.mean(ndcg))}


def evaluate(data: Interactions, config: RecommendConfig, k: int, ctx: RunContext | None = None
             ) -> dict[str, Any]:
    """Train before the holdout, score on holdout purchases; the same for a popularity baseline."""
    import numpy as np

    relevant = data.test_bought.copy()
    if config.exclude_purchased:  # items bought before the holdout can never be recommended
        relevant = relevant - relevant.multiply(data.train_bought > 0)
        relevant.eliminate_zeros()
    users = np.flatnonzero(np.diff(relevant.indptr) > 0)
    if len(users) == 0:
        if ctx is not None:
            ctx.warn(f"no purchases in the last {config.holdout_days} days to evaluate on; "
                     "metrics are not computed (lower `holdout_days` or add data)")
        return {"evaluated_customers": 0}
    eval_config = config.model_copy(update={"wide_items": None})
    model = recommend_all(data, eval_config, data.train_weight, data.train_bought, n=k, customers=users)
    exclude = data.train_bought if config.exclude_purchased else None
    popular = np.full((len(users), k), -1, dtype="int64")
    _fill_popular(popular, np.zeros_like(popular, dtype="float32"), _popularity(data.train_weight),
                  exclude, users, k)
    truth = relevant[users]
    ours, base = _metrics_at_k(model.items, truth, k), _metrics_at_k(popular, truth, k)
    out: dict[str, Any] = {"evaluated_customers": len(users)}
    for name in ("precision", "recall", "ndcg"):
        out[f"{name}_at_{k}"] = round(ours[name], 4)
        out[f"popular_{name}_at_{k}"] = round(base[name], 4)
    out[f"ndcg_at_{k}_lift"] = round(ours["ndcg"] / base["ndcg"], 3) if base["ndcg"] else None
    return out


def _output_tables(data: Interactions, recs: Recommendations, config: RecommendConfig,
                   wide_columns: dict[str, str]) -> tuple[pa.Table, pa.Table]:
    """The per-customer table (list, JSON scores, wide columns) and the long table."""
    import numpy as np
    import orjson
    import pyarrow as pa

    cid, n = config.customer_id, config.top_n
    item_ids = data.item_ids
    valid = recs.items >= 0
    names = np.full(recs.items.shape, None, dtype=object)
    names[valid] = item_ids[recs.items[valid]]
    scores = np.round(recs.scores.astype("float64"), 4)  # NaN where no item
    recommended, score_json = [], []
    for row in range(len(names)):
        row_items = [x for x in names[row].tolist() if x is not None]
        recommended.append(row_items)
        score_json.append(orjson.dumps(
            {item: float(scores[row, j]) for j, item in enumerate(row_items)}).decode())
    source = np.where(recs.from_popular, "popular", "model")
    main: dict[str, Any] = {
        cid: data.customer_ids,
        "recommended": pa.array(recommended, pa.list_(pa.string())),
        "scores": pa.array(score_json, pa.string()),
        "source": pa.array(source),
    }
    for j in range(n):
        main[f"rec_{j + 1}"] = pa.array(names[:, j].tolist(), pa.string())
    for j in range(n):
        main[f"score_{j + 1}"] = pa.array(scores[:, j], pa.float64(), from_pandas=True)
    if wide_columns:
        lookup = {item: i for i, item in enumerate(item_ids.tolist())}
        excluded = data.bought if config.exclude_purchased else None
        for position, (item, column) in enumerate(wide_columns.items()):
            index = lookup.get(item)
            values = np.full(data.n_customers, np.nan)
            if index is not None and recs.wide is not None:
                values = np.round(recs.wide[:, position], 4)
                values[recs.from_popular] = np.nan
                if excluded is not None:
                    values[np.asarray(excluded[:, index].todense()).ravel() > 0] = np.nan
            main[column] = pa.array(values, pa.float64(), from_pandas=True)
    rows, ranks = np.nonzero(valid)
    long = pa.table({
        cid: data.customer_ids.take(pa.array(rows)),
        "item_id": pa.array(item_ids[recs.items[rows, ranks]].tolist(), pa.string()),
        "score": pa.array(scores[rows, ranks], pa.float64(), from_pandas=True),
        "rank": pa.array(ranks + 1, pa.int64()),
        "source": pa.array(source[rows]),
    })
    return pa.table(main), long
