"""Choosing ALS's factors, regularization and confidence scaling on held-out purchases.

No one setting suits every catalogue: a shop whose customers' tastes span a handful of
categories is served best by few factors, one with a hundred niches needs many (16
factors scored 27% below ``implicit``'s defaults on such data; bench/README.md). With
``tune: true`` the recommend node searches, one setting at a time (coordinate search:
factors, then regularization, then alpha, each at the best values found so far), for the
settings with the best NDCG@10 on a validation split, and keeps the configured settings
unless a candidate beats them. The validation split is the ``holdout_days`` before the
node's holdout, so the holdout the quality card reports stays unseen by the choice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable

    from segloop.models.als import AlsSettings, HoldoutSplit

FACTORS = (8, 16, 32, 64, 128)
REGULARIZATION = (0.01, 0.1, 0.5, 2.0)
ALPHA = (0.5, 1.0, 2.0, 5.0, 10.0)
MIN_VALIDATION_CUSTOMERS = 20  # below this a choice among settings is noise


@dataclass
class Tuning:
    """What the search tried and chose (NDCG@k on the validation split)."""

    configured: AlsSettings
    chosen: AlsSettings
    configured_ndcg: float
    chosen_ndcg: float
    customers: int
    tried: list[tuple[AlsSettings, float]] = field(default_factory=list)

    @property
    def winner(self) -> str:
        return "configured" if self.chosen == self.configured else "tuned"

    def card(self) -> dict[str, Any]:
        """The quality card's `tuning` entry (names chosen not to read as a top-level measure)."""
        return {
            "winner": self.winner,
            "chosen": self.chosen.describe(),
            "factors": self.chosen.factors, "regularization": self.chosen.regularization,
            "alpha": self.chosen.alpha,
            "configured_validation_score": round(self.configured_ndcg, 4),
            "chosen_validation_score": round(self.chosen_ndcg, 4),
            "validation_customers": self.customers,
            "candidates": len(self.tried),
        }


def tune(split: HoldoutSplit, configured: AlsSettings, k: int, n_items: int) -> Tuning:
    """The settings with the best NDCG@``k`` on ``split`` (the configured ones on a tie)."""

    def score(settings: AlsSettings) -> float:
        scorer = split.scorer(settings)
        return split.measure(split.model_lists(scorer, k), k)["ndcg"]

    return search(configured, n_items, len(split.users), score)


def search(configured: AlsSettings, n_items: int, customers: int, score: Callable[[AlsSettings], float]) -> Tuning:
    """The coordinate search over ``score`` (a validation NDCG; each setting scored once),
    wherever the fits run: in this process (``tune``) or in Spark (operators/recommend_spark.py)."""
    scores: dict[AlsSettings, float] = {}

    def scored(settings: AlsSettings) -> float:
        if settings not in scores:
            scores[settings] = score(settings)
        return scores[settings]

    best, best_score = configured, scored(configured)
    axes: tuple[tuple[str, tuple[Any, ...]], ...] = (
        ("factors", tuple(f for f in FACTORS if f <= max(n_items, FACTORS[0]))),
        ("regularization", REGULARIZATION), ("alpha", ALPHA))
    for name, values in axes:
        for value in values:
            candidate = best.but(**{name: value})
            if scored(candidate) > best_score + 1e-9:
                best, best_score = candidate, scores[candidate]
    return Tuning(configured, best, scores[configured], best_score, customers, list(scores.items()))
