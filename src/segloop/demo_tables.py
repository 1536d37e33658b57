"""Demo data as Segment's warehouse tables: Arrow tables from a chunk of generated customers.

`segloop.demo` draws customers and their events as numpy arrays; this module turns one
chunk of them into the tables Segment's warehouse destination writes (one per event,
``tracks``, ``identifies``, ``users``) and the hidden truth. Strings are built with Arrow
kernels (numpy's string functions take seconds per million rows) and products are looked
up by index in the small catalogue, so a chunk costs little more than its own output.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pyarrow as pa

USER_ID_BASE = 100_000  # customer i is user "u<USER_ID_BASE + i>"
EVENT_TABLES = {
    "Product Viewed": "product_viewed",
    "Product Added": "product_added",
    "Checkout Started": "checkout_started",
    "Order Completed": "order_completed",
    "Order Refunded": "order_refunded",
}
USER_AGENTS = ("Mozilla/5.0 (Macintosh)", "Mozilla/5.0 (iPhone)", "Mozilla/5.0 (Windows NT 10.0)")
TRUTH = "_truth.customers"
"""The name `iter_tables` gives the truth's parts (written to ``<schema>_truth.customers``)."""




@dataclass
class Events:
    """Rows of one event type, as arrays (times in seconds from the start of the period).

    ``cust`` is the customer's index (-1: an anonymous visitor, ``anon`` is then the
    visitor's index); ``signed_in`` is False where a known customer's event came before
    they identified (no ``user_id``, their ``anonymous_id``); None: all are signed in.
    ``prod`` is the product's index for events about one product. ``props`` are the
    event's other properties (numpy or Arrow arrays).
    """

    event: str
    cust: np.ndarray
    anon: np.ndarray
    t: np.ndarray
    prod: np.ndarray | None = None
    props: dict[str, Any] = field(default_factory=dict)
    signed_in: np.ndarray | None = None
    ids: np.ndarray | None = None  # event numbers, unique in the schema (set by the block)
    latency: np.ndarray | None = None  # seconds from the event to its arrival (set by the block)
    agent: np.ndarray | None = None  # index into USER_AGENTS (set by the block)

    def __len__(self) -> int:
        return len(self.t)

    def select(self, rows: np.ndarray) -> Events:
        """These events at ``rows`` (a boolean mask or indices)."""
        return Events(self.event, self.cust[rows], self.anon[rows], self.t[rows],
                      None if self.prod is None else self.prod[rows],
                      {k: select(v, rows) for k, v in self.props.items()},
                      *(None if a is None else a[rows] for a in (self.signed_in, self.ids, self.latency, self.agent)))


@dataclass
class Products:
    """The shop's catalogue: category, price and names by product index."""

    category: np.ndarray
    price: np.ndarray
    product_id: np.ndarray
    popularity_cum: np.ndarray  # cumulative popularity of a category's products, by rank
    categories: tuple[str, ...]  # names, by category index

    def __len__(self) -> int:
        return len(self.price)


@dataclass
class Block:
    """One block of customers: their hidden traits (one value per customer) and events.

    ``first`` is the index of its first customer in the whole demo, ``first_anon`` of its
    first anonymous visitor; arrays are over the block's own customers.
    """

    first: int
    first_anon: int
    anonymous: int
    persona: np.ndarray
    rate: np.ndarray
    lifetime: np.ndarray
    start: np.ndarray
    alive_until: np.ndarray
    spend: np.ndarray
    affinity: np.ndarray
    events: list[Events] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.persona)


def select(values: Any, rows: np.ndarray) -> Any:
    """``values`` (numpy, Arrow, or one string for every row) at ``rows``."""
    import numpy as np
    import pyarrow as pa

    if isinstance(values, str):  # the same value in every row
        return values
    if isinstance(values, pa.Array):
        if rows.dtype == bool:
            return values.filter(pa.array(rows))
        return values.take(pa.array(rows))
    return np.asarray(values)[rows]




