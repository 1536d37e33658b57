"""Node `clusters`: k-means segments of customers, each with a name a marketer can read.

The node reads only the customer id and the chosen numeric columns (as Arrow batches),
transforms them (``log1p`` of non-negative columns, then standard scaling, so a column
measured in dollars does not drown one measured in days), and runs k-means with a fixed
seed. ``k`` is fixed or chosen by the best silhouette over ``k_range``; silhouette is
computed on a sample of ``silhouette_sample`` rows, since it is quadratic in rows.
k-means (Lloyd, the best of several starts) fits on at most ``fit_rows`` customers: over
that, on the ``fit_rows`` customers whose ids hash lowest, and every customer is then
assigned to the nearest centre in streamed chunks (clusters_stream.py). ``stability_ari``
refits with other seeds on bootstrap resamples of the training rows: would other starts
and other customers give the same groups?

Each cluster is named from its profile: for every column, how far the cluster's mean
lies from the overall mean in standard deviations (after the transform). The strongest
deviations become words ("high spend, recent, frequent"); names are unique per run.

Outputs: ``<pipeline>__<node>`` (customer id, ``cluster``, ``cluster_name`` and the
columns used) and ``<pipeline>__<node>__profiles`` (per cluster: size, share, mean of
each column in original units, name). Metrics: ``k``, ``silhouette``, ``inertia``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from segloop.errors import DataError
from segloop.memory import rows_within
from segloop.operators.base import NodeConfig, NodeOutput, Operator, RunContext
from segloop.operators.columns import require_columns
from segloop.operators.gates import ModelNodeConfig, check_requirements
from segloop.operators.propensity_rows import spark_session

if TYPE_CHECKING:  # pragma: no cover
    import ibis.expr.types as ir
    import numpy as np
    import pyarrow as pa

RFM_COLUMNS: tuple[str, ...] = ("recency_days", "frequency", "monetary")
# column -> (word when the cluster is above the mean, word when below)
WORDS: dict[str, tuple[str, str]] = {
    "recency_days": ("not recent", "recent"),
    "frequency": ("frequent", "infrequent"),
    "monetary": ("high spend", "low spend"),
    "product_viewed_count": ("many views", "few views"),
    "product_added_count": ("many cart adds", "few cart adds"),
    "order_completed_count": ("many orders", "few orders"),
}


class ClustersConfig(ModelNodeConfig):
    GATE_METRICS: ClassVar[frozenset[str]] = frozenset({"silhouette", "k", "stability_ari"})

    type: Literal["clusters"] = "clusters"
    customer_id: str = Field(default="user_id", description="Column identifying the customer.")
    columns: list[str] | None = Field(
        default=None,
        description="Numeric columns to cluster on; default: recency_days, frequency, "
        "monetary and every *_count column present.",
    )
    k: int | Literal["auto"] = Field(default="auto", description="Number of clusters, or `auto`.")
    k_range: tuple[int, int] = Field(default=(2, 8), description="Range of k tried by `k: auto`.")
    log: bool = Field(default=True, description="log1p non-negative columns before scaling.")
    seed: int = 0
    threads: int = Field(default=1, ge=1, description="CPU threads for k-means (OpenMP/BLAS).")
    silhouette_sample: int = Field(default=5_000, ge=100)
    fit_rows: int = Field(
        default=100_000, ge=100,
        description="k-means fits on at most this many customers (a sample by id hash above "
        "it); every customer is then assigned to the nearest centre. Not used on a Spark "
        "warehouse, where MLlib fits every customer in the executors.",
    )
    DEPRECATED: ClassVar[dict[str, str]] = {
        "minibatch_above": "is no longer used (k-means fits on at most `fit_rows` customers, a "
        "sample, and assigns every customer); remove it",
    }
    minibatch_above: int | None = Field(
        default=None, ge=1,
        description="No longer used: MiniBatchKMeans gave different groups with each seed on "
        "large inputs; k-means now fits on a sample of `fit_rows`. Accepted so older "
        "pipeline files load (with a warning).",
    )

    @field_validator("k")
    @classmethod
    def _k_at_least_two(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 2:
            raise ValueError("`k` must be at least 2 (or `auto`)")
        return value

    @model_validator(mode="after")
    def _range_ordered(self) -> ClustersConfig:
        low, high = self.k_range
        if low < 2 or high < low:
            raise ValueError("`k_range` must be [low, high] with 2 <= low <= high, e.g. [2, 8]")
        return self


class ClustersOperator(Operator[ClustersConfig]):
    """Groups customers with k-means and names each group from its profile."""

    type_name: ClassVar[str] = "clusters"
    config_model: ClassVar[type[NodeConfig]] = ClustersConfig
    OUTPUT_IN_PYTHON: ClassVar[bool] = True
    NAME_TERMS: ClassVar[int] = 3  # words per cluster name, before de-duplication
    NAME_THRESHOLD: ClassVar[float] = 0.25  # |z| below this is "average"

    # Python bytes per customer row: the id, the float64 values, the scaled copy and the
    # output columns (per column), when all rows are held at once.
    BYTES_PER_ROW: ClassVar[int] = 96
    BYTES_PER_COLUMN: ClassVar[int] = 32
    STABILITY_SEEDS: ClassVar[int] = 2  # refits with other seeds behind `stability_ari`
    # Rows per streamed assignment chunk at most, whatever `memory_limit` allows: past
    # `fit_rows`, what the node holds in Python then no longer grows with the customers.
    # DuckDB's row group: DuckDB returns batches of at most this many rows anyway, and a
    # smaller cap splits each in two (+45 MB peak RSS at 1M rows, bench/clusters_scale.py).
    ASSIGN_ROWS: ClassVar[int] = 122_880

    def run(self, inputs: dict[str, ir.Table], ctx: RunContext) -> NodeOutput:
        from segloop.operators.clusters_stream import Scaler, fetch_sample, stream_assignments

        config = self.config
        source_name, source = next(iter(inputs.items()))
        require_columns(source, {"customer_id": config.customer_id}, ctx.node, source_name)
        columns = feature_columns(source, config, ctx.node, source_name)
        for key, why in config.deprecated_keys().items():
            ctx.warn(f"`{key}` {why}")
        session = spark_session(ctx)
        if session is not None:  # MLlib k-means; Spark assigns and writes (clusters_spark.py)
            from segloop.operators.clusters_spark import LocalSteps, run_in_spark
            steps = LocalSteps(fit_kmeans, cluster_names, stability_ari, KMeansFit, self.NAME_TERMS,
                               self.NAME_THRESHOLD, self.STABILITY_SEEDS)
            return run_in_spark(session, source, source_name, config, columns, ctx, steps)
        whole, chunk = self.row_budget(ctx.memory_limit, len(columns))
        chunk = min(chunk, self.ASSIGN_ROWS)
        total = ctx.warehouse.count(source)
        held = min(whole, config.fit_rows)  # rows k-means fits on at most
        sampled = total > held
        if sampled:
            ids, raw = fetch_sample(ctx, source, config.customer_id, columns, held, config.seed,
                                    chunk, total)
        else:
            ids, raw = _fetch(ctx, source, config.customer_id, columns)
        if len(ids) < 2:
            raise DataError(
                f"node `{ctx.node}`: input `{source_name}` has {len(ids)} customer rows; "
                "clustering needs at least 2 (check the upstream node)"
            )
        values, medians = _impute(raw, columns, ctx)
        scaler = Scaler.fit(values, config.log)
        scaled = scaler.apply(values)
        from threadpoolctl import threadpool_limits

        # sklearn's OpenMP threads spin while waiting; on a busy machine more threads than
        # free cores makes k-means 100x slower, so the thread count is explicit.
        with threadpool_limits(config.threads):
            fit = fit_kmeans(scaled, config, ctx)
            stability = stability_ari(scaled, fit, config, self.STABILITY_SEEDS)
        z = cluster_z(scaled, fit.labels, fit.k)
        names = cluster_names(z, columns, self.NAME_TERMS, self.NAME_THRESHOLD)
        metrics: dict[str, Any] = {
            "k": fit.k,
            "silhouette": round(fit.silhouette, 4),
            "stability_ari": round(stability, 4),
            "inertia": round(fit.inertia, 3),
            "columns": columns,
            "silhouette_by_k": {str(k): round(s, 4) for k, s in fit.scores.items()},
            "algorithm": fit.algorithm,
            "cluster_names": names,
            "training_rows": len(ids),
        }
        output: Any
        if sampled:
            why = (f"`memory_limit` holds no more rows of {len(columns)} columns, fewer than "
                   f"`fit_rows` = {config.fit_rows:,}" if whole < config.fit_rows
                   else f"k-means fits on at most `fit_rows` = {config.fit_rows:,}")
            metrics["sampled"] = (f"trained on {len(ids):,} of {total:,} customers (a sample by "
                                  f"id hash; {why}); all were assigned")
            if whole < config.fit_rows:
                ctx.warn(metrics["sampled"])
            schema = _assignments(config.customer_id, ids[:0], fit.labels[:0], names,
                                  values[:0], columns).schema
            output, profiles = stream_assignments(
                ctx, source, config.customer_id, columns, medians, scaler, fit.model, fit.mapping,
                names, chunk, schema)
            extra: dict[str, Any] = {"profiles": _profiles_later(profiles, names, columns)}
            rows: int | None = total
        else:
            output = _assignments(config.customer_id, ids, fit.labels, names, values, columns)
            extra = {"profiles": _profiles(fit.labels, fit.k, names, values, columns)}
            rows = output.num_rows
        return check_requirements(NodeOutput(table=output, extra=extra, metrics=metrics, rows=rows),
                                  config)

    @classmethod
    def row_budget(cls, limit: int, width: int) -> tuple[int, int]:
        """(rows held at once for training, rows per streamed chunk) within ``limit``."""
        per_row = cls.BYTES_PER_ROW + cls.BYTES_PER_COLUMN * width
        return rows_within(limit, per_row, share=0.5), rows_within(limit, per_row, share=0.25)


def feature_columns(source: ir.Table, config: ClustersConfig, node: str, source_name: str) -> list[str]:
    """The configured columns, or the RFM values and *_count columns present; all numeric."""
    schema = source.schema()
    if config.columns:
        require_columns(source, {f"columns[{i}]": c for i, c in enumerate(config.columns)}, node, source_name)
        columns = list(dict.fromkeys(config.columns))
    else:
        columns = [c for c in RFM_COLUMNS if c in schema]
        columns += [c for c in schema if c.endswith("_count") and schema[c].is_numeric()]
        if not columns:
            raise DataError(
                f"node `{node}`: input `{source_name}` has none of the default columns "
                f"({', '.join(RFM_COLUMNS)} or *_count); list the numeric columns to cluster "
                "on under `columns:`"
            )
    not_numeric = [c for c in columns if not schema[c].is_numeric()]
    if not_numeric:
        raise DataError(
            f"node `{node}`: column(s) {', '.join(f'`{c}`' for c in not_numeric)} of input "
            f"`{source_name}` are not numeric; cluster on numbers (cast them in an upstream sql node)"
        )
    return columns


def _fetch(ctx: RunContext, source: ir.Table, cid: str, columns: list[str]) -> tuple[pa.Array, np.ndarray]:
    """Customer ids and a float matrix of the columns, streamed as Arrow batches, sorted by id."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    expr = source.select(source[cid], *[source[c].cast("float64").name(c) for c in columns])
    ids: list[pa.Array] = []
    blocks: list[np.ndarray] = []
    for batch in ctx.warehouse.to_batches(expr):
        ids.append(batch.column(0))
        blocks.append(np.column_stack([
            batch.column(i + 1).to_numpy(zero_copy_only=False).astype("float64")
            for i in range(len(columns))
        ]) if batch.num_rows else np.empty((0, len(columns))))
        ctx.progress(batch.num_rows, None)
    id_array = pa.chunked_array(ids).combine_chunks() if ids else pa.array([], pa.string())
    matrix = np.vstack(blocks) if blocks else np.empty((0, len(columns)))
    # k-means' start and the silhouette sample depend on row order, which warehouses do not
    # fix; sorting by id here (bytewise, whatever the warehouse's collation) gives the same
    # clusters for the same data on DuckDB, PostgreSQL and the rest.
    order = pc.sort_indices(id_array).to_numpy()
    return id_array.take(pa.array(order)), matrix[order]


