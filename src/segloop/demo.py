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

Memory does not grow with the number of customers: customers are generated in blocks of
``GENERATION_BLOCK``, each from its own random stream (``seed`` and the block's number),
vectorized with numpy; a chunk of blocks (``chunk_customers``) becomes Arrow tables
(``segloop.demo_tables``) that are written to the warehouse before the next chunk is made.
So the same seed gives the same rows whatever the chunk size; only the order of rows in a
table follows the chunks (each chunk's rows in time order).

Writing overlaps with generating: a producer thread makes the next chunk's tables (numpy
and Arrow release Python's lock in their kernels) while the warehouse stores the current
chunk's (DuckDB releases it too). The producer works a whole chunk ahead, not a few tables:
a chunk's tables are made together (its blocks first, then every table; with split
identities all of them at once), so a producer only a table or two ahead left the warehouse
idle while the next chunk was drawn (a third of the time at 20k customers). It starts a
chunk only when the warehouse has taken the one before, so at most two chunks are in memory
(``PREFETCH_CHUNKS``). The warehouse's storage is most of the work (DuckDB's columns take
~0.1 us a value), the generator the rest; on two cores the two run side by side.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, TypeVar

from segloop.demo_identity import split_identities
from segloop.demo_tables import EVENT_TABLES, TRUTH, USER_AGENTS, Block, Events, Products, select

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pyarrow as pa

    from segloop.warehouses import Warehouse

_T = TypeVar("_T")

__all__ = ["EVENT_TABLES", "DemoStats", "generate", "write_demo_data"]

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
# Customers drawn from one random stream. Fixed, so that the data does not depend on the
# chunk size; large enough that numpy's per-call cost is small (~245k events a block).
GENERATION_BLOCK = 1_000
# Customers per chunk written to the warehouse: ~116 KB of Arrow data per customer. The
# generator makes one chunk while the warehouse writes the tables of the one before, so
# the Python side holds up to two (~0.7 GB at this size, whatever the total). Smaller
# chunks hold less (2,000: 115 MB less peak at 100k) but cost the writing thread ~20% more
# CPU: each append commits, and commits check the database file (bench/README.md, "demo-data,
# third pass").
DEFAULT_CHUNK_CUSTOMERS = 3_000
# DuckDB's memory while the demo is written (an embedded warehouse keeps the blocks it wrote
# cached up to its memory_limit; they are on disk already, so a smaller cache costs little:
# the same CPU seconds at 768 MiB as at 1 GiB, 250 MB less peak; 512 MiB since the third
# pass, where two whole chunks are held; bench/README.md, "Scale").
WAREHOUSE_MEMORY = 512 * 2**20
# Chunks made ahead while the warehouse writes the one before: one, so that two chunks at
# most are in memory (the one written, the next one being made or waiting).
PREFETCH_CHUNKS = 1
DAY = 86400.0


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
class _Numbers:
    """Running numbers across blocks, so ids are unique in the whole schema."""

    orders: int = 0
    carts: int = 0
    events: int = 0


def _anonymous_before(customers: int) -> int:
    """Anonymous visitors who come with the first ``customers`` customers (ANONYMOUS_SHARE of all)."""
    return int(customers * ANONYMOUS_SHARE / (1 - ANONYMOUS_SHARE))


def _products(seed: int) -> Products:
    import numpy as np

    rng = np.random.default_rng([seed, 0])
    cats = np.repeat(np.arange(len(CATEGORIES)), PRODUCTS_PER_CATEGORY)
    rank = np.tile(np.arange(PRODUCTS_PER_CATEGORY), len(CATEGORIES))
    base = np.array([CATEGORY_PRICE[CATEGORIES[c]] for c in cats])
    price = np.round(base * rng.lognormal(0.0, 0.35, len(cats)), 2)
    ids = np.array([f"{CATEGORIES[c]}_{r + 1:02d}" for c, r in zip(cats, rank, strict=True)], dtype=object)
    popularity = 1.0 / (np.arange(PRODUCTS_PER_CATEGORY) + 1.0) ** 0.9
    return Products(cats, price, ids, np.cumsum(popularity / popularity.sum()), CATEGORIES)


