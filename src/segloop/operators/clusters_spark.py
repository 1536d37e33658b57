"""Node `clusters` on a Spark warehouse: MLlib k-means, every customer assigned by Spark.

On ``pyspark`` the node keeps the local path's steps (operators/clusters.py) but none of
them pulls the customers to the driver:

- **Missing values and scaling in Spark SQL.** Exact medians (``percentile``) replace
  missing values, then ``sign(v) * log1p(|v|)`` (when ``log``) and the columns' mean and
  population standard deviation: one aggregate, a few numbers back.
- **k.** ``k: auto`` is chosen by silhouette on a bounded sample (``silhouette_sample``
  customers with the smallest hash of their id, the same every run): the local path's own
  selection (scikit-learn's k-means per k, silhouette) on those rows. Up to that many
  customers the sample is everyone, and the choice is the local path's.
- **Training in Spark.** MLlib's ``KMeans`` fits the chosen k on every customer's scaled
  row, three times (k-means|| starts with seeds ``seed``, ``seed + 1``, ``seed + 2``); the
  lowest inertia is kept, as scikit-learn keeps the best of its starts.
- **Assignment as a query.** The centres are k x columns numbers: the nearest centre of
  each customer is an expression (squared distances, the first smallest as MLlib picks),
  so the node's output and its profiles are queries Spark runs and writes; clusters are
  numbered by size and named from their profile as elsewhere.
- **Card.** The silhouette and the stability ARI (refits with other seeds) are measured
  on the sample, the inertia is MLlib's over every customer.

Results agree with the local path within k-means noise (MLlib's best of three k-means||
starts vs scikit-learn's best of ten k-means++ starts); see docs/warehouses/pyspark.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from segloop.errors import DataError, NodeError
from segloop.operators.base import NodeOutput, RunContext
from segloop.operators.gates import check_requirements

STARTS = 3  # MLlib k-means runs, the best kept (scikit-learn's n_init on large inputs)

if TYPE_CHECKING:  # pragma: no cover
    import ibis.expr.types as ir
    import numpy as np

    from segloop.operators.clusters import ClustersConfig


@dataclass(frozen=True)
class LocalSteps:
    """The local path's pieces this module reuses (operators/clusters.py passes them in)."""

    fit_kmeans: Callable[..., Any]  # (x, config, ctx) -> KMeansFit: the choice of k
    cluster_names: Callable[..., list[str]]  # (z, columns, terms, threshold)
    stability_ari: Callable[..., float]  # (x, fit, config, seeds)
    fit_type: Callable[..., Any]  # KMeansFit
    name_terms: int
    name_threshold: float
    stability_seeds: int