def prefixed(prefix: str, numbers: np.ndarray) -> pa.Array:
    """``prefix`` + each number, as an Arrow string array."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.binary_join_element_wise(prefix, pa.array(numbers, pa.int64()).cast(pa.string()), "")


def products_json(i_order: np.ndarray, i_prod: np.ndarray, i_qty: np.ndarray, i_price: np.ndarray,
                  products: Products, n_orders: int) -> pa.Array:
    """Each order's products[] as a JSON string, as Segment stores arrays in warehouses.

    Items come grouped by order (``i_order`` ascending); every order has at least one.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    heads = pa.array([f'{{"product_id":"{p}","sku":"SKU-{p}","category":"{products.categories[c]}","price":'
                      for p, c in zip(products.product_id, products.category, strict=True)])
    items = pc.binary_join_element_wise(
        heads.take(pa.array(i_prod)), pa.array(i_price).cast(pa.string()), ',"quantity":',
        pa.array(i_qty, pa.int64()).cast(pa.string()), "}", "")
    offsets = np.r_[0, np.cumsum(np.bincount(i_order, minlength=n_orders))].astype(np.int32)
    lists = pa.ListArray.from_arrays(pa.array(offsets), items)
    return pc.binary_join_element_wise("[", pc.binary_join(lists, ","), "]", "")


def chunk_tables(blocks: Sequence[Block], begin: datetime, horizon: float, products: Products,
                 personas: Sequence[str]) -> Iterator[tuple[str, pa.Table]]:
    """``(table, rows)`` of one chunk: each event table, ``tracks``, ``identifies``,
    ``users`` and the truth (named ``TRUTH``); each table's rows in time order."""
    import numpy as np
    import pyarrow as pa

    base = np.datetime64(begin, "us")
    by_event: dict[str, list[Events]] = {}
    for block in blocks:
        for ev in block.events:
            by_event.setdefault(ev.event, []).append(ev)
    common_parts = []
    for event, parts in by_event.items():
        ev = _concat(parts)
        ev = ev.select(np.argsort(ev.t, kind="stable"))
        common = _common(ev, base)
        columns = {**common, **_product_columns(ev, products), **_props(ev)}
        yield EVENT_TABLES[event], pa.table(columns)
        common_parts.append(pa.table(common))
    tracks = pa.concat_tables(common_parts)
    del common_parts
    yield "tracks", tracks.take(pa.array(np.argsort(tracks["timestamp"].to_numpy(), kind="stable")))
    del tracks
    identifies, users = _identities(blocks, base)
    yield "identifies", identifies
    yield "users", users
    yield TRUTH, _truth(blocks, begin, horizon, products.categories, personas)


def _concat(parts: list[Events]) -> Events:
    import numpy as np
    import pyarrow as pa

    if len(parts) == 1:
        return parts[0]

    def join(values: list[Any]) -> Any:
        if isinstance(values[0], str):
            return values[0]
        if isinstance(values[0], pa.Array):
            return pa.concat_arrays(values)
        return np.concatenate(values)

    first = parts[0]
    arrays = [None if getattr(first, name) is None else np.concatenate([getattr(p, name) for p in parts])
              for name in ("prod", "signed_in", "ids", "latency", "agent")]
    return Events(first.event, np.concatenate([p.cust for p in parts]), np.concatenate([p.anon for p in parts]),
                  np.concatenate([p.t for p in parts]), arrays[0],
                  {k: join([p.props[k] for p in parts]) for k in first.props}, *arrays[1:])