def _pick_products(rng: np.random.Generator, affinity_cum: np.ndarray, products: Products,
                   cust: np.ndarray, noise: float) -> np.ndarray:
    """One product per row: category from the customer's affinity, product by popularity."""
    import numpy as np

    n = len(cust)
    cat = (affinity_cum[cust] < rng.random(n)[:, None]).sum(axis=1)
    random_cat = rng.integers(0, len(CATEGORIES), n)
    cat = np.where(rng.random(n) < noise, random_cat, np.minimum(cat, len(CATEGORIES) - 1))
    within = np.searchsorted(products.popularity_cum, rng.random(n))
    return cat * PRODUCTS_PER_CATEGORY + np.minimum(within, PRODUCTS_PER_CATEGORY - 1)


def generate_block(seed: int, index: int, customers: int, horizon: float, products: Products,
                   numbers: _Numbers | None = None) -> Block:
    """Customers ``index * GENERATION_BLOCK`` up to ``customers`` (at most one block) and their events.

    Everything is drawn from the block's own random stream, so a block is the same whatever
    else is generated; ``numbers`` carries order, cart and event numbers from the block
    before (blocks are generated in order).
    """
    import numpy as np

    numbers = numbers or _Numbers()
    rng = np.random.default_rng([seed, 1, index])
    first = index * GENERATION_BLOCK
    n = min(GENERATION_BLOCK, customers - first)
    first_anon = _anonymous_before(first)
    block = _traits(rng, n, horizon)
    block.first, block.first_anon = first, first_anon
    block.anonymous = _anonymous_before(first + n) - first_anon
    block.events = _block_events(rng, block, products, horizon, numbers)
    return block


def _traits(rng: np.random.Generator, n: int, horizon: float) -> Block:
    import numpy as np

    names = list(PERSONAS)
    shares = np.array([PERSONAS[p][0] for p in names])
    persona = rng.choice(len(names), n, p=shares / shares.sum())
    rate_mean = np.array([PERSONAS[p][1] for p in names])[persona]
    life_mean = np.array([PERSONAS[p][2] for p in names])[persona]
    spend = np.array([PERSONAS[p][3] for p in names])[persona] * rng.lognormal(0, SPEND_SIGMA, n)
    rate = rng.gamma(RATE_SHAPE, rate_mean / RATE_SHAPE)
    start = np.where(rng.random(n) < 0.45, 0.0, rng.uniform(0, horizon * JOIN_WINDOW, n))
    lifetime = rng.gamma(LIFETIME_SHAPE, life_mean / LIFETIME_SHAPE)
    alive_until = np.minimum(horizon, start + lifetime)
    affinity = rng.dirichlet(np.full(len(CATEGORIES), 0.25), n)
    return Block(0, 0, 0, persona, rate, lifetime, start, alive_until, spend, affinity)


