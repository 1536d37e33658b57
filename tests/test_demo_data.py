"""`segloop demo-data` streams into the warehouse one chunk of customers at a time.

Memory must not grow with the number of customers, so no write may carry more than one
chunk; and chunking must not change the data: the same seed gives the same rows whatever
the chunk size, distributed as the generator's always were.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

import pyarrow as pa
import pytest

from segloop.demo import GENERATION_BLOCK, WAREHOUSE_MEMORY, generate, write_demo_data
from segloop.memory import parse_size
from segloop.warehouses import Warehouse

TABLES = ("product_viewed", "product_added", "checkout_started", "order_completed", "order_refunded",
          "tracks", "identifies", "users")
# Events per customer from the generator before it streamed (commit ad28749, one vectorized
# draw of all customers, 20,000 customers): the streamed demo must be distributed alike.
RATES_BEFORE = {"product_viewed": 181.3, "product_added": 36.4, "checkout_started": 16.4,
                "order_completed": 10.5, "order_refunded": 0.41, "tracks": 245.1}
COMMON = ["id", "anonymous_id", "user_id", "received_at", "sent_at", "timestamp", "original_timestamp",
          "uuid_ts", "context_library_name", "context_library_version", "context_user_agent",
          "context_page_path", "event", "event_text"]


class RecordingWarehouse:
    """A real DuckDB warehouse that notes the rows of every write call."""

    def __init__(self, wh: Warehouse):
        self.wh = wh
        self.calls: dict[str, list[int]] = defaultdict(list)

    def create_table(self, name: str, obj: pa.Table, schema: str | None = None) -> Any:
        self.calls[f"{schema}.{name}"].append(obj.num_rows)
        return self.wh.create_table(name, obj, schema=schema)

    def insert(self, name: str, obj: pa.Table, schema: str | None = None) -> None:
        self.calls[f"{schema}.{name}"].append(obj.num_rows)
        self.wh.insert(name, obj, schema=schema)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wh, name)


def test_demo_data_writes_one_chunk_of_customers_at_a_time(tmp_path) -> None:
    customers, chunk = 2 * GENERATION_BLOCK + 300, GENERATION_BLOCK
    with Warehouse.duckdb(tmp_path / "w.duckdb") as wh:
        recording = RecordingWarehouse(wh)
        stats = write_demo_data(recording, customers=customers, days=120, chunk_customers=chunk)  # type: ignore[arg-type]
        written = {name: wh.count_rows(name, "demo_shop") for name in TABLES}
        truth = wh.count_rows("customers", "demo_shop_truth")
        # DuckDB keeps the blocks it wrote cached up to its memory_limit: lowered for the demo.
        duckdb_limit = wh.raw.execute("SELECT current_setting('memory_limit')").fetchone()[0]
    assert parse_size(duckdb_limit.replace(" ", "")) <= WAREHOUSE_MEMORY
    chunks = 3
    assert truth == customers and written["users"] == customers and stats.tables == written
    for name, rows in recording.calls.items():
        # Every table is written in as many parts as there are chunks, none holding the
        # whole table: the generator holds one chunk, not all customers.
        assert len(rows) == chunks, (name, rows)
        total = sum(rows)
        assert max(rows) <= total * 0.5, (name, rows)
    for name in ("demo_shop.users", "demo_shop.identifies", "demo_shop_truth.customers"):
        assert recording.calls[name] == [chunk, chunk, 300]
    assert sum(recording.calls["demo_shop.tracks"]) == stats.events == written["tracks"]


def test_the_same_seed_gives_the_same_rows_whatever_the_chunk_size() -> None:
    customers = GENERATION_BLOCK + 500
    small, small_truth = generate(customers, days=90, seed=3, chunk_customers=1)
    whole, whole_truth = generate(customers, days=90, seed=3, chunk_customers=10 * customers)
    other, _ = generate(customers, days=90, seed=4, chunk_customers=1)
    assert small_truth.equals(whole_truth)
    for name in TABLES:
        key = "id"
        assert small[name].sort_by(key).equals(whole[name].sort_by(key)), name
    assert not small["tracks"].sort_by("id").equals(other["tracks"].sort_by("id"))
    # Within a chunk rows are in time order, as Segment loads them.
    ts = whole["tracks"]["timestamp"].to_numpy()
    assert (ts[1:] >= ts[:-1]).all()


def test_big_tables_are_appended_in_whole_row_groups_with_the_same_rows_in_order(tmp_path) -> None:
    """DuckDB stores whole row groups of an append in parallel and straight into the file;
    a partial one is merged and compressed again later. So each big table's rows past its
    last whole row group wait for the next chunk's, and nothing is lost or reordered."""
    from segloop.warehouses.duckdb import SCAN_BATCH_ROWS

    customers, chunk = 3 * GENERATION_BLOCK + 400, GENERATION_BLOCK
    with Warehouse.duckdb(tmp_path / "w.duckdb") as wh:
        recording = RecordingWarehouse(wh)
        stats = write_demo_data(recording, customers=customers, chunk_customers=chunk,  # type: ignore[arg-type]
                                split_ids=True)
        written = {name: wh.raw.execute(f"SELECT id FROM demo_shop.{name}").fetch_arrow_table()["id"]
                   for name in ("product_viewed", "tracks", "users")}
    tables, _ = generate(customers, chunk_customers=chunk, split_ids=True)
    for name, ids in written.items():
        assert ids.to_pylist() == tables[name]["id"].to_pylist(), name
    views = recording.calls["demo_shop.product_viewed"]
    assert tables["product_viewed"].num_rows / 4 > SCAN_BATCH_ROWS  # a chunk's views: over a row group
    # One write per chunk, each of whole row groups, and the rest (less than one) at the end.
    assert all(rows % SCAN_BATCH_ROWS == 0 for rows in views[:-1]) and len(views) == 5, views
    assert 0 < views[-1] < SCAN_BATCH_ROWS, views
    assert len(recording.calls["demo_shop.users"]) == 4  # small tables: as they come, one write a chunk
    assert stats.tables["product_viewed"] == sum(views) == tables["product_viewed"].num_rows


