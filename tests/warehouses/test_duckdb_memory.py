"""DuckDB's own memory: a bounded default, and spilling to the workspace instead of failing.

DuckDB runs inside segloop's process, so its ``memory_limit`` comes out of the same RAM as
the nodes' Python side; a query larger than it must spill to ``temp_directory`` (in the
workspace's ``.segloop/``) and finish, not fail with an out-of-memory error.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from segloop.config import WorkspaceFiles
from segloop.errors import ConfigErrors
from segloop.memory import duckdb_memory_limit, parse_size
from segloop.warehouses import DuckDBConfig, Warehouse

ROWS = 1_500_000
# A GROUP BY with one group per row: its hash table holds every row (~80 MB here).
BIG_QUERY = ("SELECT count(*) AS groups, sum(length(top)) AS chars FROM "
             "(SELECT k, max(v) AS top, count(*) AS n FROM main.t GROUP BY k)")


def _fill(raw: duckdb.DuckDBPyConnection) -> None:
    raw.execute(f"CREATE OR REPLACE TABLE main.t AS SELECT i AS k, 'customer-' || i::VARCHAR || "
                f"'-xxxxxxxxxxxxxxxx' AS v FROM range({ROWS}) r(i)")


def _setting(wh: Warehouse, name: str) -> str:
    return str(wh.raw.execute(f"SELECT current_setting('{name}')").fetchone()[0])


@pytest.mark.slow
def test_a_query_larger_than_duckdbs_memory_limit_spills_to_the_workspace_and_finishes(tmp_path: Path) -> None:
    config = DuckDBConfig(memory_limit="40MB", threads=1)
    with Warehouse.connect(config, tmp_path) as wh:
        assert Path(_setting(wh, "temp_directory")) == tmp_path / ".segloop" / "duckdb_tmp"
        _fill(wh.raw)
        [row] = wh.rows(wh.sql(BIG_QUERY))
    chars = sum(len(f"customer-{i}-xxxxxxxxxxxxxxxx") for i in range(ROWS))
    assert row == {"groups": ROWS, "chars": chars}

    # The same query at the same limit without a place to spill runs out of memory: the
    # query above really was larger than the limit.
    raw = duckdb.connect(str(tmp_path / ".segloop" / "warehouse.duckdb"),
                         config={"memory_limit": "40MB", "threads": 1, "temp_directory": ""})
    try:
        with pytest.raises(duckdb.OutOfMemoryException):
            raw.execute(BIG_QUERY).fetchall()
    finally:
        raw.close()


def test_duckdb_gets_a_bounded_memory_limit_by_default(tmp_path: Path) -> None:
    # DuckDB's own default is 80% of the machine, leaving nothing for the nodes' Python side.
    gb = 1_000_000_000
    assert duckdb_memory_limit(total=24 * gb) == "3072MiB"
    assert duckdb_memory_limit(total=8 * gb) == "1536MiB"
    assert duckdb_memory_limit(total=1 * gb) == "512MiB"
    with Warehouse.connect(DuckDBConfig(), tmp_path) as wh:
        limit = parse_size(_setting(wh, "memory_limit").replace(" ", ""))
    assert limit <= parse_size(duckdb_memory_limit()) and limit <= 3 * 2**30


def test_memory_limit_and_temp_directory_are_settings_of_the_warehouse(tmp_path: Path) -> None:
    (tmp_path / "segloop.yml").write_text(
        "warehouses:\n  default:\n    type: duckdb\n    memory_limit: 256MiB\n    temp_directory: spill\n")
    workspace = WorkspaceFiles.load(tmp_path)
    with Warehouse.connect(workspace.config.warehouses["default"], workspace.root) as wh:
        assert _setting(wh, "memory_limit") == "256.0 MiB"
        assert Path(_setting(wh, "temp_directory")) == tmp_path / "spill"


def test_a_memory_limit_that_is_not_a_size_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "segloop.yml").write_text("warehouses:\n  default:\n    type: duckdb\n    memory_limit: lots\n")
    with pytest.raises(ConfigErrors, match="`lots` is not a size; write it like 512MB") as caught:
        WorkspaceFiles.load(tmp_path)
    assert "segloop.yml" in str(caught.value) and "memory_limit" in str(caught.value)
