"""Demo data: one person, several ids, as in real Segment data.

``segloop.demo`` generates each customer's events under one ``user_id``. Real sources are
messier, and identity stitching (``segment_source`` with ``identity: stitch``) exists to
undo the mess. ``split_identities`` rewrites a chunk of demo tables so that:

- **research before buying**: people look at what they buy, often more than once, in the
  days before they buy it: 60% of ordered products were viewed 1-3 times in the 14 days
  before the order (``demo.py`` draws browsing from each customer's taste, independently
  of what they go on to buy, and views an order's products only minutes before it; real
  browsing also names the products a customer is about to buy, which is what makes it
  worth stitching). Research views fall on whichever device the rest of the customer's
  browsing does, and those before sign-up carry only the ``anonymous_id``;
- **anonymous browsing before sign-up**: most customers who join during the period
  viewed a few of their products in the days before signing up, with only their
  ``anonymous_id`` (the ``identify`` at sign-up links it to the ``user_id``);
- **a second device, logged out**: a share of each customer's browsing (``Product
  Viewed`` / ``Product Added``; 0-70%, differing by customer) happens on a phone with its
  own ``anonymous_id``. Most customers log in on it once (an ``identify`` linking it);
  its events before that login carry no ``user_id``, and for the rest it never does;
- **merged profiles**: a few customers (~3%) first had another account (``legacy-<id>``)
  whose events and orders carry that id until an ``alias`` merges it into the
  customer's ``user_id``;
- **shared devices**: a few phones (~0.5%) are also logged into by another customer.

Without stitching a model sees each customer's browsing only partly, and a merged
customer as two. Every random choice is a hash of the customer's id (and of the event's
time), never a shared random stream, so the result is the same whichever chunk of
customers a call gets (``demo.py`` may write customers in chunks); only a shared
device's second user is taken from the same chunk.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pyarrow as pa

SECOND_DEVICE_MAX_SHARE = 0.9  # of a customer's browsing events (mean 0.6)
SECOND_DEVICE_LOGIN_SHARE = 0.75  # customers who log in on their second device once
MERGED_SHARE = 0.03  # customers with an older account aliased into their user id
SHARED_DEVICE_SHARE = 0.005  # second devices another customer also logs into
PRE_SIGNUP_SHARE = 0.7  # customers joining during the period who browsed before sign-up
PRE_SIGNUP_MAX_EVENTS = 6
PRE_SIGNUP_DAYS = 14.0
RESEARCH_SHARE = 0.6  # ordered products the customer viewed in the days before ordering them
RESEARCH_MAX_VIEWS = 3
RESEARCH_DAYS = 14.0
BROWSE_EVENTS = ("product_viewed", "product_added")
TIME_COLUMNS = ("timestamp", "original_timestamp", "sent_at", "received_at", "uuid_ts")
ALIASES = "aliases"


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64 of uint64 values: well-spread bits from any input (vectorized)."""
    import numpy as np

    with np.errstate(over="ignore"):
        z = values + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _uniform(key: np.ndarray, salt: int) -> np.ndarray:
    """A uniform number in [0, 1) per key, fixed by the key and the salt."""
    import numpy as np

    return (_mix(key ^ np.uint64(salt * 0x2545F4914F6CDD1D & 0xFFFFFFFFFFFFFFFF)) >> np.uint64(11)).astype(
        np.float64) / float(1 << 53)


def _customer_keys(user_ids: list[str]) -> np.ndarray:
    import numpy as np

    return np.array([zlib.crc32(u.encode()) | (zlib.crc32(u[::-1].encode()) << 32) for u in user_ids],
                    dtype=np.uint64)


