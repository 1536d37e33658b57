"""Node `clusters`: k-means segments of customers, each with a name a marketer can read.

The node reads only the customer id and the chosen numeric columns (as Arrow batches),
transforms them (``log1p`` of non-negative columns, then standard scaling, so a column
measured in dollars does not drown one measured in days), and runs k-means with a fixed
seed. ``k`` is fixed or chosen by the best silhouette over ``k_range``; silhouette is
computed on a sample of ``silhouette_sample`` rows, since it is quadratic in rows, and
inputs over ``minibatch_above`` rows use MiniBatchKMeans.

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
from segloop.operators.base import NodeConfig, NodeOutput, Operator, RunContext
from segloop.operators.columns import require_columns
from segloop.operators.gates import ModelNodeConfig, check_requirements

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
    GATE_METRICS: ClassVar[frozenset[str]] = frozenset({"silhouette", "k"})

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
    minibatch_above: int = Field(default=100_000, ge=1)

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

    def run(self, inputs: dict[str, ir.Table], ctx: RunContext) -> NodeOutput:
        config = self.config
        source_name, source = next(iter(inputs.items()))
        require_columns(source, {"customer_id": config.customer_id}, ctx.node, source_name)
        columns = feature_columns(source, config, ctx.node, source_name)
        ids, raw = _fetch(ctx, source, config.customer_id, columns)
        if len(ids) < 2:
            raise DataError(
                f"node `{ctx.node}`: input `{source_name}` has {len(ids)} customer rows; "
                "clustering needs at least 2 (check the upstream node)"
            )
        values = _impute(raw, columns, ctx)
        scaled = transform(values, config.log)
        from threadpoolctl import threadpool_limits

        # sklearn's OpenMP threads spin while waiting; on a busy machine more threads than
        # free cores makes k-means 100x slower, so the thread count is explicit.
        with threadpool_limits(config.threads):
            fit = fit_kmeans(scaled, config, ctx)
        z = cluster_z(scaled, fit.labels, fit.k)
        names = cluster_names(z, columns, self.NAME_TERMS, self.NAME_THRESHOLD)
        table = _assignments(config.customer_id, ids, fit.labels, names, values, columns)
        profiles = _profiles(fit.labels, fit.k, names, values, columns)
        return check_requirements(NodeOutput(
            table=table,
            extra={"profiles": profiles},
            metrics={
                "k": fit.k,
                "silhouette": round(fit.silhouette, 4),
                "inertia": round(fit.inertia, 3),
                "columns": columns,
                "silhouette_by_k": {str(k): round(s, 4) for k, s in fit.scores.items()},
                "algorithm": fit.algorithm,
                "cluster_names": names,
            },
        ), config)


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


def _impute(values: np.ndarray, columns: list[str], ctx: RunContext) -> np.ndarray:
    """Replace missing values by the column median (a warning says how many)."""
    import numpy as np

    missing = np.isnan(values)
    if not missing.any():
        return values
    values = values.copy()
    notes = []
    for j, column in enumerate(columns):
        count = int(missing[:, j].sum())
        if not count:
            continue
        present = values[~missing[:, j], j]
        median = float(np.median(present)) if len(present) else 0.0
        values[missing[:, j], j] = median
        notes.append(f"`{column}` in {count} rows (set to its median {median:g})")
    ctx.warn("missing values: " + "; ".join(notes))
    return values


def transform(values: np.ndarray, log: bool) -> np.ndarray:
    """log1p of non-negative columns (when ``log``), then zero mean and unit variance."""
    import numpy as np

    out = values.astype("float64", copy=True)
    if log:
        for j in range(out.shape[1]):
            column = out[:, j]
            out[:, j] = np.log1p(column) if column.min() >= 0 else np.sign(column) * np.log1p(np.abs(column))
    mean = out.mean(axis=0)
    std = out.std(axis=0)
    std[std == 0] = 1.0  # a constant column carries no information; keep it at 0
    return (out - mean) / std


class KMeansFit:
    """The chosen clustering: labels ordered by cluster size (0 = largest) and its scores."""

    def __init__(self, labels: np.ndarray, k: int, silhouette: float, inertia: float,
                 scores: dict[int, float], algorithm: str):
        self.labels, self.k, self.silhouette, self.inertia = labels, k, silhouette, inertia
        self.scores, self.algorithm = scores, algorithm


def fit_kmeans(x: np.ndarray, config: ClustersConfig, ctx: RunContext | None = None) -> KMeansFit:
    """Fit k-means for a fixed k or each k of the range; keep the best silhouette."""
    import numpy as np
    from sklearn import config_context
    from sklearn.cluster import KMeans, MiniBatchKMeans
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
    minibatch = n > config.minibatch_above
    rng = np.random.default_rng(config.seed)
    sample = rng.choice(n, config.silhouette_sample, replace=False) if n > config.silhouette_sample else None
    best: tuple[float, int, Any] | None = None
    scores: dict[int, float] = {}
    for k in ks:
        model: Any
        if minibatch:
            model = MiniBatchKMeans(n_clusters=k, random_state=config.seed, n_init=3, batch_size=4096)
        else:
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
    labels = _relabel_by_size(model.labels_, k)
    return KMeansFit(labels, k, score, float(model.inertia_), scores,
                     "MiniBatchKMeans" if minibatch else "KMeans")


def _relabel_by_size(labels: np.ndarray, k: int) -> np.ndarray:
    """Cluster 0 is the largest, then by size (ties by old label): stable, readable ids."""
    import numpy as np

    sizes = np.bincount(labels, minlength=k)
    order = sorted(range(k), key=lambda c: (-sizes[c], c))
    mapping = np.empty(k, dtype="int64")
    mapping[order] = np.arange(k)
    return mapping[labels]


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
        "cluster_name": pa.array([names[c] for c in labels.tolist()], pa.string()),
    }
    for j, column in enumerate(columns):
        if column not in data:
            data[column] = pa.array(values[:, j], pa.float64())
    return pa.table(data)


def _profiles(labels: np.ndarray, k: int, names: list[str], values: np.ndarray,
              columns: list[str]) -> pa.Table:
    """Per cluster: size, share of customers, mean of each column in original units, name."""
    import numpy as np
    import pyarrow as pa

    sizes = np.bincount(labels, minlength=k)
    data: dict[str, Any] = {
        "cluster": pa.array(np.arange(k), pa.int64()),
        "cluster_name": pa.array(names, pa.string()),
        "size": pa.array(sizes, pa.int64()),
        "share": pa.array(np.round(sizes / sizes.sum(), 4), pa.float64()),
    }
    for j, column in enumerate(columns):
        means = [float(values[labels == c, j].mean()) if sizes[c] else None for c in range(k)]
        data[f"mean_{column}"] = pa.array(means, pa.float64())
    return pa.table(data)
