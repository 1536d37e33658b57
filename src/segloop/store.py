"""Run history in SQLite (`.segloop/state.db`), with numbered migrations.

Tables: ``runs`` (one row per pipeline run) and ``node_runs`` (status, rows, seconds, error
and metrics JSON per node). Secrets are never written here: configs are not stored, only
the pipeline name and file path, and operators keep secrets out of their metrics.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from segloop.errors import SegloopError
from segloop.masking import mask_text

# Each migration runs once, in order; never edit a released one, append a new one.
MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            pipeline TEXT NOT NULL,
            file TEXT,
            warehouse TEXT,
            status TEXT NOT NULL,
            dry_run INTEGER NOT NULL DEFAULT 0,
            started_at TEXT NOT NULL,
            finished_at TEXT,
            error TEXT
        );
        CREATE INDEX runs_pipeline ON runs (pipeline, started_at);
        CREATE TABLE node_runs (
            run_id TEXT NOT NULL REFERENCES runs (id),
            node TEXT NOT NULL,
            type TEXT NOT NULL,
            status TEXT NOT NULL,
            rows INTEGER,
            seconds REAL,
            error TEXT,
            metrics TEXT NOT NULL DEFAULT '{}',
            started_at TEXT,
            PRIMARY KEY (run_id, node)
        );
        """,
    ),
    (
        2,
        "ALTER TABLE runs ADD COLUMN trigger TEXT NOT NULL DEFAULT 'cli'",
    ),
]


def _now() -> str:
    # Microseconds: runs started within the same second still sort (and `latest` is right).
    return datetime.now(UTC).isoformat(timespec="microseconds")


def new_run_id() -> str:
    """Sortable and readable: UTC time to the microsecond plus a random suffix.

    ``20261129T093612.123456-dce572``; any unique prefix (``20261129T0936``) names it.
    """
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%f") + "-" + secrets.token_hex(3)


def _statements(script: str) -> list[str]:
    """The statements of a migration, for executing them one by one inside a transaction."""
    statements: list[str] = []
    current = ""
    for line in script.strip().splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    if current.strip():
        statements.append(current.strip())
    return statements


@dataclass
class NodeRunRecord:
    node: str
    type: str
    status: str
    rows: int | None
    seconds: float | None
    error: str | None
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunRecord:
    id: str
    pipeline: str
    file: str | None
    warehouse: str | None
    status: str
    dry_run: bool
    started_at: str
    finished_at: str | None
    error: str | None
    trigger: str = "cli"
    nodes: list[NodeRunRecord] = field(default_factory=list)

    @property
    def seconds(self) -> float | None:
        if not self.finished_at:
            return None
        start = datetime.fromisoformat(self.started_at)
        return (datetime.fromisoformat(self.finished_at) - start).total_seconds()


