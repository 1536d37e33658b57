"""The recommend tests' shops, shared by test_recommend*.py and bench/recommend_defaults.py.

One pipeline: `events` reads ``shop_src.events`` (customer, sku, event, ts) and `recs`
recommends from it; the tests vary ``top_n``, ``holdout_days`` and extra keys. Two shops:
``shop()``, hand-made rows of A fans and B fans, and ``planted()``, customers each with a
taste for 2 of G product groups (with ``implicit_defaults_ndcg``, `implicit`'s own defaults
scored on the node's split).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

from segloop.pipeline import Pipeline, RunResult
from segloop.warehouses import DuckDBConfig, Warehouse

SHOP_NODES = """\
name: shop
nodes:
  events:
    type: sql
    sql: select * from shop_src.events
  recs:
    type: recommend
    input: events
    customer_id: customer
    item_id: sku
    timestamp: ts
    event: event
"""


def shop_pipeline(holdout_days: int, extra: str = "", top_n: int | None = None) -> str:
    """The shop pipeline's text; ``extra``: more lines of `recs` (indented 4), or more nodes."""
    top = f"    top_n: {top_n}\n" if top_n is not None else ""
    return f"{SHOP_NODES}{top}    holdout_days: {holdout_days}\n{extra}\n"


def write_events(root: Path, table: pa.Table) -> None:
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        wh.create_table("events", table, schema="shop_src")


def run_shop(root: Path) -> RunResult:
    return Pipeline.load(root / "pipelines" / "shop.yml").run()


def recommendations(root: Path, table: str = "shop__recs") -> list[dict]:
    """The rows of `recs`' output table (or of another, e.g. ``shop__recs__long``)."""
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        return wh.table(table).to_pyarrow().to_pylist()


# -- fans: two kinds of customers, by hand ----------------------------------------------------

START = datetime(2025, 1, 1)
A_ITEMS = [f"a{i}" for i in range(1, 7)]
B_ITEMS = [f"b{i}" for i in range(1, 7)]
Row = tuple[str, str, str, datetime]


def shop(fans_per_category: int = 30, seed: int = 3) -> list[Row]:
    """Two kinds of customers: A fans buy A items, B fans buy B items (B is more popular)."""
    rng = np.random.default_rng(seed)
    rows = []
    for kind, items, n in (("a", A_ITEMS, fans_per_category), ("b", B_ITEMS, 2 * fans_per_category)):
        for c in range(n):
            chosen = rng.choice(len(items), 3, replace=False)
            for j, i in enumerate(chosen):
                when = START + timedelta(days=int(rng.integers(0, 60)), minutes=j)
                rows.append((f"{kind}-fan-{c}", items[i], "Order Completed", when))
                rows.append((f"{kind}-fan-{c}", items[i], "Product Viewed", when - timedelta(minutes=5)))
    return rows


def rows_table(rows: list[Row]) -> pa.Table:
    """(customer, sku, event, ts) rows as the `shop_src.events` table."""
    return pa.table({
        "customer": [r[0] for r in rows], "sku": [r[1] for r in rows],
        "event": [r[2] for r in rows], "ts": pa.array([r[3] for r in rows], pa.timestamp("us")),
    })


# -- planted: tastes for product groups, at scale ----------------------------------------------

PLANTED_START = datetime(2026, 1, 1)
DAYS, HOLDOUT = 180, 30
WEIGHTS = {"Product Viewed": 1.0, "Product Added": 3.0, "Order Completed": 5.0}


def planted(customers: int = 3000, groups: int = 80, per_group: int = 10, *, events_per: int = 30,
            seed: int = 0, structure: bool = True, days: int = DAYS) -> dict[str, np.ndarray]:
    """Events of customers with a taste for 2 groups (or, without ``structure``, none).

    Each customer likes 2 of ``groups`` product groups (``per_group`` products each, the
    first of a group the most popular, Zipf 1.6), ``events_per`` events on average over
    ``days`` (views 75%, adds 17%, orders 8%; 20% of events outside the customer's groups).
    """
    rng = np.random.default_rng(seed)
    taste = rng.integers(0, groups, (customers, 2))
    cust = np.repeat(np.arange(customers), rng.poisson(events_per, customers))
    group = taste[cust, rng.integers(0, 2, len(cust))]
    noise = rng.random(len(cust)) < (0.2 if structure else 1.0)
    group = np.where(noise, rng.integers(0, groups, len(cust)), group)
    within = np.minimum(rng.zipf(1.6, len(cust)) - 1, per_group - 1)
    kind = rng.choice(3, len(cust), p=[0.75, 0.17, 0.08])
    seconds = np.floor(rng.random(len(cust)) * days * 86400)
    return {"cust": cust, "item": group * per_group + within, "kind": kind, "seconds": seconds}


def planted_table(events: dict[str, np.ndarray]) -> pa.Table:
    """``planted()`` events as the `shop_src.events` table (customers c0.., products p0..)."""
    names = np.array(list(WEIGHTS))
    ts = np.datetime64(PLANTED_START, "us") + (events["seconds"] * 1e6).astype("timedelta64[us]")
    return pa.table({"customer": np.char.add("c", events["cust"].astype(str)),
                     "sku": np.char.add("p", events["item"].astype(str)),
                     "event": names[events["kind"]], "ts": pa.array(ts)})


def implicit_defaults_ndcg(events: dict[str, np.ndarray], holdout_days: int = HOLDOUT,
                           k: int = 10) -> tuple[float, int]:
    """``implicit``'s ``AlternatingLeastSquares()`` with its defaults, on the node's split:
    trained on the weighted events before the holdout, asked for ``k`` items it has not seen
    bought, judged on what was bought in the holdout and not before. Returns the NDCG@k and
    how many customers were judged."""
    import scipy.sparse as sp
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    from segloop.models.als import metrics_at_k

    cust, item, kind, t = events["cust"], events["item"], events["kind"], events["seconds"]
    shape = (int(cust.max()) + 1, int(item.max()) + 1)
    train = t < t.max() - holdout_days * 86400
    weight = np.array(list(WEIGHTS.values()), dtype="float32")[kind]

    def matrix(rows: np.ndarray, values: np.ndarray) -> sp.csr_matrix:
        m = sp.csr_matrix((values, (cust[rows], item[rows])), shape=shape, dtype="float32")
        m.sum_duplicates()
        return m

    bought = kind == 2
    train_weight = matrix(train, weight[train])
    train_bought = (matrix(train & bought, np.ones((train & bought).sum(), "float32")) > 0).astype("float32")
    test_bought = (matrix(~train & bought, np.ones((~train & bought).sum(), "float32")) > 0).astype("float32")
    relevant = test_bought - test_bought.multiply(train_bought)
    relevant.eliminate_zeros()
    users = np.flatnonzero(np.diff(relevant.tocsr().indptr) > 0)
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(random_state=42)
        model.fit(train_weight, show_progress=False)
        ids, _ = model.recommend(users, train_bought.tocsr()[users], N=k, filter_already_liked_items=True)
    return metrics_at_k(np.asarray(ids, dtype="int64"), relevant.tocsr()[users], k)["ndcg"], len(users)