def split_identities(tables: dict[str, pa.Table], seed: int = 0) -> dict[str, pa.Table]:
    """``tables`` (one chunk of demo customers: event tables, ``tracks``, ``identifies``,
    ``users``) with each customer's ids split as the module docstring says, and ``aliases``."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    identifies = tables["identifies"]
    users = identifies["user_id"].to_pylist()
    if not users:
        return tables
    key = _customer_keys(users) ^ np.uint64(seed)
    signup = identifies["timestamp"].to_numpy().astype("datetime64[us]")
    span_end = max(pc.max(t["timestamp"]).as_py() for n, t in tables.items() if n not in ("users",)
                   and "timestamp" in t.column_names and t.num_rows)
    end = np.datetime64(span_end, "us")
    begin = min(signup)
    life = (end - signup).astype("timedelta64[us]").astype(np.int64)
    share = _uniform(key, 1) ** 0.5 * SECOND_DEVICE_MAX_SHARE  # most browse a lot on their phone
    login_at = signup + (_uniform(key, 3) * life).astype("timedelta64[us]")
    logs_in = _uniform(key, 2) < SECOND_DEVICE_LOGIN_SHARE
    merged = _uniform(key, 4) < MERGED_SHARE
    merge_at = signup + (_uniform(key, 5) * life).astype("timedelta64[us]")
    shared = logs_in & (_uniform(key, 6) < SHARED_DEVICE_SHARE)
    pre_signup = (_uniform(key, 7) < PRE_SIGNUP_SHARE) & (signup > begin + np.timedelta64(1, "D"))
    pre_events = np.where(pre_signup, 1 + (_uniform(key, 8) * PRE_SIGNUP_MAX_EVENTS).astype(int), 0)
    legacy = np.char.add("legacy-", np.array(users))
    phone = np.char.add("anon-m-", np.array(users))

    research = _research_views(tables["product_viewed"], tables["order_completed"], users, signup, key, begin)
    tables = dict(tables, product_viewed=pa.concat_tables([tables["product_viewed"], research]),
                  tracks=pa.concat_tables([tables["tracks"], research.select(tables["tracks"].column_names)]))
    out = dict(tables)
    for name, table in tables.items():
        if name in ("identifies", "users") or "user_id" not in table.column_names:
            continue
        out[name] = _rewrite_events(table, name, users, share, login_at, logs_in, merged, merge_at,
                                    legacy, phone, key)
    pre = _pre_signup_views(tables["product_viewed"], users, signup, pre_events, key, begin)
    out["product_viewed"] = pa.concat_tables([out["product_viewed"], pre])
    out["tracks"] = pa.concat_tables([out["tracks"], pre.select(out["tracks"].column_names)])

    # Identifies: a merged customer signed up under the older account; logins on phones.
    ident = identifies.set_column(identifies.column_names.index("user_id"), "user_id",
                                  pa.array(np.where(merged, legacy, np.array(users))))
    parts = [ident]
    logins = np.flatnonzero(logs_in)
    if len(logins):
        login_user = np.where(merged[logins] & (login_at[logins] < merge_at[logins]), legacy[logins],
                              np.array(users)[logins])
        parts.append(_calls(ident, logins, "idn-m-", phone[logins], login_user, login_at[logins]))
    sharers = np.flatnonzero(shared)
    if len(sharers):
        other = (sharers + 1) % len(users)  # the next customer of this chunk also logs in on it
        parts.append(_calls(ident, sharers, "idn-s-", phone[sharers], np.array(users)[other],
                            login_at[sharers] + np.timedelta64(1, "D")))
    out["identifies"] = pa.concat_tables(parts)
    idx = np.flatnonzero(merged)
    out["users"] = pa.concat_tables([tables["users"], tables["users"].take(pa.array(idx)).set_column(
        0, "id", pa.array(legacy[idx]))])
    out[ALIASES] = _aliases(idx, legacy[idx], np.array(users)[idx], merge_at[idx])
    return out


def _rewrite_events(table: pa.Table, name: str, users: list[str], share: np.ndarray,
                    login_at: np.ndarray, logs_in: np.ndarray, merged: np.ndarray,
                    merge_at: np.ndarray, legacy: np.ndarray, phone: np.ndarray,
                    key: np.ndarray) -> pa.Table:
    """Browsing on the second device (no user id before its login); a merged customer's
    events under the older account before the merge."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    index = pc.fill_null(pc.index_in(table["user_id"], value_set=pa.array(users)), -1).to_numpy()
    known = index >= 0
    idx = np.maximum(index, 0)
    t = table["timestamp"].to_numpy().astype("datetime64[us]")
    take = pa.array(idx)
    before_merge = known & merged[idx] & (t < merge_at[idx])
    user = pc.if_else(pa.array(before_merge), pa.array(legacy).take(take), table["user_id"])
    if "event" in table.column_names:
        browse = pc.fill_null(pc.is_in(table["event"], value_set=pa.array(BROWSE_EVENTS)), False).to_numpy(
            zero_copy_only=False)
    else:
        browse = np.full(table.num_rows, name in BROWSE_EVENTS)
    on_phone = known & browse & (
        _uniform(t.astype(np.int64).astype(np.uint64) ^ key[idx], 9) < share[idx])
    anon = pc.if_else(pa.array(on_phone), pa.array(phone).take(take), table["anonymous_id"])
    logged_out = on_phone & ~(logs_in[idx] & (t >= login_at[idx]))
    user = pc.if_else(pa.array(logged_out), pa.scalar(None, pa.string()), user)
    table = table.set_column(table.column_names.index("user_id"), "user_id", user)
    return table.set_column(table.column_names.index("anonymous_id"), "anonymous_id", anon)


