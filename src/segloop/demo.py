"""Demo data: a Segment-shaped e-commerce source schema generated from hidden customer traits.

The tables look like what Segment's warehouse destination writes (`tracks`, `identifies`,
`users` and one table per event, with Segment's column names), so every pipeline written
against the demo also runs against a real Segment warehouse.

Behaviour comes from hidden traits, so models have real signal to find:

- a persona per known customer (``vip``, ``regular``, ``bargain``, ``lapsed``) setting
  purchase rate, lifetime (churn), spend level and how much they browse per order;
- a product-category affinity per customer (Dirichlet, concentrated on one or two
  categories) driving what they view, add and buy;
- anonymous-only visitors who browse and never identify.

The truth is written to ``<schema>_truth.customers`` (persona, rate, lifetime, spend,
favourite category, churn day) for tests and notebooks; pipelines should not read it.
Everything is vectorized with numpy and written as Arrow tables: 1M events take seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from segloop.demo_identity import split_identities

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pyarrow as pa

    from segloop.warehouses import Warehouse

CATEGORIES = ("phones", "laptops", "audio", "wearables", "home", "gaming", "books", "fashion")
PRODUCTS_PER_CATEGORY = 25
CATEGORY_PRICE = {  # median price per category
    "phones": 650.0, "laptops": 1100.0, "audio": 120.0, "wearables": 260.0,
    "home": 80.0, "gaming": 55.0, "books": 18.0, "fashion": 45.0,
}
# persona: share, orders per day (mean), lifetime days (mean), spend multiplier,
# browsing sessions per order. vip, regular and bargain customers stay for years (they do
# not churn within a demo year); lapsed customers buy a few times in their first weeks and
# leave, so they are the churners. Bargain hunters browse a lot and wait for deals (one
# order per ~20 visits); vips know what they want.
PERSONAS: dict[str, tuple[float, float, float, float, float]] = {
    "vip": (0.10, 1 / 7, 3000.0, 2.2, 3.0),
    "regular": (0.30, 1 / 30, 3000.0, 1.0, 5.0),
    "bargain": (0.35, 1 / 75, 3000.0, 0.45, 20.0),
    "lapsed": (0.25, 1 / 25, 40.0, 0.9, 5.0),
}
# Spread of each trait within a persona: gamma shapes (higher: closer to the persona's
# mean) and the lognormal sigma of spend. A persona is a type of customer, so its members
# differ, but less than the personas do.
RATE_SHAPE, LIFETIME_SHAPE, SPEND_SIGMA = 16.0, 4.0, 0.15
# Customers who joined during the period join in its first part (share of the period).
JOIN_WINDOW = 0.4
ANONYMOUS_SHARE = 0.15
REFUND_RATE = 0.04
DEFAULT_END = datetime(2026, 6, 30)
EVENT_TABLES = {
    "Product Viewed": "product_viewed",
    "Product Added": "product_added",
    "Checkout Started": "checkout_started",
    "Order Completed": "order_completed",
    "Order Refunded": "order_refunded",
}


DemoProgress = Callable[[str, int, "int | None"], None]
"""``progress(stage, advance, total)``: what `write_demo_data` is doing (see there)."""


def _no_progress(stage: str, advance: int, total: int | None) -> None: ...


@dataclass
class DemoStats:
    schema: str
    customers: int
    anonymous_visitors: int
    events: int
    orders: int
    tables: dict[str, int]
    seconds: float


@dataclass
class _Events:
    """Columns of one event type, as numpy arrays (times in seconds from the start)."""

    event: str
    cust: np.ndarray  # customer index, or -1 for anonymous visitors
    anon: np.ndarray  # anonymous visitor index (for cust == -1)
    t: np.ndarray
    props: dict[str, Any]


def _products(rng: np.random.Generator) -> dict[str, np.ndarray]:
    import numpy as np

    cats = np.repeat(np.arange(len(CATEGORIES)), PRODUCTS_PER_CATEGORY)
    rank = np.tile(np.arange(PRODUCTS_PER_CATEGORY), len(CATEGORIES))
    base = np.array([CATEGORY_PRICE[CATEGORIES[c]] for c in cats])
    price = np.round(base * rng.lognormal(0.0, 0.35, len(cats)), 2)
    ids = np.array([f"{CATEGORIES[c]}_{r + 1:02d}" for c, r in zip(cats, rank, strict=True)])
    return {"category": cats, "rank": rank, "price": price, "product_id": ids}


def _pick_products(
    rng: np.random.Generator, affinity: np.ndarray, cust: np.ndarray, noise: float
) -> np.ndarray:
    """One product per row: category from the customer's affinity, product by popularity."""
    import numpy as np

    n = len(cust)
    cum = np.cumsum(affinity[cust], axis=1)
    cat = (cum < rng.random(n)[:, None]).sum(axis=1)
    random_cat = rng.integers(0, len(CATEGORIES), n)
    cat = np.where(rng.random(n) < noise, random_cat, np.minimum(cat, len(CATEGORIES) - 1))
    popularity = 1.0 / (np.arange(PRODUCTS_PER_CATEGORY) + 1.0) ** 0.9
    popularity_cum = np.cumsum(popularity / popularity.sum())
    within = np.searchsorted(popularity_cum, rng.random(n))
    return cat * PRODUCTS_PER_CATEGORY + np.minimum(within, PRODUCTS_PER_CATEGORY - 1)