class RunStore:
    """The run history of one workspace."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._set_wal(timeout=30)
        # With WAL, NORMAL syncs at checkpoints instead of at every commit: the history stays
        # consistent after a crash, and a power cut can lose only the last few writes.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self.migrate()

    def _set_wal(self, timeout: float) -> None:
        """``PRAGMA journal_mode=WAL``, waiting while another connection is setting up the file.

        Switching a new file to WAL answers "database is locked" at once when another
        process does the same (SQLite's busy timeout does not apply to it), so it is tried
        again for up to ``timeout`` seconds, as every other statement waits.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.005)

    def _version(self) -> int:
        try:
            row = self._db.execute("SELECT max(version) FROM schema_version").fetchone()
        except sqlite3.OperationalError:  # a new file: no schema_version table yet
            return 0
        return int(row[0] or 0)

    def migrate(self) -> int:
        """Apply pending migrations in one transaction; returns the schema version.

        Safe when several processes open a new state.db at once (the scheduler and a CLI
        run): the first takes the write lock (``BEGIN IMMEDIATE``), the others wait for
        it, then re-read the version inside their own transaction and find nothing to do.
        """
        db = self._db
        latest = MIGRATIONS[-1][0]
        if self._version() >= latest:  # the usual case: a read, no lock
            return latest
        db.commit()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            current = self._version()
            for version, sql in MIGRATIONS:
                if version > current:
                    for statement in _statements(sql):
                        db.execute(statement)
                    db.execute("INSERT INTO schema_version (version) VALUES (?)", (int(version),))
                    current = version
            db.commit()
        except BaseException:
            db.rollback()
            raise
        return current

    def close(self) -> None:
        self._db.close()

    # -- writing -------------------------------------------------------------------------

    def start_run(
        self,
        pipeline: str,
        file: str | None,
        warehouse: str | None,
        dry_run: bool = False,
        trigger: str = "cli",
        run_id: str | None = None,
    ) -> str:
        run_id = run_id or new_run_id()
        with self._db:
            self._db.execute(
                "INSERT INTO runs (id, pipeline, file, warehouse, status, dry_run, started_at, trigger)"
                " VALUES (?, ?, ?, ?, 'running', ?, ?, ?)",
                (run_id, pipeline, file, warehouse, int(dry_run), _now(), trigger),
            )
        return run_id

    def record_node(self, run_id: str, record: NodeRunRecord) -> None:
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO node_runs"
                " (run_id, node, type, status, rows, seconds, error, metrics, started_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    record.node,
                    record.type,
                    record.status,
                    record.rows,
                    record.seconds,
                    mask_text(record.error) if record.error else record.error,  # history keeps no credentials
                    mask_text(json.dumps(record.metrics, default=str)),
                    _now(),
                ),
            )

    def finish_run(self, run_id: str, status: str, error: str | None = None) -> None:
        with self._db:
            self._db.execute(
                "UPDATE runs SET status = ?, error = ?, finished_at = ? WHERE id = ?",
                (status, mask_text(error) if error else error, _now(), run_id),
            )

    # -- reading -------------------------------------------------------------------------

    def _run(self, row: sqlite3.Row) -> RunRecord:
        return RunRecord(
            id=row["id"],
            pipeline=row["pipeline"],
            file=row["file"],
            warehouse=row["warehouse"],
            status=row["status"],
            dry_run=bool(row["dry_run"]),
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            error=row["error"],
            trigger=row["trigger"],
        )

    def list_runs(self, pipeline: str | None = None, limit: int = 20) -> list[RunRecord]:
        query = "SELECT * FROM runs"
        args: tuple[Any, ...] = ()
        if pipeline:
            query += " WHERE pipeline = ?"
            args = (pipeline,)
        query += " ORDER BY started_at DESC, rowid DESC LIMIT ?"
        runs = [self._run(row) for row in self._db.execute(query, (*args, limit))]
        for run in runs:
            run.nodes = self.node_runs(run.id)
        return runs

    def node_runs(self, run_id: str) -> list[NodeRunRecord]:
        rows = self._db.execute(
            "SELECT * FROM node_runs WHERE run_id = ? ORDER BY rowid", (run_id,)
        ).fetchall()
        return [
            NodeRunRecord(
                node=row["node"],
                type=row["type"],
                status=row["status"],
                rows=row["rows"],
                seconds=row["seconds"],
                error=row["error"],
                metrics=json.loads(row["metrics"] or "{}"),
            )
            for row in rows
        ]

    def get_run(self, run_id: str) -> RunRecord:
        """A run by id, or by a unique prefix of its id, or `latest`."""
        if run_id == "latest":
            rows = self._db.execute("SELECT * FROM runs ORDER BY started_at DESC, rowid DESC LIMIT 1").fetchall()
        else:
            rows = self._db.execute(
                "SELECT * FROM runs WHERE id = ? OR id LIKE ? ORDER BY id LIMIT 2", (run_id, run_id + "%")
            ).fetchall()
            exact = [row for row in rows if row["id"] == run_id]
            rows = exact or rows
        if not rows:
            raise SegloopError(f"no run `{run_id}` in {self.path}; `segloop runs` lists them")
        if len(rows) > 1:
            raise SegloopError(f"run id prefix `{run_id}` is ambiguous; give more characters")
        run = self._run(rows[0])
        run.nodes = self.node_runs(run.id)
        return run

    def last_node_run(self, pipeline: str, node: str, status: str = "success") -> NodeRunRecord | None:
        row = self._db.execute(
            "SELECT n.* FROM node_runs n JOIN runs r ON r.id = n.run_id"
            " WHERE r.pipeline = ? AND n.node = ? AND n.status = ?"
            " ORDER BY r.started_at DESC, r.rowid DESC LIMIT 1",
            (pipeline, node, status),
        ).fetchone()
        if row is None:
            return None
        return NodeRunRecord(
            node=row["node"], type=row["type"], status=row["status"], rows=row["rows"],
            seconds=row["seconds"], error=row["error"], metrics=json.loads(row["metrics"] or "{}"),
        )