@pytest.mark.slow
def test_the_streamed_demo_has_the_tables_columns_and_rates_of_the_generator_before() -> None:
    customers = 4000
    tables, truth = generate(customers)
    assert list(tables) == list(TABLES)
    product = ["product_id", "sku", "name", "category", "price"]
    columns = {
        "product_viewed": COMMON + product,
        "product_added": COMMON + product + ["quantity"],
        "checkout_started": COMMON + ["order_id", "revenue", "currency"],
        "order_completed": COMMON + ["order_id", "revenue", "total", "currency", "products"],
        "order_refunded": COMMON + ["order_id", "revenue", "currency"],
        "tracks": COMMON,
    }
    for name, names in columns.items():
        assert tables[name].column_names == names, name
    for name, rate in RATES_BEFORE.items():
        # ~2-3% is the noise of these counts at 4,000 customers (customers differ a lot).
        tolerance = 0.15 if name == "order_refunded" else 0.07
        assert abs(tables[name].num_rows / customers / rate - 1) < tolerance, (name, tables[name].num_rows)
    personas = truth.group_by("persona").aggregate([("user_id", "count")]).to_pydict()
    shares = dict(zip(personas["persona"], personas["user_id_count"], strict=True))
    for persona, share in {"vip": 0.10, "regular": 0.30, "bargain": 0.35, "lapsed": 0.25}.items():
        assert abs(shares[persona] / customers - share) < 0.03, shares
    # Every id is unique in its table; anonymous visitors (~15%) browse without a user_id.
    for name in TABLES[:6]:
        assert len(set(tables[name]["id"].to_pylist())) == tables[name].num_rows, name
    anonymous = {a for a, u in zip(tables["tracks"]["anonymous_id"].to_pylist(),
                                   tables["tracks"]["user_id"].to_pylist(), strict=True) if u is None}
    assert len(anonymous) == pytest.approx(customers * 0.15 / 0.85, rel=0.01)


@pytest.mark.postgres
def test_demo_data_streams_into_postgres_with_copy_chunk_by_chunk(pg_warehouse: Warehouse) -> None:
    customers = GENERATION_BLOCK + 200
    recording = RecordingWarehouse(pg_warehouse)
    stats = write_demo_data(recording, customers=customers, days=60, chunk_customers=1)  # type: ignore[arg-type]
    tables, truth = generate(customers, days=60)
    assert recording.calls["demo_shop.users"] == [GENERATION_BLOCK, 200]
    for name in TABLES:
        assert pg_warehouse.count_rows(name, "demo_shop") == tables[name].num_rows == stats.tables[name], name
    assert pg_warehouse.count_rows("customers", "demo_shop_truth") == truth.num_rows
    # The same rows as generated: compare one table's content through the warehouse.
    columns = ["id", "order_id", "revenue", "products"]
    written = pg_warehouse.table("order_completed", "demo_shop").select(columns).to_pyarrow()
    assert sorted(written.to_pylist(), key=str) == sorted(tables["order_completed"].select(columns).to_pylist(), key=str)


