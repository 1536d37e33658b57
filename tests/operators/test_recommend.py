"""Node `recommend` on hand-made shops: categories, exclusions, fallbacks, metrics by hand."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
import scipy.sparse as sp

from segloop.operators.recommend import _metrics_at_k
from tests.operators.recommend_fixtures import (
    START,
    recommendations,
    rows_table,
    run_shop,
    shop,
    shop_pipeline,
    write_events,
)


def run(make_workspace, rows, top_n: int = 3, extra: str = ""):
    root = make_workspace({"shop": shop_pipeline(holdout_days=0, extra=extra, top_n=top_n)})
    write_events(root, rows_table(rows))
    result = run_shop(root)
    assert result.node("recs").status == "success", result.node("recs").error
    recs = {r["customer"]: r for r in recommendations(root)}
    return recs, recommendations(root, "shop__recs__long"), result


def test_one_category_buyer_gets_that_category(make_workspace) -> None:
    rows = shop() + [("solo", "a1", "Order Completed", START), ("solo", "a2", "Product Viewed", START)]
    recs, _, _ = run(make_workspace, rows)
    solo = recs["solo"]
    assert solo["source"] == "model" and len(solo["recommended"]) == 3
    assert all(item.startswith("a") for item in solo["recommended"]), solo["recommended"]
    assert "a1" not in solo["recommended"]  # already bought
    fan = recs["b-fan-0"]
    assert all(item.startswith("b") for item in fan["recommended"]), fan["recommended"]


def test_purchased_items_stay_in_when_configured(make_workspace) -> None:
    rows = shop() + [("solo", "a1", "Order Completed", START)]
    recs, _, _ = run(make_workspace, rows, top_n=6, extra="    exclude_purchased: false")
    assert "a1" in recs["solo"]["recommended"]
    excluded, _, _ = run(make_workspace, rows, top_n=6)
    assert "a1" not in excluded["solo"]["recommended"]
    assert all(set(r["recommended"]).isdisjoint({x[1] for x in rows if x[0] == c and x[2] == "Order Completed"})
               for c, r in excluded.items())


def test_customer_without_weighted_history_gets_popular_items(make_workspace) -> None:
    rows = shop() + [("newbie", "a1", "Checkout Started", START)]  # not in `weights`: weight 0
    recs, long, result = run(make_workspace, rows)
    newbie = recs["newbie"]
    assert newbie["source"] == "popular"
    # a popular item's score is its reach: the share of customers who interacted with it
    assert all(0 < newbie[f"score_{i}"] <= 1 for i in (1, 2, 3))
    assert newbie["score_1"] == pytest.approx(2 * 30 * 3 / 6 / 91, abs=0.15)
    assert all(item.startswith("b") for item in newbie["recommended"])  # B is twice as popular
    assert result.node("recs").metrics["popular_fallback_customers"] == 1
    assert {r["source"] for r in long if r["customer"] == "newbie"} == {"popular"}


def test_small_catalogue_lists_are_filled_not_padded_with_junk(make_workspace) -> None:
    rows = shop(fans_per_category=10)
    recs, long, _ = run(make_workspace, rows, top_n=11)
    for customer, rec in recs.items():
        bought = {x[1] for x in rows if x[0] == customer and x[2] == "Order Completed"}
        assert len(rec["recommended"]) == min(11, 12 - len(bought))
        assert len(set(rec["recommended"])) == len(rec["recommended"])
        assert rec["rec_11"] is None or len(rec["recommended"]) == 11
    assert len(long) == sum(len(r["recommended"]) for r in recs.values())


def test_cold_item_is_reached_through_similar_items(make_workspace) -> None:
    rows = shop()
    # `a_new` was bought by two A fans only: too few customers for ALS (cold)
    rows += [("a-fan-0", "a_new", "Order Completed", START), ("a-fan-1", "a_new", "Order Completed", START)]
    recs, _, _ = run(make_workspace, rows, top_n=4)
    a_fans_with_new = sum("a_new" in r["recommended"] for c, r in recs.items() if c.startswith("a-fan"))
    b_fans_with_new = sum("a_new" in r["recommended"] for c, r in recs.items() if c.startswith("b-fan"))
    assert a_fans_with_new >= 5 and b_fans_with_new == 0


def test_same_seed_same_recommendations(make_workspace) -> None:
    rows = shop()
    first, _, _ = run(make_workspace, rows)
    second, _, _ = run(make_workspace, rows)
    assert first == second


@pytest.mark.parametrize("customers", [1, 2, 99])
def test_awkward_sizes_give_one_row_per_customer(make_workspace, customers: int) -> None:
    rows = [(f"c{i}", ["a1", "a2", "b1"][i % 3], "Product Viewed", START + timedelta(hours=i))
            for i in range(customers)]
    recs, _, _ = run(make_workspace, rows, top_n=2)
    assert len(recs) == customers
    assert all(1 <= len(r["recommended"]) <= 2 for r in recs.values())


def test_no_usable_rows_is_a_clear_error(make_workspace) -> None:
    root = make_workspace({"shop": shop_pipeline(holdout_days=0, top_n=3)})
    write_events(root, rows_table([("x", "a1", "Cart Viewed", START)]))
    result = run_shop(root)
    error = result.node("recs").error
    assert "node `recs`" in error and "weights:" in error


def test_metrics_match_hand_computation() -> None:
    # customer 0: relevant {0, 5}; ranking hits item 0 at rank 1 -> 1 hit
    # customer 1: relevant {9}; ranking hits it at rank 3 -> 1 hit
    relevant = sp.csr_matrix(([1, 1, 1], ([0, 0, 1], [0, 5, 9])), shape=(2, 20))
    ranked = np.array([[0, 1, 2, 3, 4, 6, 7, 8, 10, 11], [1, 2, 9, 3, 4, 5, 6, 7, 8, 10]])
    m = _metrics_at_k(ranked, relevant, 10)
    assert m["precision"] == pytest.approx((1 / 10 + 1 / 10) / 2)  # hits / 10, not capped recall
    assert m["recall"] == pytest.approx((1 / 2 + 1 / 1) / 2)
    ndcg0 = 1.0 / (1.0 + 1 / np.log2(3))
    ndcg1 = (1 / np.log2(4)) / 1.0
    assert m["ndcg"] == pytest.approx((ndcg0 + ndcg1) / 2)


def test_snake_cased_event_names_match_the_weights(make_workspace) -> None:
    snake = {"Order Completed": "order_completed", "Product Viewed": "product_viewed"}
    rows = [(c, item, snake[event], when) for c, item, event, when in shop()]
    rows.append(("solo", "a1", "order_completed", START))
    recs, _, result = run(make_workspace, rows)
    assert result.node("recs").metrics["pairs"] > 0
    assert all(item.startswith("a") for item in recs["solo"]["recommended"])


def test_wide_item_column_clash_is_refused(make_workspace) -> None:
    root = make_workspace({"shop": shop_pipeline(holdout_days=0, extra="    wide_items: [Apple Watch, apple-watch]",
                                                 top_n=3)})
    write_events(root, rows_table([("x", "a1", "Order Completed", START)]))
    result = run_shop(root)
    error = result.node("recs").error
    assert "`apple-watch`" in error and "`apple_watch`" in error and "already taken" in error


def test_wide_items_that_are_not_item_ids_are_said_not_sent_empty_unnoticed(make_workspace) -> None:
    recs, _, result = run(make_workspace, shop(), extra="    wide_items: [a1, iphone]")
    warnings = result.node("recs").warnings
    assert any("`wide_items` iphone: no such item id" in w and "a1" not in w.split("ids look like")[0]
               for w in warnings), warnings
    assert all(r["iphone"] is None for r in recs.values())  # the column exists, empty, as the warning says
    assert any(r["a1"] is not None for r in recs.values())
