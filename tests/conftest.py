"""Shared fixtures: real DuckDB files and workspaces in temporary folders."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from segloop.warehouses import Warehouse
from tests.requirements import ci_enforced, is_missing_requirement

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit's advice; keeps tests on 2 cores sane


# -- CI=true: a missing optional dependency or tool fails instead of skipping ---------------


def _enforce(report: pytest.TestReport | pytest.CollectReport) -> None:
    if not (report.skipped and ci_enforced()):
        return
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    if is_missing_requirement(reason):
        report.outcome = "failed"
        report.longrepr = (f"{reason.removeprefix('Skipped: ')}\nCI=true: a missing test dependency "
                           "or tool is a failure here, not a skip (tests/requirements.py)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    outcome = yield
    _enforce(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    outcome = yield
    _enforce(outcome.get_result())


@pytest.fixture
def warehouse(tmp_path: Path) -> Iterator[Warehouse]:
    wh = Warehouse.duckdb(tmp_path / "warehouse.duckdb")
    yield wh
    wh.close()


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    """Where a test leaves files for people to look at (screenshots, reports).

    Under the test's temp folder, so a read-only checkout runs the suite; set
    SEGLOOP_TEST_ARTIFACTS=DIR to collect them in one folder instead.
    """
    chosen = os.environ.get("SEGLOOP_TEST_ARTIFACTS")
    folder = Path(chosen) if chosen else tmp_path / "artifacts"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


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
