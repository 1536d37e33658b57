"""Customer x item interactions for the recommend node: coded in the warehouse, held compactly.

The recommend node must not hold Python objects per pair, nor grow with customers (issue
19). So the warehouse does the heavy lifting once per run:

- ``ScratchTables.build`` aggregates the weighted events into one row per (customer, item)
  pair and writes three short-lived tables: the customers and the items, each with a dense
  integer code in sorted id order (``_u``, ``_i``: sorted, so the matrix and thus the ALS
  fit are the same every run), and the pairs as ``(_u, _i, weights...)`` ordered by ``_u``.
  Item statistics (customers, total weight, in all data and before the holdout) are
  computed there too, so popularity, reach and cold items are exact whatever was sampled.
- ``load_pairs`` streams the pairs (bounded batches) into int32 / float32 numpy arrays,
  keeping only a deterministic sample of customers when the pairs exceed what the node's
  ``memory_limit`` allows for training (``sample_filter``: a multiplicative hash of the code,
  the same on every engine and every run).
- ``chunk`` fetches one range of customer codes (pairs and ids) for scoring.

The scratch tables are named ``<pipeline>__<node>__scratch_*`` and dropped once the
node's outputs have been written (``drop``); a run that failed half-way leaves them for the
next run to replace.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # pragma: no cover
    import ibis.expr.types as ir
    import numpy as np
    import pyarrow as pa
    import scipy.sparse as sp

    from segloop.warehouses import Warehouse

# Sampling hash: ((code + 1) * KNUTH) mod PRIME < fraction * PRIME. Integer arithmetic
# only (code < 2^31, product < 2^63), so DuckDB, PostgreSQL and Spark agree.
KNUTH = 2654435761
PRIME = 1_000_003

PAIR_VALUE_COLUMNS = ("weight", "bought", "train_weight", "train_bought", "test_bought")
# With `tune: true`: the split the settings are chosen on (the window before the holdout).
TUNE_COLUMNS = ("tune_weight", "tune_bought", "tune_test_bought")


def scratch_prefix(table_name: str) -> str:
    """``<pipeline>__<node>__scratch``: one name per node, so a run replaces what a failed
    run left behind instead of piling up copies."""
    return f"{table_name}__scratch"


def sample_filter(code: ir.IntegerValue, fraction: float, seed: int) -> ir.BooleanValue:
    """True for about ``fraction`` of customer codes, the same ones on every engine."""
    import ibis

    threshold = int(round(fraction * PRIME))
    salt = (seed % PRIME) * 7919
    hashed = ((code.cast("int64") + ibis.literal(1, "int64")) * ibis.literal(KNUTH, "int64")
              + ibis.literal(salt, "int64")) % ibis.literal(PRIME, "int64")
    return hashed < ibis.literal(threshold, "int64")


@dataclass(frozen=True)
class Budget:
    """How much of the interactions the node holds at once, from its ``memory_limit``.

    The per-row costs are what numpy, scipy and implicit hold per pair or customer
    (measured, with margin: bench/README.md "recommend: bounded memory"). Half the budget
    goes to training (the pairs' arrays, their CSR matrices, the confidence copies ALS
    makes), a fifth to one scoring chunk, a twentieth to one fetched batch.
    """

    TRAIN_BYTES_PER_PAIR: ClassVar[int] = 120
    SCORE_BYTES_PER_PAIR: ClassVar[int] = 80
    SCORE_BYTES_PER_CUSTOMER: ClassVar[int] = 300  # ids, flags, one row of each matrix
    SCORE_BYTES_PER_RECOMMENDATION: ClassVar[int] = 200  # main and long rows, JSON, candidates
    FETCH_BYTES_PER_ROW: ClassVar[int] = 64
    MAX_BATCH_ROWS: ClassVar[int] = 50_000
    MAX_CHUNK_CUSTOMERS: ClassVar[int] = 100_000
    # Floors, whatever the limit says: below them a model learns nothing and a run of
    # one-row queries never ends (a few hundred KB, far below any real budget).
    MIN_TRAIN_PAIRS: ClassVar[int] = 1_000
    MIN_CHUNK_CUSTOMERS: ClassVar[int] = 100
    MIN_BATCH_ROWS: ClassVar[int] = 100

    train_pairs: int
    fraction: float  # of customers trained on (1.0: all)
    chunk_customers: int
    batch_rows: int

    @property
    def sampled(self) -> bool:
        return self.fraction < 1.0

    @classmethod
    def of(cls, limit: int, top_n: int, n_customers: int, n_pairs: int) -> Budget:
        from segloop.memory import rows_within

        train_pairs = max(cls.MIN_TRAIN_PAIRS, rows_within(limit, cls.TRAIN_BYTES_PER_PAIR, 0.5))
        per_customer = (cls.SCORE_BYTES_PER_CUSTOMER + top_n * cls.SCORE_BYTES_PER_RECOMMENDATION
                        + cls.SCORE_BYTES_PER_PAIR * n_pairs / max(n_customers, 1))
        return cls(
            train_pairs=train_pairs,
            fraction=min(1.0, train_pairs / max(n_pairs, 1)),
            chunk_customers=max(cls.MIN_CHUNK_CUSTOMERS,
                                min(cls.MAX_CHUNK_CUSTOMERS, rows_within(limit, per_customer, 0.2))),
            batch_rows=max(cls.MIN_BATCH_ROWS, min(cls.MAX_BATCH_ROWS, rows_within(limit, cls.FETCH_BYTES_PER_ROW, 0.05))),
        )


@dataclass
class ItemStats:
    """Per item code: its id, customers and total weight (all data, and before the holdout)."""

    ids: np.ndarray  # object array of item id strings, by code
    customers: np.ndarray
    total: np.ndarray
    train_customers: np.ndarray
    train_total: np.ndarray

    @property
    def n(self) -> int:
        return len(self.ids)


@dataclass
class Pairs:
    """Pairs held in Python as compact arrays (int32 codes, float32 weights, int8 flags)."""

    users: np.ndarray  # int32 customer codes (global)
    items: np.ndarray  # int32 item codes
    values: dict[str, np.ndarray]

    @property
    def n(self) -> int:
        return len(self.users)

    def matrix(self, name: str, rows: np.ndarray, n_rows: int, n_items: int) -> sp.csr_matrix:
        """CSR matrix of one value column, rows given by ``rows`` (zeros left out)."""
        import scipy.sparse as sp

        values = self.values[name]
        keep = values > 0
        return sp.csr_matrix((values[keep].astype("float32"), (rows[keep], self.items[keep])),
                             shape=(n_rows, n_items))


class TrainingData:
    """The pairs held for training as matrices: every customer's row, or the sample's rows."""

    def __init__(self, pairs: Pairs, rows: np.ndarray, n_rows: int, n_customers: int, n_items: int):
        self.pairs, self.rows, self.n_rows = pairs, rows, n_rows
        self.n_customers, self.n_items = n_customers, n_items

    @classmethod
    def of(cls, pairs: Pairs, budget: Budget, n_customers: int, n_items: int) -> TrainingData:
        import numpy as np

        if not budget.sampled:  # row = customer code: the matrix of every customer, as before
            return cls(pairs, pairs.users, n_customers, n_customers, n_items)
        codes, rows = np.unique(pairs.users, return_inverse=True)
        return cls(pairs, rows.astype(np.int32), len(codes), n_customers, n_items)

    def matrix(self, name: str) -> sp.csr_matrix:
        return self.pairs.matrix(name, self.rows, self.n_rows, self.n_items)


class ScratchTables:
    """The run's coded customers, items and pairs, written once into the warehouse."""

    def __init__(self, warehouse: Warehouse, prefix: str, cid: str):
        self.warehouse, self.prefix, self.cid = warehouse, prefix, cid
        self.names = {part: f"{prefix}_{part}" for part in ("customers", "items", "pairs", "long")}

    @classmethod
    def build(cls, warehouse: Warehouse, prefix: str, cid: str, customers: ir.Table, pairs: ir.Table
              ) -> ScratchTables:
        """Write the coded tables: ``customers`` is every customer id once (with or without
        weighted history); ``pairs`` is one row per (customer, ``_item``) with the weights."""
        import ibis

        self = cls(warehouse, prefix, cid)
        customers = customers.mutate(_u=ibis.row_number().over(order_by=customers[cid]).cast("int32"))
        warehouse.replace_table(self.names["customers"], customers, count=False)
        positive = ibis.literal(1), ibis.literal(0)
        items = pairs.group_by(pairs._item).aggregate(
            customers=pairs.count(), total=pairs.weight.sum(),
            train_customers=ibis.ifelse(pairs.train_weight > 0, *positive).sum(),
            train_total=pairs.train_weight.sum(),
        )
        items = items.mutate(_i=ibis.row_number().over(order_by=items._item).cast("int32"))
        warehouse.replace_table(self.names["items"], items, count=False)
        coded_customers = warehouse.table(self.names["customers"])
        coded_items = warehouse.table(self.names["items"]).select("_item", "_i")
        joined = pairs.join(coded_customers, cid).join(coded_items, "_item")
        values = [c for c in PAIR_VALUE_COLUMNS + TUNE_COLUMNS if c in pairs.columns]
        coded = joined.select(
            joined._u, joined._i, *(joined[c] for c in values)
        ).order_by(["_u", "_i"])  # in code order: a range of customers is a range of rows
        warehouse.replace_table(self.names["pairs"], coded, count=False)
        return self

    def table(self, part: str) -> ir.Table:
        return self.warehouse.table(self.names[part])

    def counts(self) -> tuple[int, int]:
        """(customers, pairs)."""
        return (int(self.warehouse.scalar(self.table("customers").count())),
                int(self.warehouse.scalar(self.table("pairs").count())))

    def item_stats(self) -> ItemStats:
        """The catalogue in code order (a catalogue, not customers: small enough to hold)."""
        import numpy as np

        t = self.table("items")
        arrow = self.warehouse.to_arrow(t.order_by("_i"))

        def col(name: str, dtype: str) -> np.ndarray:
            return np.asarray(arrow[name].to_numpy(zero_copy_only=False), dtype=dtype)

        return ItemStats(np.asarray(arrow["_item"].to_pylist(), dtype=object),
                         col("customers", "int64"), col("total", "float64"),
                         col("train_customers", "int64"), col("train_total", "float64"))

    def load_pairs(self, batch_rows: int, fraction: float, seed: int, columns: tuple[str, ...]) -> Pairs:
        """Stream the pairs (all, or those of a sample of customers) into compact arrays."""
        t = self.table("pairs")
        if fraction < 1.0:
            t = t.filter(sample_filter(t._u, fraction, seed))
        return _load(self.warehouse, t.select("_u", "_i", *columns), batch_rows, columns)

    def customers_with_history(self) -> int:
        pairs = self.table("pairs")
        return int(self.warehouse.scalar(pairs._u.nunique()))

    def customer_ids(self, lo: int, hi: int, batch_rows: int) -> pa.Array:
        """Customer ids of codes ``lo..hi-1``, in code order."""
        import pyarrow as pa

        customers = self.table("customers")
        customers = customers.filter((customers._u >= lo) & (customers._u < hi)).order_by("_u").select(self.cid)
        ids = [b.column(0) for b in self.warehouse.to_batches(customers, batch_rows=batch_rows)]
        return pa.chunked_array(ids, type=self.customer_id_type()).combine_chunks()

    def chunk(self, lo: int, hi: int, batch_rows: int, columns: tuple[str, ...]) -> tuple[pa.Array, Pairs]:
        """Customer ids of codes ``lo..hi-1`` (in code order) and their pairs."""
        ids = self.customer_ids(lo, hi, batch_rows)
        pairs = self.table("pairs")
        pairs = pairs.filter((pairs._u >= lo) & (pairs._u < hi)).select("_u", "_i", *columns)
        return ids, _load(self.warehouse, pairs, batch_rows, columns)

    def drop(self, parts: tuple[str, ...] = ("customers", "items", "pairs", "long")) -> None:
        for part in parts:
            self.warehouse.drop_table(self.names[part])

    def customer_id_type(self) -> pa.DataType:
        return self.table("customers").schema().to_pyarrow().field(self.cid).type


def _load(warehouse: Warehouse, t: ir.Table, batch_rows: int, columns: tuple[str, ...]) -> Pairs:
    """Stream ``(_u, _i, *columns)`` into compact arrays, one bounded batch at a time."""
    import numpy as np

    users, items = [], []
    values: dict[str, list[Any]] = {c: [] for c in columns}
    for batch in warehouse.to_batches(t, batch_rows=batch_rows):
        users.append(_numpy(batch.column(0), "int32"))
        items.append(_numpy(batch.column(1), "int32"))
        for j, name in enumerate(columns):
            values[name].append(_numpy(batch.column(2 + j), "float32"))

    def cat(parts: list[Any], dtype: str) -> np.ndarray:
        out = np.concatenate(parts) if parts else np.empty(0, dtype=dtype)
        parts.clear()
        return np.asarray(out, dtype=dtype)

    return Pairs(cat(users, "int32"), cat(items, "int32"), {c: cat(values[c], "float32") for c in columns})


def _numpy(column: pa.Array, dtype: str) -> np.ndarray:
    import numpy as np

    return np.asarray(column.fill_null(0).to_numpy(zero_copy_only=False), dtype=dtype)

