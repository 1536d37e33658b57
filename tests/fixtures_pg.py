"""A throwaway PostgreSQL cluster for the `postgres` tests: initdb + pg_ctl in a temp folder.

The binaries are found on PATH or under /usr/lib/postgresql/*/bin. As root, the server must
run as the `postgres` system user (`runuser -u postgres`), with a data folder it owns. The
server listens on 127.0.0.1 at a free port with trust authentication and fsync off (the data
is thrown away). Without PostgreSQL binaries the tests are skipped, unless
SEGLOOP_REQUIRE_PG=1 (CI sets it), which turns the skip into a failure saying what is missing.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from segloop.warehouses import PostgresConfig, Warehouse
from tests.requirements import missing

REQUIRE_ENV = "SEGLOOP_REQUIRE_PG"
SUPERUSER = "postgres"


def _unavailable(reason: str) -> None:
    """Skip the test, or fail it when CI demands PostgreSQL (SEGLOOP_REQUIRE_PG=1)."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"PostgreSQL tests cannot run: {reason} ({REQUIRE_ENV}=1 makes this an error)")
    missing(f"PostgreSQL not available: {reason}; set {REQUIRE_ENV}=1 (or CI=true) to make this an error")


def find_pg_bin() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres (PATH first, then Debian's layout)."""
    candidates: list[Path] = []
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                      key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0, reverse=True)
    candidates.extend(versions)
    for folder in candidates:
        if all((folder / tool).exists() for tool in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PgCluster:
    """A running throwaway cluster; ``new_database()`` gives each test its own database."""

    bin_dir: Path
    data_dir: Path
    port: int
    run_as: list[str]
    host: str = "127.0.0.1"
    user: str = SUPERUSER

    _counter = itertools.count(1)

    def run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.run_as, str(self.bin_dir / tool), *args],
                              capture_output=True, text=True, timeout=120, check=False)

    def connect(self, database: str = "postgres"):  # type: ignore[no-untyped-def]
        import psycopg

        return psycopg.connect(host=self.host, port=self.port, user=self.user, dbname=database,
                               autocommit=True)

    def new_database(self, prefix: str = "segloop") -> str:
        name = f"{prefix}_{os.getpid()}_{next(self._counter)}"
        with self.connect() as con:
            con.execute(f'CREATE DATABASE "{name}"')
        return name

    def config(self, database: str, **settings: object) -> PostgresConfig:
        return PostgresConfig(host=self.host, port=self.port, user=self.user, database=database,
                              **settings)  # type: ignore[arg-type]

    def workspace_yml(self, database: str, name: str = "pg") -> str:
        return (f"warehouses:\n  {name}:\n    type: postgres\n    host: {self.host}\n"
                f"    port: {self.port}\n    user: {self.user}\n    database: {database}\n")


def _start_cluster() -> Iterator[PgCluster]:
    bin_dir = find_pg_bin()
    if bin_dir is None:
        _unavailable("initdb/pg_ctl/postgres not found on PATH or in /usr/lib/postgresql/*/bin; "
                     "install PostgreSQL (apt-get install postgresql)")
        return
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("the psycopg driver is missing; pip install -e '.[dev]'")
        return
    run_as: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="segloop-pg-"))
    if os.geteuid() == 0:  # postgres refuses to run as root
        runuser = shutil.which("runuser")
        if runuser is None:
            _unavailable("running as root but `runuser` is missing to start postgres as another user")
        try:
            shutil.chown(base, user=SUPERUSER)
        except (LookupError, PermissionError) as exc:
            _unavailable(f"running as root and the `{SUPERUSER}` system user is unusable: {exc}")
        run_as = [str(runuser), "-u", SUPERUSER, "--"]
    data, log = base / "data", base / "server.log"
    cluster = PgCluster(bin_dir=bin_dir, data_dir=data, port=_free_port(), run_as=run_as)
    init = cluster.run("initdb", "-D", str(data), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8",
                       "--no-sync", "--locale=C")
    if init.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        _unavailable(f"initdb failed: {init.stderr.strip() or init.stdout.strip()}")
    options = (f"-p {cluster.port} -c listen_addresses=127.0.0.1 -k {base} -c fsync=off "
               "-c synchronous_commit=off -c full_page_writes=off -c max_connections=50")
    start = cluster.run("pg_ctl", "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start")
    if start.returncode != 0:
        server_log = log.read_text() if log.exists() else ""
        shutil.rmtree(base, ignore_errors=True)
        _unavailable(f"pg_ctl start failed: {start.stderr.strip()} {server_log[-500:]}")
    try:
        yield cluster
    finally:
        cluster.run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One PostgreSQL server for the whole test session."""
    yield from _start_cluster()


@pytest.fixture
def pg_database(pg_cluster: PgCluster) -> Iterator[str]:
    """A fresh, empty database for one test (dropped afterwards)."""
    name = pg_cluster.new_database()
    yield name
    with contextlib.suppress(Exception), pg_cluster.connect() as con:
        con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_warehouse(pg_cluster: PgCluster, pg_database: str) -> Iterator[Warehouse]:
    """A segloop Warehouse on a fresh PostgreSQL database."""
    wh = Warehouse.connect(pg_cluster.config(pg_database), Path("."), "pg")
    yield wh
    wh.close()


@pytest.fixture(params=["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)])
def duckdb_or_pg_workspace(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A workspace (with an empty `pipelines/`) whose `default` warehouse is DuckDB or a fresh
    database on the throwaway PostgreSQL cluster: each test using it runs on both. A test
    module takes it as ``workspace = duckdb_or_pg_workspace``."""
    root = tmp_path / "ws"
    (root / "pipelines").mkdir(parents=True)
    if request.param == "duckdb":
        text = "warehouses:\n  default:\n    type: duckdb\n    path: .segloop/warehouse.duckdb\n"
    else:
        cluster: PgCluster = request.getfixturevalue("pg_cluster")
        text = cluster.workspace_yml(request.getfixturevalue("pg_database"), "default")
    (root / "segloop.yml").write_text(text)
    yield root