def _research_views(views: pa.Table, orders: pa.Table, users: list[str], signup: np.ndarray, key: np.ndarray,
                    begin: np.datetime64) -> pa.Table:
    """Views of an order's products in the ``RESEARCH_DAYS`` before it, by its customer
    (anonymous only before the customer's sign-up), shaped like a view of that product."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    # The products of each order, without parsing JSON row by row: split at each product id.
    pieces = pc.split_pattern(orders["products"].combine_chunks().fill_null(""), '"product_id":"')
    order_row = pc.list_parent_indices(pieces).to_numpy()
    position = np.arange(len(order_row)) - np.r_[0, np.cumsum(pc.list_value_length(pieces).to_numpy())[:-1]][order_row]
    tails = pc.list_flatten(pieces)
    is_item = position > 0  # the piece before the first product id is the array's opening
    order_row, position = order_row[is_item], position[is_item]
    product = pc.extract_regex(tails.filter(pa.array(is_item)), r'^(?P<p>[^"]*)').field("p")
    cust = pc.fill_null(pc.index_in(orders["user_id"].take(pa.array(order_row)), value_set=pa.array(users)),
                        -1).to_numpy()
    order_t = orders["timestamp"].to_numpy().astype("datetime64[us]")[order_row]
    item_key = _mix(key[np.maximum(cust, 0)] ^ order_t.astype(np.int64).astype(np.uint64)) ^ _mix(
        position.astype(np.uint64))
    chosen = (cust >= 0) & (_uniform(item_key, 11) < RESEARCH_SHARE)
    count = np.where(chosen, 1 + (_uniform(item_key, 12) * RESEARCH_MAX_VIEWS).astype(int), 0)
    rows = np.repeat(np.arange(len(order_row)), count)
    nth = np.arange(len(rows)) - np.repeat(np.cumsum(count) - count, count)
    days = 1 / 24 + _uniform(item_key[rows] ^ _mix(nth.astype(np.uint64) + np.uint64(7)), 13) * (RESEARCH_DAYS - 1 / 24)
    new_t = order_t[rows] - (days * 86400e6).astype("timedelta64[us]")
    template = pc.index_in(product.take(pa.array(rows)), value_set=views["product_id"]).to_numpy(zero_copy_only=False)
    keep = (new_t >= begin) & ~np.isnan(template.astype(float))
    rows, nth, new_t = rows[keep], nth[keep], new_t[keep]
    template = template[keep].astype(np.int64)
    copy = views.take(pa.array(template))
    t = views["timestamp"].to_numpy().astype("datetime64[us]")[template]
    for column in TIME_COLUMNS:
        if column in copy.column_names:
            moved = copy[column].to_numpy().astype("datetime64[us]") + (new_t - t)
            copy = copy.set_column(copy.column_names.index(column), column, pa.array(moved))
    source = pa.array(order_row[rows])
    suffix = np.char.add(np.char.add(np.char.add("-r", position[rows].astype(str)), "-"), nth.astype(str))
    ids = pc.binary_join_element_wise(orders["id"].take(source), pa.array(suffix), "")
    anonymous = orders["anonymous_id"].take(source)
    before_signup = new_t < signup[cust[rows]]
    user = pc.if_else(pa.array(before_signup), pa.scalar(None, pa.string()), orders["user_id"].take(source))
    for column, value in (("id", ids), ("anonymous_id", anonymous), ("user_id", user)):
        copy = copy.set_column(copy.column_names.index(column), column, value)
    return copy


def _pre_signup_views(views: pa.Table, users: list[str], signup: np.ndarray, pre_events: np.ndarray,
                      key: np.ndarray, begin: np.datetime64) -> pa.Table:
    """Copies of a customer's first product views, days before sign-up, anonymous only."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    index = pc.fill_null(pc.index_in(views["user_id"], value_set=pa.array(users)), -1).to_numpy().astype(int)
    t = views["timestamp"].to_numpy().astype("datetime64[us]")
    order = np.lexsort((t, index))
    sorted_idx = index[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_idx)) + 1]
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    keep = (sorted_idx >= 0) & (rank < pre_events[np.maximum(sorted_idx, 0)])
    rows = order[keep]
    cust = index[rows]
    days = _uniform(key[cust] ^ rank[keep].astype(np.uint64), 10) * PRE_SIGNUP_DAYS
    new_t = signup[cust] - (days * 86400e6).astype("timedelta64[us]")
    inside = new_t >= begin
    rows, new_t = rows[inside], new_t[inside]
    copy = views.take(pa.array(rows))
    shift = new_t - t[rows]
    for column in TIME_COLUMNS:
        if column in copy.column_names:
            moved = copy[column].to_numpy().astype("datetime64[us]") + shift
            copy = copy.set_column(copy.column_names.index(column), column, pa.array(moved))
    copy = copy.set_column(copy.column_names.index("id"), "id", pc.binary_join_element_wise(
        copy["id"], pa.scalar("-pre"), ""))
    return copy.set_column(copy.column_names.index("user_id"), "user_id",
                           pa.nulls(copy.num_rows, pa.string()))