def run_in_spark(session: Any, source: ir.Table, source_name: str, config: ClustersConfig, columns: list[str],
                 ctx: RunContext, steps: LocalSteps) -> NodeOutput:
    """The clusters node on Spark (module docstring); its outputs are queries Spark writes."""
    import numpy as np

    cid, wh = config.customer_id, ctx.warehouse
    raw = source.select(source[cid], *[source[c].cast("float64").name(c) for c in columns])
    stats = _column_stats(session, wh.compile(raw), columns)
    total = int(stats["_n"] or 0)
    if total < 2:
        raise DataError(
            f"node `{ctx.node}`: input `{source_name}` has {total} customer rows; "
            "clustering needs at least 2 (check the upstream node)"
        )
    medians = np.array([float(stats[f"median_{j}"]) if stats[f"median_{j}"] is not None else 0.0
                        for j in range(len(columns))])
    _warn_missing(ctx, columns, [int(stats[f"missing_{j}"] or 0) for j in range(len(columns))], medians)
    imputed = raw.select(raw[cid], *[raw[c].fill_null(float(medians[j])).name(c) for j, c in enumerate(columns)])
    logged = [_log(imputed[c], config.log) for c in columns]
    moments = wh.rows(imputed.aggregate(**{f"mean_{j}": v.mean() for j, v in enumerate(logged)},
                                        **{f"std_{j}": v.std(how="pop") for j, v in enumerate(logged)}))[0]
    means = np.array([float(moments[f"mean_{j}"] or 0.0) for j in range(len(columns))])
    stds = np.array([float(moments[f"std_{j}"] or 0.0) for j in range(len(columns))])
    stds[stds == 0] = 1.0  # a constant column carries no information; keep it at 0

    zs = [f"_z{j}" for j in range(len(columns))]
    scaled = imputed.mutate(**{z: (logged[j] - float(means[j])) / float(stds[j]) for j, z in enumerate(zs)})

    sample_ids, sample = _sample(session, wh.compile(scaled), cid, zs, config.silhouette_sample, config.seed)
    chosen = steps.fit_kmeans(sample, config, ctx)  # the local selection of k, on the sample
    centres, inertia = _fit_mllib(session, wh.compile(scaled), zs, chosen.k, config, ctx)

    nearest = _nearest(scaled, zs, centres)
    summary = _summary(wh, scaled.mutate(_c=nearest), zs, columns, chosen.k)
    sizes = np.array([summary[c]["size"] for c in range(chosen.k)])
    order = sorted(range(chosen.k), key=lambda c: (-sizes[c], c))  # cluster 0 = the largest
    mapping = np.empty(chosen.k, dtype="int64")
    mapping[order] = np.arange(chosen.k)
    z = np.zeros((chosen.k, len(columns)))
    for raw_label in range(chosen.k):
        z[mapping[raw_label]] = summary[raw_label]["z"]
    names = steps.cluster_names(z, columns, steps.name_terms, steps.name_threshold)

    sample_labels = mapping[_assign(sample, centres)]
    silhouette = _silhouette(sample, sample_labels)
    fit = steps.fit_type(sample_labels, chosen.k, silhouette, inertia, chosen.scores, "KMeans", None, mapping)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(config.threads):
        stability = steps.stability_ari(sample, fit, config, steps.stability_seeds)

    assigned = _output(scaled, nearest, mapping, names, cid, columns)
    metrics: dict[str, Any] = {
        "k": chosen.k,
        "silhouette": round(silhouette, 4),
        "stability_ari": round(stability, 4),
        "inertia": round(inertia, 3),
        "columns": columns,
        "silhouette_by_k": {str(k): round(s, 4) for k, s in chosen.scores.items()},
        "algorithm": "Spark MLlib KMeans",
        "cluster_names": names,
        "training_rows": total,
        "k_chosen_on": len(sample_ids),
        "engine": "spark",
    }
    ctx.progress(total, total)
    return check_requirements(NodeOutput(table=assigned, extra={"profiles": _profiles(assigned, columns, total)},
                                         metrics=metrics), config)


def _log(value: Any, log: bool) -> Any:
    """``sign(v) * log1p(|v|)``, as ``Scaler`` (clusters_stream.py) does in numpy."""
    if not log:
        return value
    return value.sign() * (value.abs() + 1).ln()


def _column_stats(session: Any, sql: str, columns: list[str]) -> dict[str, Any]:
    """Rows; per column: its exact median (as numpy's: the middle two averaged) and missing values."""
    parts = ["count(*) AS _n"]
    for j, column in enumerate(columns):
        c = f"`{column.replace('`', '``')}`"
        parts += [f"percentile({c}, 0.5) AS median_{j}", f"count(*) - count({c}) AS missing_{j}"]
    row = session.sql(f"SELECT {', '.join(parts)} FROM ({sql}) AS _stats").first()
    return row.asDict() if row is not None else {"_n": 0}


def _warn_missing(ctx: RunContext, columns: list[str], missing: list[int], medians: np.ndarray) -> None:
    notes = [f"`{column}` in {count} rows (set to its median {medians[j]:g})"
             for j, (column, count) in enumerate(zip(columns, missing, strict=True)) if count]
    if notes:
        ctx.warn("missing values: " + "; ".join(notes))