def _common(ev: Events, base: np.datetime64) -> dict[str, pa.Array]:
    """The columns every Segment track has (and the ``tracks`` table holds)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(ev)
    assert ev.ids is not None and ev.latency is not None and ev.agent is not None  # set by the block
    ts = base + (ev.t * 1e6).astype("timedelta64[us]")
    latency = (ev.latency * 1e6).astype("timedelta64[us]")
    known = ev.cust >= 0
    signed_in = known if ev.signed_in is None else known & ev.signed_in
    customer = np.maximum(ev.cust, 0)
    user_id = pc.if_else(pa.array(signed_in), prefixed("u", customer + USER_ID_BASE), pa.scalar(None, pa.string()))
    anonymous_id = pc.if_else(pa.array(known), prefixed("anon-k", customer), prefixed("anon-v", np.maximum(ev.anon, 0)))
    table = EVENT_TABLES[ev.event]
    return {
        "id": prefixed(f"{table[:3]}-", ev.ids),
        "anonymous_id": anonymous_id,
        "user_id": user_id,
        "received_at": pa.array(ts + latency),
        "sent_at": pa.array(ts + latency // 2),
        "timestamp": pa.array(ts),
        "original_timestamp": pa.array(ts),
        "uuid_ts": pa.array(ts + latency + np.timedelta64(30, "m")),
        "context_library_name": pa.repeat("analytics.js", n),
        "context_library_version": pa.repeat("5.2.0", n),
        "context_user_agent": pa.array(USER_AGENTS).take(pa.array(ev.agent)),
        "context_page_path": pa.repeat("/" + table.split("_")[0], n),
        "event": pa.repeat(table, n),
        "event_text": pa.repeat(ev.event, n),
    }


def _product_columns(ev: Events, products: Products) -> dict[str, pa.Array]:
    """The product's fields (Segment's e-commerce spec) for events about one product."""
    import numpy as np
    import pyarrow as pa

    if ev.prod is None:
        return {}
    ids = products.product_id.tolist()
    prod = pa.array(ev.prod)
    return {
        "product_id": pa.array(ids).take(prod),
        "sku": pa.array([f"SKU-{p}" for p in ids]).take(prod),
        "name": pa.array([p.replace("_", " ") for p in ids]).take(prod),
        "category": pa.array(np.array(products.categories)[products.category].tolist()).take(prod),
        "price": pa.array(products.price).take(prod),
    }


def _props(ev: Events) -> dict[str, pa.Array]:
    import pyarrow as pa

    return {k: pa.repeat(v, len(ev)) if isinstance(v, str) else
            v if isinstance(v, pa.Array) else pa.array(v) for k, v in ev.props.items()}


def _identities(blocks: Sequence[Block], base: np.datetime64) -> tuple[pa.Table, pa.Table]:
    import numpy as np
    import pyarrow as pa

    index = np.concatenate([block.first + np.arange(len(block)) for block in blocks])
    start = np.concatenate([block.start for block in blocks])
    spend = np.concatenate([block.spend for block in blocks])
    n = len(index)
    ts = base + (start * 86400e6).astype("timedelta64[us]")
    user_ids = prefixed("u", index + USER_ID_BASE)
    emails = pa.compute.binary_join_element_wise("customer", pa.array(index).cast(pa.string()), "@example.com", "")
    plan = pa.array(np.where(spend > 1.5, "premium", "standard").tolist())
    identifies = pa.table({
        "id": prefixed("idn-", index), "anonymous_id": prefixed("anon-k", index), "user_id": user_ids,
        "received_at": pa.array(ts + np.timedelta64(1, "s")), "sent_at": pa.array(ts),
        "timestamp": pa.array(ts), "original_timestamp": pa.array(ts),
        "uuid_ts": pa.array(ts + np.timedelta64(30, "m")),
        "context_library_name": pa.repeat("analytics.js", n),
        "context_library_version": pa.repeat("5.2.0", n),
        "email": emails, "plan": plan, "created_at": pa.array(ts),
    })
    users = pa.table({
        "id": user_ids, "received_at": pa.array(ts + np.timedelta64(1, "s")),
        "uuid_ts": pa.array(ts + np.timedelta64(30, "m")),
        "email": emails, "plan": plan, "created_at": pa.array(ts),
    })
    return identifies, users


def _truth(blocks: Sequence[Block], begin: datetime, horizon: float, categories: Sequence[str],
           personas: Sequence[str]) -> pa.Table:
    import numpy as np
    import orjson
    import pyarrow as pa

    def joined(name: str) -> np.ndarray:
        return np.concatenate([getattr(block, name) for block in blocks])

    index = np.concatenate([block.first + np.arange(len(block)) for block in blocks])
    start, lifetime, alive_until, affinity = joined("start"), joined("lifetime"), joined("alive_until"), joined("affinity")
    churned = start + lifetime < horizon
    churn_at = np.datetime64(begin, "us") + (alive_until * 86400e6).astype("timedelta64[us]")
    return pa.table({
        "user_id": prefixed("u", index + USER_ID_BASE),
        "persona": pa.array(np.array(personas)[joined("persona")].tolist()),
        "orders_per_day": joined("rate"),
        "lifetime_days": lifetime,
        "start_day": start,
        "churned": churned,
        "churn_at": pa.array(np.where(churned, churn_at, np.datetime64("NaT"))),
        "spend_level": joined("spend"),
        "favourite_category": pa.array(np.array(categories)[affinity.argmax(axis=1)].tolist()),
        "category_affinity": [orjson.dumps(dict(zip(categories, row, strict=True))).decode()
                              for row in affinity.round(3).tolist()],
    })