def _calls(like: pa.Table, rows: np.ndarray, prefix: str, anonymous_ids: np.ndarray,
           user_ids: np.ndarray, at: np.ndarray) -> pa.Table:
    """Identify calls shaped like the rows ``rows`` of ``like``, at ``at``."""
    import numpy as np
    import pyarrow as pa

    calls = like.take(pa.array(rows))
    values = {"id": np.char.add(prefix, rows.astype(str)), "anonymous_id": anonymous_ids, "user_id": user_ids,
              "timestamp": at, "original_timestamp": at, "sent_at": at,
              "received_at": at + np.timedelta64(1, "s"), "uuid_ts": at + np.timedelta64(30, "m")}
    for column, value in values.items():
        calls = calls.set_column(calls.column_names.index(column), column,
                                 pa.array(value, calls.schema.field(column).type))
    return calls


def _aliases(rows: np.ndarray, previous: np.ndarray, user_ids: np.ndarray, at: np.ndarray) -> pa.Table:
    """Segment's `aliases` table: ``previous_id`` is now ``user_id``."""
    import numpy as np
    import pyarrow as pa

    n = len(rows)
    ts = pa.array(at.astype("datetime64[us]"), pa.timestamp("us"))
    return pa.table({
        "id": pa.array(np.char.add("als-", rows.astype(str)), pa.string()),
        "anonymous_id": pa.nulls(n, pa.string()),
        "user_id": pa.array(user_ids, pa.string()),
        "previous_id": pa.array(previous, pa.string()),
        "received_at": pa.array((at + np.timedelta64(1, "s")).astype("datetime64[us]"), pa.timestamp("us")),
        "sent_at": ts, "timestamp": ts, "original_timestamp": ts,
        "uuid_ts": pa.array((at + np.timedelta64(30, "m")).astype("datetime64[us]"), pa.timestamp("us")),
        "context_library_name": pa.array(["analytics-python"] * n, pa.string()),
    })
