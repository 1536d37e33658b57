"""`Warehouse.hash_sample`: a sample by key hash, chosen in the warehouse, alike on every engine.

Each engine's sample must be exactly the keys the Python rule (`sampling.in_sample`) picks,
so a node trains on the same customers whatever warehouse it runs on; only the sample's
rows cross into Python.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from segloop.config import WorkspaceFiles
from segloop.warehouses import Warehouse
from segloop.warehouses.sampling import in_sample, threshold_hex
from tests.warehouses.engines import Engine, engine_params

KEYS = [f"user-{i}" for i in range(3000)] + ["", "é✓ 'quoted'"]


def open_engine(request: pytest.FixtureRequest, engine: Engine, root: Path) -> Warehouse:
    block = request.getfixturevalue(engine.fixture)("sampling")
    root.mkdir(parents=True, exist_ok=True)
    (root / "segloop.yml").write_text("warehouses:\n  default:\n" + block)
    return WorkspaceFiles.load(root).open_warehouse()


def keys_of(wh: Warehouse, table: str, share: float, salt: str, column: str = "user_id") -> list[str]:
    sample = wh.hash_sample(wh.table(table), column, share, salt)
    return sorted(str(v) for v in wh.to_arrow(sample)[column].to_pylist())


@pytest.mark.parametrize("engine", engine_params())
def test_every_engine_samples_exactly_the_keys_of_the_python_rule(request: pytest.FixtureRequest,
                                                                   engine: Engine, tmp_path: Path) -> None:
    with open_engine(request, engine, tmp_path / engine.name) as wh:
        ids = pa.array(KEYS + [None])
        wh.create_table("people", pa.table({"user_id": ids, "n": pa.array(np.arange(len(ids)), pa.int64())}))
        wh.create_table("numbers", pa.table({"customer": pa.array(np.arange(5000), pa.int64())}))
        for share, salt in ((0.1, "7"), (0.5, "7"), (0.1, "other seed")):
            picked = keys_of(wh, "people", share, salt)
            assert picked == sorted(k for k in KEYS if in_sample(k, share, salt)), (share, salt)
            # About `share` of the keys, and only those crossed into Python.
            assert abs(len(picked) / len(KEYS) - share) < 0.04
        # Integer keys hash by their text, as the sync state keys them.
        numbers = keys_of(wh, "numbers", 0.2, "7", "customer")
        assert numbers == sorted(str(i) for i in range(5000) if in_sample(i, 0.2, "7"))
        # NULL keys are never in a sample; a share of 1 is the whole table, as it is.
        assert wh.to_arrow(wh.hash_sample(wh.table("people"), "user_id", 1.0, "7")).num_rows == len(ids)
        assert keys_of(wh, "people", 0.999, "7") == sorted(k for k in KEYS if in_sample(k, 0.999, "7"))
        assert keys_of(wh, "people", 0.0, "7") == []
        # The salt changes the sample; the same salt gives the same one, whatever the row order.
        assert keys_of(wh, "people", 0.1, "7") != keys_of(wh, "people", 0.1, "other seed")
        wh.create_table("shuffled", wh.to_arrow(wh.table("people")).take(
            pa.array(np.random.default_rng(1).permutation(len(ids)))))
        assert keys_of(wh, "shuffled", 0.1, "7") == keys_of(wh, "people", 0.1, "7")


def test_only_the_sample_is_pulled_into_python() -> None:
    wh = Warehouse.duckdb()
    wh.create_table("people", pa.table({"user_id": [f"u{i}" for i in range(20_000)]}))
    before = wh.rows_fetched
    rows = sum(batch.num_rows for batch in wh.to_batches(wh.hash_sample(wh.table("people"), "user_id", 0.05)))
    assert wh.rows_fetched - before == rows
    assert 800 < rows < 1200


def test_the_threshold_orders_as_the_share() -> None:
    assert threshold_hex(0.0) == "00000000" and threshold_hex(0.5) == "80000000"
    assert threshold_hex(0.999999999999) == "ffffffff"  # never wraps to 9 digits
    shares = [0.001, 0.01, 0.25, 0.3, 0.75, 0.99]
    assert [threshold_hex(s) for s in shares] == sorted(threshold_hex(s) for s in shares)