class FailingWarehouse(RecordingWarehouse):
    """Fails the n-th insert, as a full disk or a lost connection would."""

    def __init__(self, wh: Warehouse, fail_at: int):
        super().__init__(wh)
        self.inserts, self.fail_at = 0, fail_at

    def insert(self, name: str, obj: pa.Table, schema: str | None = None) -> None:
        self.inserts += 1
        if self.inserts == self.fail_at:
            raise OSError("No space left on device")
        super().insert(name, obj, schema)


def generator_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "segloop-demo-generator"]


def test_a_failed_write_stops_the_generator_and_says_why(tmp_path) -> None:
    with Warehouse.duckdb(tmp_path / "w.duckdb") as wh:
        failing = FailingWarehouse(wh, fail_at=3)
        with pytest.raises(OSError, match="No space left"):
            write_demo_data(failing, customers=5 * GENERATION_BLOCK, days=60,  # type: ignore[arg-type]
                            chunk_customers=GENERATION_BLOCK)
    assert not generator_threads()


def test_a_failure_while_generating_reaches_the_caller(tmp_path, monkeypatch) -> None:
    import segloop.demo_tables as demo_tables

    real = demo_tables.chunk_tables
    made: list[int] = []

    def chunk_tables(blocks: Any, *args: Any) -> Any:
        made.append(len(blocks))
        if len(made) == 2:
            raise MemoryError("the second chunk does not fit")
        return real(blocks, *args)

    monkeypatch.setattr(demo_tables, "chunk_tables", chunk_tables)
    with Warehouse.duckdb(tmp_path / "w.duckdb") as wh:
        with pytest.raises(MemoryError, match="second chunk"):
            write_demo_data(wh, customers=3 * GENERATION_BLOCK, days=60, chunk_customers=GENERATION_BLOCK)
        # The first chunk was written before the failure came through.
        assert wh.count_rows("users", "demo_shop") == GENERATION_BLOCK
    assert not generator_threads() and len(made) == 2


def test_the_next_chunk_is_made_while_the_warehouse_writes_and_no_further(tmp_path, monkeypatch) -> None:
    """Generating and writing overlap (two cores: up to twice the pace). A chunk's tables
    are drawn together, so while one chunk is written the whole next one must be made (a
    producer only a table or two ahead left the warehouse idle while each chunk was drawn);
    and not the one after, so that at most two chunks are held, whatever the customers."""
    import time

    import segloop.demo_tables as demo_tables
    from segloop.demo_tables import TRUTH

    real = demo_tables.chunk_tables
    made = threading.Semaphore(0)  # a chunk's tables are all made
    truths_written: list[int] = []  # the truth is a chunk's last table
    too_early: list[tuple[int, int]] = []  # (chunk started, chunks written by then)
    started = [0]

    def chunk_tables(*args: Any) -> Any:
        started[0] += 1
        if started[0] > len(truths_written) + 2:  # chunk j starts before chunk j-2 is written
            too_early.append((started[0], len(truths_written)))
        for name, table in real(*args):
            if name == TRUTH:
                made.release()
            yield name, table

    class SlowWarehouse(RecordingWarehouse):
        overlapped: bool | None = None

        def create_table(self, name: str, obj: pa.Table, schema: str | None = None) -> Any:
            if self.overlapped is None:  # the first table: is the next chunk made meanwhile?
                self.overlapped = made.acquire(timeout=20) and made.acquire(timeout=20)  # this one, the next
            written = super().create_table(name, obj, schema)
            if name == "customers":
                truths_written.append(obj.num_rows)
            return written

        def insert(self, name: str, obj: pa.Table, schema: str | None = None) -> None:
            time.sleep(0.05)  # a slow warehouse: a producer without a bound would run ahead
            super().insert(name, obj, schema)
            if name == "customers":
                truths_written.append(obj.num_rows)

    monkeypatch.setattr(demo_tables, "chunk_tables", chunk_tables)
    with Warehouse.duckdb(tmp_path / "w.duckdb") as wh:
        slow = SlowWarehouse(wh)
        stats = write_demo_data(slow, customers=5 * GENERATION_BLOCK, days=60,  # type: ignore[arg-type]
                                chunk_customers=GENERATION_BLOCK)
        assert stats.tables["users"] == 5 * GENERATION_BLOCK
    assert slow.overlapped
    assert started[0] == 5 and not too_early, too_early