def generate(
    customers: int = 5_000, days: int = 365, seed: int = 7, end: datetime = DEFAULT_END,
    split_ids: bool = False,
) -> tuple[dict[str, pa.Table], pa.Table]:
    """Generate the source tables and the hidden truth, as Arrow tables."""
    import numpy as np

    rng = np.random.default_rng(seed)
    horizon = float(days)
    names = list(PERSONAS)
    shares = np.array([PERSONAS[p][0] for p in names])
    persona = rng.choice(len(names), customers, p=shares / shares.sum())
    rate_mean = np.array([PERSONAS[p][1] for p in names])[persona]
    life_mean = np.array([PERSONAS[p][2] for p in names])[persona]
    spend = np.array([PERSONAS[p][3] for p in names])[persona] * rng.lognormal(0, SPEND_SIGMA, customers)
    sessions_per_order = np.array([PERSONAS[p][4] for p in names])[persona]
    rate = rng.gamma(RATE_SHAPE, rate_mean / RATE_SHAPE)
    start = np.where(rng.random(customers) < 0.45, 0.0, rng.uniform(0, horizon * JOIN_WINDOW, customers))
    lifetime = rng.gamma(LIFETIME_SHAPE, life_mean / LIFETIME_SHAPE)
    alive_until = np.minimum(horizon, start + lifetime)
    active = np.maximum(alive_until - start, 0.5)
    affinity = rng.dirichlet(np.full(len(CATEGORIES), 0.25), customers)
    products = _products(rng)
    day = 86400.0

    # Orders: a Poisson process while alive; the first order opens the relationship.
    n_orders = rng.poisson(rate * active) + (rng.random(customers) < 0.8)
    o_cust = np.repeat(np.arange(customers), n_orders)
    first = np.r_[0, np.cumsum(n_orders)[:-1]]
    o_t = (start[o_cust] + rng.random(len(o_cust)) * active[o_cust]) * day
    is_first = np.zeros(len(o_cust), bool)
    is_first[first[n_orders > 0]] = True
    o_t = np.where(is_first, start[o_cust] * day + rng.random(len(o_cust)) * 3600 * 6, o_t)
    n_items = 1 + rng.binomial(2, 0.3, len(o_cust))
    i_order = np.repeat(np.arange(len(o_cust)), n_items)
    i_cust = o_cust[i_order]
    i_prod = _pick_products(rng, affinity, i_cust, noise=0.05)
    i_qty = 1 + rng.poisson(0.25 * spend[i_cust])
    i_price = np.round(products["price"][i_prod] * np.sqrt(spend[i_cust]), 2)
    i_t = o_t[i_order] - rng.uniform(120, 1800, len(i_order))
    revenue = np.round(np.bincount(i_order, weights=i_price * i_qty, minlength=len(o_cust)), 2)
    order_ids = np.char.add("ord_", np.arange(len(o_cust)).astype(str))

    # Browsing sessions (known customers and anonymous visitors): views, some adds.
    n_sessions = rng.poisson(rate * active * sessions_per_order) + 1
    s_cust = np.repeat(np.arange(customers), n_sessions)
    s_t = (start[s_cust] + rng.random(len(s_cust)) * active[s_cust]) * day
    n_anon = int(customers * ANONYMOUS_SHARE / (1 - ANONYMOUS_SHARE))
    a_sessions = 1 + rng.poisson(1.0, n_anon)
    a_vis = np.repeat(np.arange(n_anon), a_sessions)
    a_t = rng.random(len(a_vis)) * horizon * day
    views_per = 1 + rng.poisson(1.6, len(s_cust))
    v_sess = np.repeat(np.arange(len(s_cust)), views_per)
    v_cust = s_cust[v_sess]
    v_prod = _pick_products(rng, affinity, v_cust, noise=0.15)
    v_t = s_t[v_sess] + rng.uniform(0, 900, len(v_sess))
    av_per = 1 + rng.poisson(1.2, len(a_vis))
    av_vis = np.repeat(a_vis, av_per)
    av_t = np.repeat(a_t, av_per) + rng.uniform(0, 900, av_per.sum())
    av_prod = rng.integers(0, len(products["price"]), len(av_vis))
    abandoned = rng.random(len(v_cust)) < 0.12
    checkout_abandoned = abandoned & (rng.random(len(v_cust)) < 0.3)

    def event(event_name: str, cust: np.ndarray, t: np.ndarray, anon: np.ndarray | None = None, /, **props: Any) -> _Events:
        return _Events(event_name, cust, anon if anon is not None else np.full(len(cust), -1), t, props)

    def product_props(prod: np.ndarray, qty: np.ndarray | None = None) -> dict[str, Any]:
        props: dict[str, Any] = {
            "product_id": products["product_id"][prod],
            "sku": np.char.add("SKU-", products["product_id"][prod]),
            "name": np.char.replace(products["product_id"][prod], "_", " "),
            "category": np.array(CATEGORIES)[products["category"][prod]],
            "price": products["price"][prod],
        }
        if qty is not None:
            props["quantity"] = qty
        return props

    views = event("Product Viewed", np.r_[v_cust, i_cust, np.full(len(av_vis), -1)],
                  np.r_[v_t, i_t - 600, av_t], np.r_[np.full(len(v_cust) + len(i_cust), -1), av_vis],
                  **{k: np.r_[v, w, x] for (k, v), w, x in zip(
                      product_props(v_prod).items(), product_props(i_prod).values(),
                      product_props(av_prod).values(), strict=True)})
    add_prod = np.r_[i_prod, v_prod[abandoned]]
    adds = event("Product Added", np.r_[i_cust, v_cust[abandoned]],
                 np.r_[i_t, v_t[abandoned] + 60],
                 **product_props(add_prod, np.r_[i_qty, np.ones(abandoned.sum(), int)]))
    checkouts = event("Checkout Started", np.r_[o_cust, v_cust[checkout_abandoned]],
                      np.r_[o_t - 90, v_t[checkout_abandoned] + 120],
                      order_id=np.r_[order_ids, np.char.add("cart_", np.arange(checkout_abandoned.sum()).astype(str))],
                      revenue=np.r_[revenue, v_t[checkout_abandoned] * 0 + products["price"][v_prod[checkout_abandoned]]],
                      currency=np.full(len(o_cust) + checkout_abandoned.sum(), "USD"))
    orders = event("Order Completed", o_cust, o_t, order_id=order_ids, revenue=revenue,
                   total=revenue, currency=np.full(len(o_cust), "USD"),
                   products=_products_json(i_order, i_prod, i_qty, i_price, products, len(o_cust)))
    refunded = rng.random(len(o_cust)) < REFUND_RATE
    r_t = o_t[refunded] + rng.uniform(1, 14, refunded.sum()) * day
    keep = r_t < horizon * day
    refunds = event("Order Refunded", o_cust[refunded][keep], r_t[keep],
                    order_id=order_ids[refunded][keep], revenue=revenue[refunded][keep],
                    currency=np.full(int(keep.sum()), "USD"))

    begin = end - timedelta(days=days)
    all_events = [views, adds, checkouts, orders, refunds]
    for ev in all_events:  # nothing after the end of the period
        mask = ev.t < horizon * day
        ev.cust, ev.anon, ev.t = ev.cust[mask], ev.anon[mask], ev.t[mask]
        ev.props = {k: v[mask] for k, v in ev.props.items()}
    tables = _to_tables(rng, all_events, begin, customers, start, spend)
    if split_ids:  # anonymous browsing before sign-up, logged-out phones, merged accounts
        tables = split_identities(tables, seed)
    truth = _truth(names, persona, rate, lifetime, start, alive_until, horizon, spend, affinity, begin)
    return tables, truth


