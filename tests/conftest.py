"""Shared fixtures: real DuckDB files and workspaces in temporary folders."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from segloop.warehouses import Warehouse

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit's advice; keeps tests on 2 cores sane


@pytest.fixture
def warehouse(tmp_path: Path) -> Iterator[Warehouse]:
    wh = Warehouse.duckdb(tmp_path / "warehouse.duckdb")
    yield wh
    wh.close()


@pytest.fixture
def make_workspace(tmp_path: Path):
    """Write a workspace (segloop.yml + pipelines) and return its root."""

    def make(pipelines: dict[str, str], workspace_yml: str | None = None) -> Path:
        root = tmp_path / "ws"
        (root / "pipelines").mkdir(parents=True, exist_ok=True)
        (root / "segloop.yml").write_text(
            workspace_yml
            or "warehouses:\n  default:\n    type: duckdb\n    path: .segloop/warehouse.duckdb\n"
        )
        for name, text in pipelines.items():
            (root / "pipelines" / f"{name}.yml").write_text(text)
        return root

    return make


# -- PostgreSQL fixtures (owned by the warehouses work; see tests/fixtures_pg.py) ----------
from tests.fixtures_pg import pg_cluster, pg_database, pg_warehouse  # noqa: E402,F401