def _impute(values: np.ndarray, columns: list[str], ctx: RunContext) -> tuple[np.ndarray, np.ndarray]:
    """Replace missing values by the column median (a warning says how many); the medians."""
    import numpy as np

    missing = np.isnan(values)
    medians = np.zeros(values.shape[1])
    for j in range(values.shape[1]):
        present = values[~missing[:, j], j]
        medians[j] = float(np.median(present)) if len(present) else 0.0
    if not missing.any():
        return values, medians
    values = values.copy()
    notes = []
    for j, column in enumerate(columns):
        count = int(missing[:, j].sum())
        if not count:
            continue
        values[missing[:, j], j] = medians[j]
        notes.append(f"`{column}` in {count} rows (set to its median {medians[j]:g})")
    ctx.warn("missing values: " + "; ".join(notes))
    return values, medians


def transform(values: np.ndarray, log: bool) -> np.ndarray:
    """log1p of non-negative columns (when ``log``), then zero mean and unit variance."""
    from segloop.operators.clusters_stream import Scaler

    return Scaler.fit(values, log).apply(values)


class KMeansFit:
    """The chosen clustering: labels ordered by cluster size (0 = largest) and its scores."""

    def __init__(self, labels: np.ndarray, k: int, silhouette: float, inertia: float,
                 scores: dict[int, float], algorithm: str, model: Any, mapping: np.ndarray):
        self.labels, self.k, self.silhouette, self.inertia = labels, k, silhouette, inertia
        self.scores, self.algorithm = scores, algorithm
        self.model, self.mapping = model, mapping  # the fitted k-means; its labels -> ours