def _sample(session: Any, sql: str, cid: str, zs: list[str], rows: int, seed: int) -> tuple[list[Any], np.ndarray]:
    """At most ``rows`` customers (smallest id hash: the same ones every run), sorted by id."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyspark.sql import functions as F

    frame = session.sql(sql)
    picked = frame.orderBy(F.xxhash64(F.col(cid), F.lit(seed)), F.col(cid)).limit(rows).select(cid, *zs)
    table = picked.toArrow()  # bounded: `silhouette_sample` rows
    ids = table.column(cid).combine_chunks() if table.num_rows else pa.array([], pa.string())
    order = pc.sort_indices(ids).to_numpy()
    matrix = np.column_stack([table.column(z).to_numpy(zero_copy_only=False).astype("float64") for z in zs])
    return ids.take(pa.array(order)).to_pylist(), matrix[order]


def _fit_mllib(session: Any, sql: str, zs: list[str], k: int, config: ClustersConfig, ctx: RunContext
               ) -> tuple[np.ndarray, float]:
    """(centres k x columns, inertia over every customer) of MLlib's k-means: the best of
    ``STARTS`` runs (seeds ``seed``, ``seed + 1``, ...), as scikit-learn keeps the best of
    several starts; one k-means|| start alone lands in a poor local optimum now and then."""
    import numpy as np
    from pyspark import StorageLevel
    from pyspark.ml.clustering import KMeans
    from pyspark.ml.feature import VectorAssembler

    features = VectorAssembler(inputCols=zs, outputCol="_features").transform(session.sql(sql)).select("_features")
    features = features.persist(StorageLevel.MEMORY_AND_DISK)  # read by every start's iterations
    best: tuple[float, np.ndarray] | None = None
    try:
        for start in range(STARTS):
            model = KMeans(k=k, seed=config.seed + start, featuresCol="_features", predictionCol="_prediction",
                           maxIter=50).fit(features)
            cost = float(model.summary.trainingCost)
            if best is None or cost < best[0]:
                best = (cost, np.array([np.asarray(c, dtype="float64") for c in model.clusterCenters()]))
    except Exception as exc:
        first = next(iter(str(exc).strip().splitlines()), type(exc).__name__)[:300]
        raise NodeError(ctx.node, f"Spark's k-means failed: {first}") from exc
    finally:
        features.unpersist()
    assert best is not None  # noqa: S101 - STARTS >= 1
    return best[1], best[0]


def _nearest(scaled: ir.Table, zs: list[str], centres: np.ndarray) -> ir.IntegerValue:
    """The index of the nearest centre (squared distance; ties to the lower index, as MLlib)."""
    import ibis

    distances = []
    for centre in centres:
        terms = [(scaled[z] - float(value)) * (scaled[z] - float(value)) for z, value in zip(zs, centre, strict=True)]
        total = terms[0]
        for term in terms[1:]:
            total = total + term
        distances.append(total)
    if len(distances) == 1:
        return ibis.literal(0, "int64")
    smallest = ibis.least(*distances)
    return ibis.cases(*[(d == smallest, i) for i, d in enumerate(distances[:-1])], else_=len(distances) - 1
                      ).cast("int64")


def _summary(wh: Any, labelled: ir.Table, zs: list[str], columns: list[str], k: int) -> dict[int, dict[str, Any]]:
    """Per centre index: customers and mean scaled value of each column (k rows)."""
    import numpy as np

    rows = wh.rows(labelled.group_by("_c").aggregate(size=labelled.count(),
                                                     **{z: labelled[z].mean() for z in zs}))
    out = {c: {"size": 0, "z": np.zeros(len(columns))} for c in range(k)}
    for row in rows:
        out[int(row["_c"])] = {"size": int(row["size"]), "z": np.array([float(row[z]) for z in zs])}
    return out


def _assign(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    import numpy as np

    distances = ((x[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
    return np.asarray(distances.argmin(axis=1), dtype="int64")


def _silhouette(x: np.ndarray, labels: np.ndarray) -> float:
    import numpy as np
    from sklearn import config_context
    from sklearn.metrics import silhouette_score

    found = len(np.unique(labels))
    if found < 2 or found >= len(x):
        return -1.0
    with config_context(working_memory=128):
        return float(silhouette_score(x, labels))


def _output(scaled: ir.Table, nearest: ir.IntegerValue, mapping: np.ndarray, names: list[str], cid: str,
            columns: list[str]) -> ir.Table:
    """Customer id, ``cluster`` (0 = largest), ``cluster_name`` and the columns (missing
    values as their median), as the local path writes them."""
    import ibis

    labelled = scaled.mutate(_c=nearest)
    cluster = ibis.cases(*[(labelled._c == raw, int(ours)) for raw, ours in enumerate(mapping)],
                         else_=0).cast("int64")
    named = ibis.cases(*[(labelled._c == raw, names[int(ours)]) for raw, ours in enumerate(mapping)],
                       else_=names[0])
    kept = [labelled[c].cast("float64").name(c) for c in columns if c != cid]
    return labelled.select(labelled[cid], cluster.name("cluster"), named.name("cluster_name"), *kept)


def _profiles(assigned: ir.Table, columns: list[str], total: int) -> ir.Table:
    """Per cluster: name, size, share and each column's mean in original units (k rows)."""
    means = {f"mean_{c}": assigned[c].mean().cast("float64") for c in columns if c in assigned.columns}
    grouped = assigned.group_by(["cluster", "cluster_name"]).aggregate(size=assigned.count().cast("int64"), **means)
    share = (grouped["size"].cast("float64") / float(max(total, 1))).round(4).name("share")
    return grouped.select("cluster", "cluster_name", "size", share, *means).order_by("cluster")
