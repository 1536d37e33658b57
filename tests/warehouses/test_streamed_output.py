"""A node's output streamed as Arrow batches is written one batch at a time, on DuckDB and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from segloop.warehouses import DuckDBConfig, Warehouse
from tests.fixtures_pg import PgCluster

SCHEMA = pa.schema([("user_id", pa.string()), ("score", pa.float32())])


def _reader(batches: int, rows: int = 1000) -> tuple[pa.RecordBatchReader, list[int]]:
    pulled: list[int] = []  # batches handed out so far, when each is pulled

    def gen() -> Iterator[pa.RecordBatch]:
        for b in range(batches):
            pulled.append(b)
            yield pa.record_batch(
                [pa.array([f"u{b}_{i}" for i in range(rows)]), pa.array([b + i / rows for i in range(rows)], pa.float32())],
                schema=SCHEMA,
            )

    return pa.RecordBatchReader.from_batches(SCHEMA, gen()), pulled


def _check(wh: Warehouse) -> None:
    reader, pulled = _reader(5)
    assert wh.replace_table("scores", reader) == 5000 and pulled == [0, 1, 2, 3, 4]
    table = wh.to_arrow(wh.table("scores"))
    assert table.num_rows == 5000 and sorted(table["user_id"].to_pylist())[:2] == ["u0_0", "u0_1"]
    assert table.schema.field("score").type in (pa.float32(), pa.float64())
    # Replacing it again replaces, never appends; an empty stream leaves an empty table with its columns.
    assert wh.replace_table("scores", _reader(2)[0]) == 2000 and wh.count_rows("scores") == 2000
    assert wh.replace_table("scores", _reader(0)[0]) == 0
    assert wh.count_rows("scores") == 0 and list(wh.table("scores").columns) == ["user_id", "score"]


def test_streamed_output_on_duckdb(tmp_path: Path) -> None:
    with Warehouse.connect(DuckDBConfig(path=str(tmp_path / "w.duckdb")), tmp_path, "default") as wh:
        _check(wh)


@pytest.mark.postgres
def test_streamed_output_on_postgres(pg_cluster: PgCluster, pg_database: str) -> None:
    with Warehouse.connect(pg_cluster.config(pg_database), Path("."), "pg") as wh:
        _check(wh)