def fit_kmeans(x: np.ndarray, config: ClustersConfig, ctx: RunContext | None = None) -> KMeansFit:
    """Fit k-means for a fixed k or each k of the range; keep the best silhouette."""
    import numpy as np
    from sklearn import config_context
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score as sklearn_silhouette

    def silhouette_score(x: np.ndarray, labels: np.ndarray) -> float:
        with config_context(working_memory=128):  # MB of distance matrix at a time
            return float(sklearn_silhouette(x, labels))

    n = len(x)
    distinct = len(np.unique(x, axis=0)) if n <= 200_000 else n
    if config.k == "auto":
        ks = list(range(config.k_range[0], min(config.k_range[1], distinct - 1, n - 1) + 1))
        if not ks:
            ks = [min(2, distinct)] if distinct >= 2 else []
    else:
        ks = [min(config.k, distinct)]
        if config.k > distinct and ctx is not None:
            ctx.warn(f"`k: {config.k}` but only {distinct} distinct rows; using k = {distinct}")
    if not ks or ks[0] < 2:
        raise DataError(
            f"node `{ctx.node if ctx else 'clusters'}`: all {n} rows have the same values; "
            "there is nothing to cluster (check the columns)"
        )
    rng = np.random.default_rng(config.seed)
    sample = rng.choice(n, config.silhouette_sample, replace=False) if n > config.silhouette_sample else None
    best: tuple[float, int, Any] | None = None
    scores: dict[int, float] = {}
    for k in ks:
        model = KMeans(n_clusters=k, random_state=config.seed, n_init=10 if n <= 20_000 else 3)
        labels = model.fit_predict(x)
        found = len(np.unique(labels))
        if found < 2 or found >= n:  # silhouette is undefined: every row alone or all together
            score = -1.0
        elif sample is not None:
            score = float(silhouette_score(x[sample], labels[sample]))
        else:
            score = float(silhouette_score(x, labels))
        scores[k] = score
        if ctx is not None:
            ctx.progress(0, None)
        if best is None or score > best[0]:
            best = (score, k, model)
    assert best is not None  # noqa: S101 - ks is not empty
    score, k, model = best
    mapping = _relabel_by_size(model.labels_, k)
    return KMeansFit(mapping[model.labels_], k, score, float(model.inertia_), scores, "KMeans",
                     model, mapping)