def _products_json(i_order: np.ndarray, i_prod: np.ndarray, i_qty: np.ndarray,
                   i_price: np.ndarray, products: dict[str, np.ndarray], n_orders: int) -> np.ndarray:
    """Each order's products[] as a JSON string, as Segment stores arrays in warehouses."""
    import numpy as np
    import orjson

    out: list[list[dict[str, Any]]] = [[] for _ in range(n_orders)]
    pid, cats = products["product_id"], products["category"]
    for o, p, q, price in zip(i_order.tolist(), i_prod.tolist(), i_qty.tolist(), i_price.tolist(), strict=True):
        out[o].append({"product_id": pid[p], "sku": f"SKU-{pid[p]}", "category": CATEGORIES[cats[p]],
                       "price": price, "quantity": q})
    return np.array([orjson.dumps(items).decode() for items in out], dtype=object)


def _to_tables(rng: np.random.Generator, events: list[_Events], begin: datetime,
               customers: int, start: np.ndarray, spend: np.ndarray) -> dict[str, pa.Table]:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    base = np.datetime64(begin, "us")
    user_ids = np.char.add("u", (np.arange(customers) + 100_000).astype(str))
    cust_anon = np.char.add("anon-k", np.arange(customers).astype(str))
    tables: dict[str, pa.Table] = {}
    common_parts: list[pa.Table] = []
    offset = 0
    agents = np.array(["Mozilla/5.0 (Macintosh)", "Mozilla/5.0 (iPhone)", "Mozilla/5.0 (Windows NT 10.0)"])
    user_ids_pa, cust_anon_pa, agents_pa = pa.array(user_ids), pa.array(cust_anon), pa.array(agents)
    for ev in events:
        n = len(ev.t)
        order = np.argsort(ev.t, kind="stable")
        cust, anon, t = ev.cust[order], ev.anon[order], ev.t[order]
        ts = base + (t * 1e6).astype("timedelta64[us]")
        latency = (rng.uniform(0.05, 2.0, n) * 1e6).astype("timedelta64[us]")
        known = pa.array(cust >= 0)
        # Strings are built with Arrow kernels: numpy's string functions take seconds here.
        customer = pa.array(np.maximum(cust, 0))
        user_id = pc.if_else(known, user_ids_pa.take(customer), pa.scalar(None, pa.string()))
        anonymous_id = pc.if_else(known, cust_anon_pa.take(customer),
                                  _prefixed("anon-v", np.maximum(anon, 0)))
        ids = _prefixed(f"{EVENT_TABLES[ev.event][:3]}-", np.arange(n) + offset)
        offset += n
        common = {
            "id": ids,
            "anonymous_id": anonymous_id,
            "user_id": user_id,
            "received_at": pa.array(ts + latency),
            "sent_at": pa.array(ts + latency // 2),
            "timestamp": pa.array(ts),
            "original_timestamp": pa.array(ts),
            "uuid_ts": pa.array(ts + latency + np.timedelta64(30, "m")),
            "context_library_name": pa.repeat("analytics.js", n),
            "context_library_version": pa.repeat("5.2.0", n),
            "context_user_agent": agents_pa.take(pa.array(rng.integers(0, len(agents), n))),
            "context_page_path": pa.repeat("/" + EVENT_TABLES[ev.event].split("_")[0], n),
            "event": pa.repeat(EVENT_TABLES[ev.event], n),
            "event_text": pa.repeat(ev.event, n),
        }
        props = {k: pa.array(v[order] if v.dtype != object else v[order].tolist()) for k, v in ev.props.items()}
        tables[EVENT_TABLES[ev.event]] = pa.table({**common, **props})
        common_parts.append(pa.table(common))
    tracks = pa.concat_tables(common_parts)
    tables["tracks"] = tracks.take(np.argsort(tracks["timestamp"].to_numpy(), kind="stable"))
    tables["identifies"], tables["users"] = _identities(rng, base, user_ids, cust_anon, start, spend)
    return tables


def _prefixed(prefix: str, numbers: np.ndarray) -> pa.Array:
    """``prefix`` + each number, as an Arrow string array."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.binary_join_element_wise(prefix, pa.array(numbers).cast(pa.string()), "")


def _identities(rng: np.random.Generator, base: np.datetime64, user_ids: np.ndarray,
                cust_anon: np.ndarray, start: np.ndarray, spend: np.ndarray) -> tuple[pa.Table, pa.Table]:
    import numpy as np
    import pyarrow as pa

    n = len(user_ids)
    ts = base + (start * 86400e6).astype("timedelta64[us]")
    emails = np.char.add(np.char.add("customer", np.arange(n).astype(str)), "@example.com")
    plan = np.where(spend > 1.5, "premium", "standard")
    ids = np.char.add("idn-", np.arange(n).astype(str))
    identifies = pa.table({
        "id": ids, "anonymous_id": cust_anon, "user_id": user_ids,
        "received_at": pa.array(ts + np.timedelta64(1, "s")), "sent_at": pa.array(ts),
        "timestamp": pa.array(ts), "original_timestamp": pa.array(ts),
        "uuid_ts": pa.array(ts + np.timedelta64(30, "m")),
        "context_library_name": np.full(n, "analytics.js"),
        "context_library_version": np.full(n, "5.2.0"),
        "email": emails, "plan": plan, "created_at": pa.array(ts),
    })
    users = pa.table({
        "id": user_ids, "received_at": pa.array(ts + np.timedelta64(1, "s")),
        "uuid_ts": pa.array(ts + np.timedelta64(30, "m")),
        "email": emails, "plan": plan, "created_at": pa.array(ts),
    })
    return identifies, users


def _truth(names: list[str], persona: np.ndarray, rate: np.ndarray, lifetime: np.ndarray,
           start: np.ndarray, alive_until: np.ndarray, horizon: float, spend: np.ndarray,
           affinity: np.ndarray, begin: datetime) -> pa.Table:
    import numpy as np
    import orjson
    import pyarrow as pa

    n = len(persona)
    churned = start + lifetime < horizon
    return pa.table({
        "user_id": np.char.add("u", (np.arange(n) + 100_000).astype(str)),
        "persona": np.array(names)[persona],
        "orders_per_day": rate,
        "lifetime_days": lifetime,
        "start_day": start,
        "churned": churned,
        "churn_at": pa.array(np.where(churned, np.datetime64(begin, "us") + (alive_until * 86400e6).astype("timedelta64[us]"), np.datetime64("NaT"))),
        "spend_level": spend,
        "favourite_category": np.array(CATEGORIES)[affinity.argmax(axis=1)],
        "category_affinity": [orjson.dumps(dict(zip(CATEGORIES, row.round(3).tolist(), strict=True))).decode() for row in affinity],
    })


def write_demo_data(
    warehouse: Warehouse,
    schema: str = "demo_shop",
    customers: int = 5_000,
    days: int = 365,
    seed: int = 7,
    end: datetime = DEFAULT_END,
    progress: DemoProgress | None = None,
    split_ids: bool = False,
) -> DemoStats:
    """Generate demo data and write it to ``schema`` (and the truth to ``<schema>_truth``).

    ``progress(stage, advance, total)`` hears `generate` once (no count: one vectorized
    step), then `write` with the rows of each table written out of all of them.
    """
    import time

    report = progress or _no_progress
    started = time.perf_counter()
    report("generate", 0, None)
    tables, truth = generate(customers, days, seed, end, split_ids)
    total = sum(table.num_rows for table in tables.values()) + truth.num_rows
    report("write", 0, total)
    for name, table in tables.items():
        warehouse.create_table(name, table, schema=schema)
        report("write", table.num_rows, total)
    warehouse.create_table("customers", truth, schema=f"{schema}_truth")
    report("write", truth.num_rows, total)
    counts = {name: table.num_rows for name, table in tables.items()}
    return DemoStats(
        schema=schema,
        customers=customers,
        anonymous_visitors=int(customers * ANONYMOUS_SHARE / (1 - ANONYMOUS_SHARE)),
        events=counts["tracks"],
        orders=counts["order_completed"],
        tables=counts,
        seconds=time.perf_counter() - started,
    )