def _block_events(rng: np.random.Generator, block: Block, products: Products, horizon: float,
                  numbers: _Numbers) -> list[Events]:
    """The block's events: orders, browsing sessions (customers' and anonymous visitors')."""
    import numpy as np
    import pyarrow as pa

    from segloop.demo_tables import prefixed, products_json

    n = len(block)
    start, spend = block.start, block.spend
    active = np.maximum(block.alive_until - start, 0.5)
    rate = block.rate
    sessions_per_order = np.array([PERSONAS[p][4] for p in PERSONAS])[block.persona]
    affinity_cum = np.cumsum(block.affinity, axis=1)

    # Orders: a Poisson process while alive; the first order opens the relationship.
    n_orders = rng.poisson(rate * active) + (rng.random(n) < 0.8)
    o_cust = np.repeat(np.arange(n), n_orders)
    first = np.r_[0, np.cumsum(n_orders)[:-1]]
    o_t = (start[o_cust] + rng.random(len(o_cust)) * active[o_cust]) * DAY
    is_first = np.zeros(len(o_cust), bool)
    is_first[first[n_orders > 0]] = True
    o_t = np.where(is_first, start[o_cust] * DAY + rng.random(len(o_cust)) * 3600 * 6, o_t)
    n_items = 1 + rng.binomial(2, 0.3, len(o_cust))
    i_order = np.repeat(np.arange(len(o_cust)), n_items)
    i_cust = o_cust[i_order]
    i_prod = _pick_products(rng, affinity_cum, products, i_cust, noise=0.05)
    i_qty = 1 + rng.poisson(0.25 * spend[i_cust])
    i_price = np.round(products.price[i_prod] * np.sqrt(spend[i_cust]), 2)
    i_t = o_t[i_order] - rng.uniform(120, 1800, len(i_order))
    revenue = np.round(np.bincount(i_order, weights=i_price * i_qty, minlength=len(o_cust)), 2)
    order_numbers = numbers.orders + np.arange(len(o_cust))
    numbers.orders += len(o_cust)

    # Browsing sessions (known customers and anonymous visitors): views, some adds.
    n_sessions = rng.poisson(rate * active * sessions_per_order) + 1
    s_cust = np.repeat(np.arange(n), n_sessions)
    s_t = (start[s_cust] + rng.random(len(s_cust)) * active[s_cust]) * DAY
    a_sessions = 1 + rng.poisson(1.0, block.anonymous)
    a_vis = np.repeat(np.arange(block.anonymous), a_sessions)
    a_t = rng.random(len(a_vis)) * horizon * DAY
    views_per = 1 + rng.poisson(1.6, len(s_cust))
    v_sess = np.repeat(np.arange(len(s_cust)), views_per)
    v_cust = s_cust[v_sess]
    v_prod = _pick_products(rng, affinity_cum, products, v_cust, noise=0.15)
    v_t = s_t[v_sess] + rng.uniform(0, 900, len(v_sess))
    av_per = 1 + rng.poisson(1.2, len(a_vis))
    av_vis = np.repeat(a_vis, av_per)
    av_t = np.repeat(a_t, av_per) + rng.uniform(0, 900, av_per.sum())
    av_prod = rng.integers(0, len(products), len(av_vis))
    abandoned = rng.random(len(v_cust)) < 0.12
    checkout_abandoned = abandoned & (rng.random(len(v_cust)) < 0.3)
    carts = int(checkout_abandoned.sum())
    cart_numbers = numbers.carts + np.arange(carts)
    numbers.carts += carts

    known = np.full(len(v_cust) + len(i_cust), -1)
    views = Events("Product Viewed", np.r_[v_cust, i_cust, np.full(len(av_vis), -1)],
                   np.r_[known, av_vis + block.first_anon], np.r_[v_t, i_t - 600, av_t],
                   prod=np.r_[v_prod, i_prod, av_prod])
    adds = Events("Product Added", np.r_[i_cust, v_cust[abandoned]], np.full(len(i_cust) + abandoned.sum(), -1),
                  np.r_[i_t, v_t[abandoned] + 60], prod=np.r_[i_prod, v_prod[abandoned]],
                  props={"quantity": np.r_[i_qty, np.ones(abandoned.sum(), int)]})
    order_ids = prefixed("ord_", order_numbers)
    checkouts = Events("Checkout Started", np.r_[o_cust, v_cust[checkout_abandoned]],
                       np.full(len(o_cust) + carts, -1), np.r_[o_t - 90, v_t[checkout_abandoned] + 120],
                       props={"order_id": pa.concat_arrays([order_ids, prefixed("cart_", cart_numbers)]),
                              "revenue": np.r_[revenue, products.price[v_prod[checkout_abandoned]]],
                              "currency": "USD"})
    orders = Events("Order Completed", o_cust, np.full(len(o_cust), -1), o_t,
                    props={"order_id": order_ids, "revenue": revenue, "total": revenue, "currency": "USD",
                           "products": products_json(i_order, i_prod, i_qty, i_price, products, len(o_cust))})
    refunded = rng.random(len(o_cust)) < REFUND_RATE
    r_t = o_t[refunded] + rng.uniform(1, 14, refunded.sum()) * DAY
    refunds = Events("Order Refunded", o_cust[refunded], np.full(int(refunded.sum()), -1), r_t,
                     props={"order_id": select(order_ids, refunded), "revenue": revenue[refunded],
                            "currency": "USD"})
    events = [views, adds, checkouts, orders, refunds]
    # More behaviour of these customers joins here, drawn from `rng` after all of the above
    # (so the events above stay as they are): `events += <module>.<events>(rng, block, products)`,
    # returning `Events` with customer indices local to the block (as above), `signed_in` False
    # for a customer's events before they identified; events of a kind already here (e.g.
    # "Product Viewed") go to its table. (Split identities are applied to whole chunks of
    # tables instead: `iter_tables(split_ids=True)`, `demo_identity.py`.)

    kept = []
    for ev in events:  # nothing after the end of the period; then what every event has
        ev = ev.select(ev.t < horizon * DAY)
        ev.cust = np.where(ev.cust >= 0, ev.cust + block.first, -1)
        ev.ids = numbers.events + np.arange(len(ev))
        numbers.events += len(ev)
        ev.latency = rng.uniform(0.05, 2.0, len(ev))
        ev.agent = rng.integers(0, len(USER_AGENTS), len(ev)).astype(np.int8)
        kept.append(ev)
    return kept