def _relabel_by_size(labels: np.ndarray, k: int) -> np.ndarray:
    """Old label -> new: cluster 0 is the largest, then by size (ties by old label)."""
    import numpy as np

    sizes = np.bincount(labels, minlength=k)
    order = sorted(range(k), key=lambda c: (-sizes[c], c))
    mapping = np.empty(k, dtype="int64")
    mapping[order] = np.arange(k)
    return mapping


def stability_ari(x: np.ndarray, fit: KMeansFit, config: ClustersConfig, seeds: int) -> float:
    """Mean adjusted Rand index between the chosen clustering of the training rows ``x``
    and refits with other seeds and other rows (same k): near 1 = the same groups whatever
    the start and whichever customers train, near 0 = the groups are an accident.

    Refit ``i`` (``i = 1 .. seeds``) draws ``len(x)`` rows of ``x`` with
    replacement (a bootstrap resample, numpy seed ``config.seed + i``), fits k-means on
    them (``random_state = config.seed + i``, three starts), assigns every row of ``x`` to
    its nearest centre and compares those assignments with ``fit.labels`` row by row. The
    same definition whether or not the node trained on a sample, and on Spark.
    """
    import numpy as np
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    n = len(x)
    scores = []
    for i in range(1, seeds + 1):
        seed = config.seed + i
        rows = np.sort(np.random.default_rng(seed).integers(0, n, n))
        # Three starts each (the node's own fit takes the best of ten on small inputs):
        # enough to tell stable groups from accidental ones, at a fraction of the cost.
        model = KMeans(n_clusters=fit.k, random_state=seed, n_init=3)
        scores.append(adjusted_rand_score(fit.labels, model.fit(x[rows]).predict(x)))
    return float(np.mean(scores))


