"""Implicit-feedback ALS for the recommend node: fit, score a chunk of customers, measure.

- ``fit_als``: the ``implicit`` library's CPU ALS on the pairs' ``log1p(weight)``, which
  implicit multiplies by ``alpha``: a pair with weight w > 0 has confidence
  ``alpha * log1p(w)`` (preference 1), a pair without events confidence 1 (preference 0)
  (fixed ``random_state``; BLAS held to one thread while it runs, as implicit advises).
- ``Scorer``: what scoring needs once the model is fitted (item factors, the popularity
  order and reach, the cold items' similarity to every item); ``Scorer.score`` ranks the
  top ``n`` items for one chunk of customers, given only that chunk's rows. Customers the
  fit did not see (training on a sample) get their factors recomputed from their own rows
  (implicit's ``recalculate_user``: one least-squares solve against the fixed item factors).
- ``metrics_at_k`` and ``coverage``: precision / recall / NDCG at k and catalogue coverage;
  ``HoldoutSplit`` scores a model (or popularity) on one train / held-out split with them.

Memory: a chunk's scoring holds the chunk's rows, its ``n`` candidates per customer and
the cold items' similarity (items x cold items), never customers x items dense.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import scipy.sparse as sp


@dataclass(frozen=True)
class AlsSettings:
    factors: int
    iterations: int
    regularization: float
    alpha: float
    seed: int
    threads: int
    cold_item_min_customers: int
    exclude_purchased: bool

    def but(self, **changes: Any) -> AlsSettings:
        """These settings with some changed (``factors``, ``regularization``, ``alpha``)."""
        return replace(self, **changes)

    def describe(self) -> str:
        return f"factors {self.factors}, regularization {self.regularization:g}, alpha {self.alpha:g}"


def confidence(weights: sp.csr_matrix) -> sp.csr_matrix:
    """log1p of the weights (the pairs with weight > 0).

    implicit's ALS multiplies these values by its ``alpha`` (in ``fit`` and ``recalculate_user``)
    and takes the product as the pair's confidence, ``alpha * log1p(w)``; the pairs left out
    have confidence 1 and preference 0. (The cold items' similarity uses them without alpha.)
    """
    import numpy as np

    out = weights.copy().astype("float32")
    out.data = np.log1p(out.data).astype("float32")
    return out


def fit_als(weights: sp.csr_matrix, settings: AlsSettings) -> Any:
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
            factors=settings.factors, regularization=settings.regularization, alpha=settings.alpha,
            iterations=settings.iterations, random_state=settings.seed, num_threads=settings.threads,
        )
        model.fit(confidence(weights), show_progress=False)
    return model


def popularity_order(totals: np.ndarray) -> np.ndarray:
    """Item codes, most popular (total weight) first; ties by code."""
    import numpy as np

    return np.lexsort((np.arange(len(totals)), -totals))


def cold_similarity(weights: sp.csr_matrix, cold: np.ndarray) -> sp.csr_matrix:
    """items x cold items: cosine similarity over customers (an item is not its own neighbour)."""
    import scipy.sparse as sp
    from sklearn.preprocessing import normalize

    item_vectors = normalize(confidence(weights).T.tocsr(), norm="l2", axis=1)  # items x customers
    sim = (item_vectors @ item_vectors[cold].T).tocoo()
    keep = sim.row != cold[sim.col]
    return sp.csr_matrix((sim.data[keep], (sim.row[keep], sim.col[keep])), shape=sim.shape)


class Scorer:
    """Top-``n`` lists from a fitted model, cold items and popularity, one chunk at a time."""

    def __init__(self, model: Any | None, settings: AlsSettings, n_items: int, customers_per_item: np.ndarray,
                 totals: np.ndarray, n_customers: int, train_weights: sp.csr_matrix, recalculate: bool):
        import numpy as np

        self.model, self.settings, self.n_items = model, settings, n_items
        self.recalculate = recalculate  # the fit saw a sample: every customer's factors from its own rows
        cold = np.flatnonzero(customers_per_item < settings.cold_item_min_customers)
        if len(cold) == n_items:
            cold = np.array([], dtype="int64")  # everything is cold: let ALS do what it can
        self.cold = cold
        self.popular = popularity_order(totals)
        self.reach = (customers_per_item / max(n_customers, 1)).astype("float32")
        self.similarity = cold_similarity(train_weights, cold) if len(cold) and model is not None else None

    def factors(self, users: np.ndarray, weights: sp.csr_matrix) -> np.ndarray:
        """User factors: the fit's (``users`` are codes of the fitted matrix), or recomputed."""
        import numpy as np
        from threadpoolctl import threadpool_limits

        model = self.model
        if model is None:
            raise ValueError("no fitted model to take factors from")
        if not self.recalculate:
            return np.asarray(model.user_factors[users])
        with threadpool_limits(1, "blas"):
            return np.asarray(model.recalculate_user(np.arange(weights.shape[0]), confidence(weights)))

    def score(self, users: np.ndarray, weights: sp.csr_matrix, bought: sp.csr_matrix, n: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """(items, scores, from_popular, user factors) for one chunk: ``weights``/``bought``
        hold the chunk's rows in the order of ``users`` (codes in the fitted matrix)."""
        import numpy as np
        from implicit.cpu.topk import topk

        exclude = bought if self.settings.exclude_purchased else None
        items = np.full((len(users), n), -1, dtype="int64")
        scores = np.full((len(users), n), np.nan, dtype="float32")
        has_history = np.diff(weights.indptr) > 0
        warm = np.flatnonzero(has_history)
        factors = None
        if len(warm) and self.model is not None:
            factors = self.factors(users[warm], weights[warm])
            n_candidates = min(n, self.n_items)
            filter_matrix = exclude[warm] if exclude is not None else None
            ids, vals = topk(self.model.item_factors, factors, n_candidates, filter_query_items=filter_matrix,
                             filter_items=self.cold if len(self.cold) else None,
                             num_threads=self.settings.threads)
            cold_scores = None
            if self.similarity is not None:
                from sklearn.preprocessing import normalize

                history = normalize(confidence(weights[warm]), norm="l1", axis=1)
                cold_scores = (history @ self.similarity).tocsr()
            # Rows without cold candidates: ALS's own list (already without excluded and cold
            # items), re-sorted by (score, item) so ties fall the same way on every run.
            with_cold = np.zeros(len(warm), dtype=bool)
            if cold_scores is not None:
                with_cold = np.diff(cold_scores.indptr) > 0
            plain = np.flatnonzero(~with_cold)
            if len(plain):
                ranked_items, ranked_scores = _rank_rows(ids[plain], vals[plain], n)
                items[warm[plain], :ranked_items.shape[1]] = ranked_items
                scores[warm[plain], :ranked_scores.shape[1]] = ranked_scores
            for pos in np.flatnonzero(with_cold):
                row = warm[pos]
                start, end = cold_scores.indptr[pos], cold_scores.indptr[pos + 1]  # type: ignore[union-attr]
                cand_items = np.concatenate([ids[pos], self.cold[cold_scores.indices[start:end]]])  # type: ignore[union-attr]
                cand_scores = np.concatenate([vals[pos], cold_scores.data[start:end]])  # type: ignore[union-attr]
                excluded = exclude.indices[exclude.indptr[row]:exclude.indptr[row + 1]] if exclude is not None else None
                ranked_items, ranked_scores = _rank(cand_items, cand_scores, excluded, n)
                items[row, :len(ranked_items)] = ranked_items
                scores[row, :len(ranked_items)] = ranked_scores
        fill_popular(items, scores, self.popular, self.reach, exclude, n)
        from_popular = ~has_history if self.model is not None else np.ones(len(users), dtype=bool)
        return items, scores, from_popular, factors


def _rank_rows(ids: np.ndarray, vals: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``_rank`` for many rows at once, when each row's ids are distinct and none excluded."""
    import numpy as np

    ids = np.asarray(ids, dtype="int64")
    vals = np.asarray(vals, dtype="float64")
    ok = (ids >= 0) & np.isfinite(vals) & (vals > -1e30)
    key = np.where(ok, -vals, np.inf)
    order = np.lexsort((ids, key), axis=-1)[:, :n]
    ranked_ids = np.take_along_axis(ids, order, axis=1)
    ranked_vals = np.take_along_axis(vals, order, axis=1)
    valid = np.take_along_axis(ok, order, axis=1)
    return np.where(valid, ranked_ids, -1), np.where(valid, ranked_vals, np.nan).astype("float32")


def _rank(cand_items: np.ndarray, cand_scores: np.ndarray, excluded: np.ndarray | None, n: int
          ) -> tuple[np.ndarray, np.ndarray]:
    """Best ``n`` candidates by score (ties by item code): valid ids, no duplicates, not excluded."""
    import numpy as np

    cand_items = np.asarray(cand_items, dtype="int64")
    cand_scores = np.asarray(cand_scores, dtype="float64")
    ok = (cand_items >= 0) & np.isfinite(cand_scores) & (cand_scores > -1e30)
    if excluded is not None and len(excluded):
        ok &= ~np.isin(cand_items, excluded)
    cand_items, cand_scores = cand_items[ok], cand_scores[ok]
    order = np.lexsort((cand_items, -cand_scores))
    cand_items, cand_scores = cand_items[order], cand_scores[order]
    _, first = np.unique(cand_items, return_index=True)  # the best score of each item
    first.sort()
    return cand_items[first][:n], cand_scores[first][:n].astype("float32")


def fill_popular(items: np.ndarray, scores: np.ndarray, popular: np.ndarray, reach: np.ndarray,
                 exclude: sp.csr_matrix | None, n: int) -> None:
    """Complete short lists (row ``r`` is ``exclude``'s row ``r``) with popular items not bought.

    Their score is the item's reach (share of customers who interacted with it), 0-1.
    """
    import numpy as np

    short = np.flatnonzero((items < 0).any(axis=1))
    for row in short:
        taken = set(items[row][items[row] >= 0].tolist())
        if exclude is not None:
            taken |= set(exclude.indices[exclude.indptr[row]:exclude.indptr[row + 1]].tolist())
        free = np.flatnonzero(items[row] < 0)
        fill = [i for i in popular[: len(taken) + n].tolist() if i not in taken][: len(free)]
        items[row, free[: len(fill)]] = fill
        scores[row, free[: len(fill)]] = reach[fill]


def metrics_at_k(ranked: np.ndarray, relevant: sp.csr_matrix, k: int) -> dict[str, float]:
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


def coverage(ranked: np.ndarray, n_items: int, k: int) -> float:
    """Catalogue coverage at k: the share of the catalogue in at least one top-``k`` list."""
    import numpy as np

    shown = ranked[:, :k]
    return float(len(np.unique(shown[shown >= 0])) / n_items) if n_items else 0.0


@dataclass
class HoldoutSplit:
    """One evaluation split: what customers did before it, and what they bought in it.

    ``relevant`` holds the items bought in the held-out period, less those bought before
    when purchases are excluded (they can never be recommended); only customers with a
    relevant item are evaluated. Popularity and reach come from the training part.
    """

    train_weight: sp.csr_matrix
    train_bought: sp.csr_matrix
    relevant: sp.csr_matrix
    customers_per_item: np.ndarray
    totals: np.ndarray

    @classmethod
    def of(cls, train_weight: sp.csr_matrix, train_bought: sp.csr_matrix, test_bought: sp.csr_matrix,
           exclude_purchased: bool, customers_per_item: np.ndarray | None = None,
           totals: np.ndarray | None = None) -> HoldoutSplit:
        import numpy as np

        relevant = test_bought.tocsr()
        if exclude_purchased:
            relevant = relevant - relevant.multiply(train_bought > 0)
            relevant.eliminate_zeros()
        if customers_per_item is None:
            customers_per_item = np.diff(train_weight.tocsc().indptr).astype("int64")
        if totals is None:
            totals = np.asarray(train_weight.sum(axis=0), dtype="float64").ravel()
        return cls(train_weight, train_bought, relevant.tocsr(), customers_per_item, totals)

    @property
    def users(self) -> np.ndarray:
        import numpy as np

        return np.flatnonzero(np.diff(self.relevant.indptr) > 0)

    def scorer(self, settings: AlsSettings) -> Scorer:
        model = fit_als(self.train_weight, settings) if self.train_weight.nnz else None
        return Scorer(model, settings, self.train_weight.shape[1], self.customers_per_item, self.totals,
                      self.train_weight.shape[0], self.train_weight, recalculate=False)

    def model_lists(self, scorer: Scorer, k: int) -> np.ndarray:
        users = self.users
        return scorer.score(users, self.train_weight[users], self.train_bought[users], k)[0]

    def popular_lists(self, settings: AlsSettings, k: int) -> np.ndarray:
        """Every evaluated customer's list from popularity alone (minus their purchases)."""
        import numpy as np

        users = self.users
        popular = np.full((len(users), k), -1, dtype="int64")
        exclude = self.train_bought[users] if settings.exclude_purchased else None
        reach = (self.customers_per_item / max(self.train_weight.shape[0], 1)).astype("float32")
        fill_popular(popular, np.zeros(popular.shape, dtype="float32"), popularity_order(self.totals), reach,
                     exclude, k)
        return popular

    def measure(self, ranked: np.ndarray, k: int) -> dict[str, float]:
        """precision, recall, NDCG at k and coverage of ``ranked`` (one row per evaluated customer)."""
        out = metrics_at_k(ranked, self.relevant[self.users], k)
        out["coverage"] = coverage(ranked, self.train_weight.shape[1], k)
        return out