def generate_chunks(customers: int = 5_000, days: int = 365, seed: int = 7,
                    chunk_customers: int = DEFAULT_CHUNK_CUSTOMERS) -> Iterator[list[Block]]:
    """The demo's customers as lists of blocks of at most ``chunk_customers`` customers
    (rounded up to whole blocks), one list at a time."""
    if customers < 1:
        raise ValueError(f"the demo needs at least 1 customer, not {customers}")
    products = _products(seed)
    numbers = _Numbers()
    per_chunk = max(1, -(-max(chunk_customers, 1) // GENERATION_BLOCK))
    blocks = -(-customers // GENERATION_BLOCK)
    for first in range(0, blocks, per_chunk):
        yield [generate_block(seed, i, customers, float(days), products, numbers)
               for i in range(first, min(first + per_chunk, blocks))]


def catalogue(seed: int = 7) -> Products:
    """The shop's products for ``seed`` (the same for every block)."""
    return _products(seed)


def generate(
    customers: int = 5_000, days: int = 365, seed: int = 7, end: datetime = DEFAULT_END,
    chunk_customers: int = DEFAULT_CHUNK_CUSTOMERS, split_ids: bool = False,
) -> tuple[dict[str, pa.Table], pa.Table]:
    """The source tables and the hidden truth as whole Arrow tables (small demos, tests).

    The rows `write_demo_data` writes, in the same order; it holds everything in memory,
    so use `write_demo_data` for large demos.
    """
    import pyarrow as pa

    parts: dict[str, list[pa.Table]] = {}
    for name, table in iter_tables(customers, days, seed, end, chunk_customers, split_ids):
        parts.setdefault(name, []).append(table)
    truth = pa.concat_tables(parts.pop(TRUTH))
    return {name: pa.concat_tables(tables) for name, tables in parts.items()}, truth


def iter_tables(customers: int, days: int, seed: int, end: datetime,
                chunk_customers: int = DEFAULT_CHUNK_CUSTOMERS,
                split_ids: bool = False) -> Iterator[tuple[str, pa.Table]]:
    """``(table, part)`` for each table of each chunk, one part in memory at a time (the
    truth's parts are named ``TRUTH``).

    With ``split_ids`` each chunk's tables are rewritten together (``demo_identity``:
    browsing before sign-up, a logged-out phone, merged accounts, and the ``aliases``
    table), so one chunk's tables are held at once instead of one table.
    """
    from segloop.demo_tables import chunk_tables

    begin = end - timedelta(days=days)
    products = _products(seed)
    for blocks in generate_chunks(customers, days, seed, chunk_customers):
        parts = chunk_tables(blocks, begin, float(days), products, tuple(PERSONAS))
        del blocks  # held by `parts` until it is done, not while the next chunk is drawn
        if not split_ids:
            yield from parts
            continue
        chunk = dict(parts)
        truth = chunk.pop(TRUTH)
        chunk = split_identities(chunk, seed)
        for name in list(chunk):  # each table let go of once handed on, before the next chunk
            yield name, chunk.pop(name)
        yield TRUTH, truth
        del truth


def write_demo_data(
    warehouse: Warehouse,
    schema: str = "demo_shop",
    customers: int = 5_000,
    days: int = 365,
    seed: int = 7,
    end: datetime = DEFAULT_END,
    progress: DemoProgress | None = None,
    chunk_customers: int = DEFAULT_CHUNK_CUSTOMERS,
    split_ids: bool = False,
) -> DemoStats:
    """Generate demo data and write it to ``schema`` (and the truth to ``<schema>_truth``).

    Written chunk by chunk (``chunk_customers`` customers each): each table's first part
    replaces the table, the others are appended, so memory does not grow with
    ``customers``; an embedded warehouse (DuckDB) may use ``WAREHOUSE_MEMORY`` at most
    from here on (less if it was set lower). ``progress(stage, advance, total)`` hears
    `write` with the customers written so far out of ``customers``.
    """
    import time

    report = progress or _no_progress
    started = time.perf_counter()
    warehouse.lower_memory_limit(WAREHOUSE_MEMORY)
    report("write", 0, customers)
    counts: dict[str, int] = {}
    held: dict[tuple[str, str], pa.Table] = {}  # rows past the last whole row group, for the next part
    truth_schema = f"{schema}_truth"
    tables = iter_tables(customers, days, seed, end, chunk_customers, split_ids)
    for name, part in _tables_of(prefetched(_chunks_of(tables), PREFETCH_CHUNKS)):
        target, table = (truth_schema, "customers") if name == TRUTH else (schema, name)
        key = f"{target}.{table}"
        rows = part.num_rows
        part = _whole_row_groups(warehouse, held, (table, target), part)
        if key in counts:
            if part.num_rows:
                warehouse.insert(table, part, schema=target)
        else:
            warehouse.create_table(table, part, schema=target)
            counts[key] = 0
        del part
        counts[key] += rows
        if name == TRUTH:
            report("write", rows, customers)
    for (table, target), rest in held.items():  # the last rows of the big tables
        warehouse.insert(table, rest, schema=target)
    written = {name.split(".", 1)[1]: rows for name, rows in counts.items() if name.startswith(f"{schema}.")}
    return DemoStats(
        schema=schema,
        customers=customers,
        anonymous_visitors=_anonymous_before(customers),
        events=written.get("tracks", 0),
        orders=written.get("order_completed", 0),
        tables=written,
        seconds=time.perf_counter() - started,
    )


def _whole_row_groups(warehouse: Warehouse, held: dict[tuple[str, str], pa.Table], key: tuple[str, str],
                      part: pa.Table) -> pa.Table:
    """``part`` after the rows held back from its table's part before, cut to whole row groups
    of the warehouse (``APPEND_ROWS``); the rest goes to ``held`` (copied, so the part's
    buffers are let go of) for the next part or the end.

    DuckDB stores an append's whole row groups in parallel straight into the file; a last,
    partial one it logs, merges with the next append and compresses again at a checkpoint,
    in one thread (8% of demo-data's CPU at 12k customers: bench/README.md, "demo-data, third
    pass"). Only parts of at least one row group are cut, so a table that grows by less per
    chunk is written as it comes and at most one row group of each big table is held.
    """
    import pyarrow as pa

    align = warehouse.APPEND_ROWS
    before = held.pop(key, None)
    if before is not None:
        if before.schema.equals(part.schema):
            part = pa.concat_tables([before, part])
        else:  # not expected from one generator; written on its own rather than failing
            warehouse.insert(key[0], before, schema=key[1])
    if align <= 1 or part.num_rows < align:
        return part
    whole = part.num_rows // align * align
    if whole < part.num_rows:
        rest = part.slice(whole)
        held[key] = pa.Table.from_arrays([pa.concat_arrays(column.chunks) for column in rest.columns],
                                         schema=rest.schema)
    return part.slice(0, whole)


def _chunks_of(tables: Iterator[tuple[str, pa.Table]]) -> Iterator[list[tuple[str, pa.Table]]]:
    """`iter_tables`' tables, one chunk's list at a time (the truth's part ends a chunk)."""
    chunk: list[tuple[str, pa.Table]] = []
    for name, table in tables:
        chunk.append((name, table))
        if name == TRUTH:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _tables_of(chunks: Iterator[list[tuple[str, pa.Table]]]) -> Iterator[tuple[str, pa.Table]]:
    """Each chunk's tables in turn, each let go of once the caller has written it."""
    for chunk in chunks:
        chunk.reverse()
        while chunk:
            yield chunk.pop()


_DONE = object()


def prefetched(items: Iterator[_T], depth: int) -> Iterator[_T]:
    """``items``, made by a thread of their own up to ``depth`` ahead of the caller.

    The thread starts on the next item only when fewer than ``depth`` are made and not yet
    taken by the caller, so at most ``depth`` + 1 items are held (the caller's and the
    ones ahead), whatever each costs to make. The generator's error is raised here, where
    the caller reads; when the caller stops early (its own error), the thread stops before
    its next item.
    """
    waiting: queue.Queue[object] = queue.Queue()
    room = threading.Semaphore(max(depth, 1))  # items the thread may make before one is taken
    stop = threading.Event()

    def wait_for_room() -> bool:
        while not stop.is_set():
            if room.acquire(timeout=0.1):
                return not stop.is_set()
        return False

    def produce() -> None:
        try:
            while wait_for_room():
                item = next(items, _DONE)
                waiting.put(item)
                if item is _DONE:
                    return
        except BaseException as exc:  # handed to the reader, which raises it
            waiting.put(_Failed(exc))

    worker = threading.Thread(target=produce, name="segloop-demo-generator", daemon=True)
    worker.start()
    try:
        while True:
            item = waiting.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            room.release()
            yield item  # type: ignore[misc]
            del item
    finally:
        stop.set()
        worker.join()


@dataclass
class _Failed:
    error: BaseException