def cluster_z(scaled: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per cluster and column: the cluster mean in overall standard deviations (k x columns)."""
    import numpy as np

    return np.vstack([
        scaled[labels == c].mean(axis=0) if (labels == c).any() else np.zeros(scaled.shape[1])
        for c in range(k)
    ])


def describe(column: str, z: float, strong: float = 1.5) -> str:
    """One word or phrase for a column above (z > 0) or below the overall mean.

    Beyond ``strong`` standard deviations the phrase says so ("very frequent"), which
    tells apart clusters that lean the same way by different amounts.
    """
    if column in WORDS:
        word = WORDS[column][0 if z > 0 else 1]
    elif column.endswith("_count"):
        word = f"{'many' if z > 0 else 'few'} {column.removesuffix('_count').replace('_', ' ')}"
    else:
        word = f"{'high' if z > 0 else 'low'} {column.replace('_', ' ')}"
    if abs(z) < strong:
        return word
    return "long inactive" if word == "not recent" else f"very {word}"


def cluster_names(z: np.ndarray, columns: list[str], terms: int = 3, threshold: float = 0.25) -> list[str]:
    """Names from the strongest deviations, e.g. "high spend, recent, frequent"; unique per run.

    A name takes up to ``terms`` columns whose |z| passes ``threshold``: the RFM columns
    first, then the others, each group strongest first;
    when two clusters would share a name, both get more terms, and as a last resort a number.
    """
    import numpy as np

    k = z.shape[0]
    # RFM words first (what marketers read first), then the other columns; strongest first
    rfm = np.array([c in RFM_COLUMNS for c in columns])
    orders = [list(np.lexsort((-np.abs(z[c]), ~rfm))) for c in range(k)]

    def name(c: int, n_terms: int) -> str:
        words = [describe(columns[j], float(z[c, j])) for j in orders[c]
                 if abs(z[c, j]) >= threshold][:n_terms]
        return ", ".join(words) if words else "average"

    depth = [terms] * k
    names = [name(c, depth[c]) for c in range(k)]

    def words(text: str) -> frozenset[str]:  # "recent, frequent" and "frequent, recent" clash
        return frozenset(text.split(", "))

    for _ in range(len(columns)):
        keys = [words(n) for n in names]
        clashing = [keys.count(key) > 1 for key in keys]
        if not any(clashing):
            break
        for c in range(k):
            if clashing[c] and depth[c] < len(columns):
                depth[c] += 1
        names = [name(c, depth[c]) for c in range(k)]
    keys = [words(n) for n in names]
    seen: dict[frozenset[str], int] = {}
    unique = []
    for n, key in zip(names, keys, strict=True):
        seen[key] = seen.get(key, 0) + 1
        unique.append(n if keys.count(key) == 1 else f"{n} ({seen[key]})")
    return unique


def _assignments(cid: str, ids: pa.Array, labels: np.ndarray, names: list[str],
                 values: np.ndarray, columns: list[str]) -> pa.Table:
    import pyarrow as pa

    data: dict[str, Any] = {
        cid: ids,
        "cluster": pa.array(labels, pa.int64()),
        "cluster_name": pa.array(names, pa.string()).take(pa.array(labels)),
    }
    for j, column in enumerate(columns):
        if column not in data:
            data[column] = pa.array(values[:, j], pa.float64())
    return pa.table(data)


def _profiles_later(profiles: Any, names: list[str], columns: list[str]) -> pa.RecordBatchReader:
    """The profiles table once the streamed assignments have been written (the engine
    writes a node's main table before its extra tables)."""
    import pyarrow as pa

    schema = _profile_table([0] * len(names), names, [[None] * len(names)] * len(columns), columns).schema

    def batches() -> Any:
        if not profiles.done:
            raise RuntimeError("the cluster profiles are summed while the assignments are written; "
                               "write the node's main table first")
        means = profiles.means()
        table = _profile_table(profiles.sizes, names,
                               [[float(v) if profiles.sizes[c] else None for c, v in enumerate(means[:, j])]
                                for j in range(len(columns))], columns)
        yield from table.cast(schema).to_batches()

    return pa.RecordBatchReader.from_batches(schema, batches())


def _profile_table(sizes: Any, names: list[str], means: list[list[float | None]],
                   columns: list[str]) -> pa.Table:
    import numpy as np
    import pyarrow as pa

    sizes = np.asarray(sizes, dtype=np.int64)
    total = max(int(sizes.sum()), 1)
    data: dict[str, Any] = {
        "cluster": pa.array(np.arange(len(names)), pa.int64()),
        "cluster_name": pa.array(names, pa.string()),
        "size": pa.array(sizes, pa.int64()),
        "share": pa.array(np.round(sizes / total, 4), pa.float64()),
    }
    for j, column in enumerate(columns):
        data[f"mean_{column}"] = pa.array(means[j], pa.float64())
    return pa.table(data)


def _profiles(labels: np.ndarray, k: int, names: list[str], values: np.ndarray,
              columns: list[str]) -> pa.Table:
    """Per cluster: size, share of customers, mean of each column in original units, name."""
    import numpy as np

    sizes = np.bincount(labels, minlength=k)
    means = [[float(values[labels == c, j].mean()) if sizes[c] else None for c in range(k)]
             for j in range(len(columns))]
    return _profile_table(sizes, names, means, columns)
