"""Demo data with split ids: browsing names what people go on to buy (issue 22).

Real shoppers look at a product, often more than once and on several devices, in the days
before they buy it; that is what makes stitched anonymous browsing worth having for
recommendations. The demo's browsing is drawn from each customer's taste, so without
research views an ordered product is seen in the days before its order no more often than
any product of the customer's taste.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import orjson
import pytest

from segloop.demo import generate

DAY = timedelta(days=1)


@pytest.fixture(scope="module")
def tables():
    return generate(customers=400, days=200, seed=5, split_ids=True)[0]


def person_of(tables) -> dict[str, str]:
    """anonymous id -> the user id an identify links it to (sign-up, or a login on a phone)."""
    links: dict[str, str] = {}
    for row in tables["identifies"].select(["anonymous_id", "user_id"]).to_pylist():
        links.setdefault(row["anonymous_id"], row["user_id"].removeprefix("legacy-"))
    return links


def views_by_person(tables) -> dict[tuple[str, str], list]:
    links = person_of(tables)
    out: dict[tuple[str, str], list] = {}
    for row in tables["product_viewed"].select(["anonymous_id", "user_id", "timestamp", "product_id"]).to_pylist():
        person = row["user_id"].removeprefix("legacy-") if row["user_id"] else links.get(row["anonymous_id"])
        if person:
            out.setdefault((person, row["product_id"]), []).append(row["timestamp"])
    return out


def test_most_ordered_products_were_viewed_in_the_days_before_the_order(tables) -> None:
    views = views_by_person(tables)
    start = min(tables["order_completed"]["timestamp"].to_pylist()) + 14 * DAY
    seen, total = 0, 0
    for row in tables["order_completed"].select(["user_id", "timestamp", "products"]).to_pylist():
        if row["timestamp"] < start:
            continue
        person = row["user_id"].removeprefix("legacy-")
        for product in orjson.loads(row["products"]):
            total += 1
            times = views.get((person, product["product_id"]), [])
            seen += any(row["timestamp"] - 14 * DAY <= t <= row["timestamp"] - timedelta(hours=1) for t in times)
    assert total > 1000
    assert seen / total > 0.5, (seen, total)


def test_research_before_sign_up_is_anonymous_and_linked_by_the_sign_up(tables) -> None:
    signup = {r["user_id"].removeprefix("legacy-"): r["timestamp"]
              for r in tables["identifies"].select(["user_id", "timestamp", "id"]).to_pylist()
              if not r["id"].startswith(("idn-m-", "idn-s-"))}
    links = person_of(tables)
    ordered = {(r["user_id"].removeprefix("legacy-"), p["product_id"])
               for r in tables["order_completed"].select(["user_id", "products"]).to_pylist()
               for p in orjson.loads(r["products"])}
    before = [r for r in tables["product_viewed"].select(["anonymous_id", "user_id", "timestamp", "product_id"]).to_pylist()
              if r["user_id"] is None and links.get(r["anonymous_id"]) in signup
              and r["timestamp"] < signup[links[r["anonymous_id"]]]]
    assert len(before) > 50
    # what they looked at before signing up is mostly what they then bought
    share = np.mean([(links[r["anonymous_id"]], r["product_id"]) in ordered for r in before])
    assert share > 0.7, share
