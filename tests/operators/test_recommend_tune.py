"""Node `recommend` no worse than its library's defaults (issue 21, item 6).

A planted-structure shop: each customer likes 2 of 80 product groups (10 products each),
and views, adds and buys from them over 180 days (20% of events elsewhere). The fixed
defaults (16 factors) cannot hold 80 tastes and score ~20% below `implicit`'s own
`AlternatingLeastSquares()` on the same split; `tune: true` must do at least as well. The
reference is computed here, on the same events and the same split (the last 30 days held
out, relevant items = bought in them and not before), with the node's own NDCG@10.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.operators.recommend_fixtures import (
    implicit_defaults_ndcg,
    planted,
    planted_table,
    recommendations,
    run_shop,
    shop_pipeline,
    write_events,
)


def run_node(make_workspace, events: dict[str, np.ndarray], extra: str = "") -> tuple[dict, dict]:
    root = make_workspace({"shop": shop_pipeline(holdout_days=30, extra=extra)})
    write_events(root, planted_table(events))
    result = run_shop(root)
    node = result.node("recs")
    assert node.status == "success", node.error
    return node.metrics, {r["customer"]: r for r in recommendations(root)}


@pytest.fixture(scope="module")
def shop() -> dict[str, np.ndarray]:
    return planted()


@pytest.fixture(scope="module")
def reference(shop) -> tuple[float, int]:
    return implicit_defaults_ndcg(shop)


def test_tuned_node_does_at_least_as_well_as_implicit_defaults(make_workspace, shop, reference) -> None:
    ndcg, evaluated = reference
    metrics, recs = run_node(make_workspace, shop, "    tune: true")
    assert metrics["evaluated_customers"] == evaluated  # the same customers, the same held-out orders
    assert metrics["ndcg_at_10"] >= ndcg, (metrics, ndcg)
    tuning = metrics["tuning"]
    assert tuning["winner"] == "tuned" and tuning["factors"] > 16, tuning
    assert tuning["chosen_validation_score"] > tuning["configured_validation_score"]
    assert tuning["candidates"] >= 10 and tuning["validation_customers"] >= 100
    assert metrics["model"] == "als" and metrics["ndcg_at_10"] > 2 * metrics["popular_ndcg_at_10"]
    assert {r["source"] for r in recs.values()} == {"model"}


def test_fixed_defaults_fall_short_on_this_shop(make_workspace, shop, reference) -> None:
    """Why tuning exists: 16 factors cannot hold 80 tastes (the shop is one where it matters)."""
    metrics, _ = run_node(make_workspace, shop)
    assert metrics["ndcg_at_10"] < 0.9 * reference[0]
    assert "tuning" not in metrics


def test_popularity_is_published_when_the_model_does_not_beat_it(make_workspace) -> None:
    events = planted(customers=1500, groups=10, per_group=50, events_per=6, structure=False, seed=5)  # no tastes
    metrics, recs = run_node(make_workspace, events, "    top_n: 5")
    assert metrics["ndcg_at_10"] <= metrics["popular_ndcg_at_10"], metrics
    assert metrics["model"] == "popular"
    assert {r["source"] for r in recs.values()} == {"popular"}
    # the same popular items (less each customer's purchases) for everyone, best first
    firsts = {r["rec_1"] for r in recs.values()}
    assert len(firsts) <= 3


def test_tune_needs_a_holdout(make_workspace) -> None:
    from segloop.errors import SegloopError

    root = make_workspace({"shop": shop_pipeline(holdout_days=0, extra="    tune: true")})
    with pytest.raises(SegloopError, match="holdout_days"):
        run_shop(root)
