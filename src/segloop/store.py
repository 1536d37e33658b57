"""Run history in SQLite (`.segloop/state.db`), with numbered migrations.

Tables: ``runs`` (one row per pipeline run) and ``node_runs`` (status, rows, seconds, error
and metrics JSON per node). Secrets are never written here: configs are not stored, only
the pipeline name and file path, and operators keep secrets out of their metrics.

A run killed with ``kill -9`` (or cut off with its machine) cannot say so itself, so each
run records its owner (host, process id and the process's start time). A reader that finds
a ``running`` run whose owner process is gone marks it ``interrupted``; so does the next
run of the pipeline, which holds the pipeline's lock and so knows no other run is going.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from segloop.errors import SegloopError

log = logging.getLogger("segloop")

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
    (
        3,
        """
        ALTER TABLE runs ADD COLUMN owner TEXT;
        CREATE INDEX runs_status ON runs (status);
        """,
    ),
]
RUNNING, INTERRUPTED = "running", "interrupted"


def _process_start(pid: int) -> str | None:
    """When a process started (clock ticks since boot, from /proc), to tell a reused pid
    from the process that recorded it; None where /proc is not available."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # the command name may hold spaces and ')'
    return fields[19] if len(fields) > 19 else None


def _process_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2:][:1] or None


def current_owner() -> str:
    """This process as a run's owner: ``host:pid:start``."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_process_start(pid) or ''}"


def owner_gone(owner: str | None) -> bool:
    """True only when the owner certainly ended: same host, and no such process (or a
    zombie, or another process that reuses its pid). Unknown owners count as alive."""
    if not owner or os.name != "posix":  # os.kill(pid, 0) would terminate it on Windows
        return False
    parts = owner.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return False
    host, pid_text, started = parts
    if host != socket.gethostname():
        return False  # another machine's process: the next run of the pipeline decides
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # exists, another user's
    if _process_state(pid) == "Z":
        return True
    now_started = _process_start(pid)
    return bool(started and now_started and now_started != started)


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
                "INSERT INTO runs (id, pipeline, file, warehouse, status, dry_run, started_at, trigger, owner)"
                " VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?)",
                (run_id, pipeline, file, warehouse, int(dry_run), _now(), trigger, current_owner()),
            )
        return run_id

    def record_skipped(self, pipeline: str, file: str | None, warehouse: str | None, dry_run: bool,
                       trigger: str, run_id: str, reason: str) -> None:
        """A trigger that did not run (the pipeline was busy), in one statement: never `running`."""
        now = _now()
        with self._db:
            self._db.execute(
                "INSERT INTO runs (id, pipeline, file, warehouse, status, dry_run, started_at, finished_at,"
                " error, trigger) VALUES (?, ?, ?, ?, 'skipped', ?, ?, ?, ?, ?)",
                (run_id, pipeline, file, warehouse, int(dry_run), now, now, reason, trigger),
            )

    def interrupt_runs(self, pipeline: str | None = None, except_run: str | None = None) -> list[str]:
        """Mark ``running`` runs whose process is gone as ``interrupted``; returns their ids.

        With ``pipeline``, every other ``running`` run of it is marked, whatever its owner:
        the caller holds the pipeline's lock, so none of them can still be going.
        """
        rows = self._db.execute("SELECT id, pipeline, owner FROM runs WHERE status = ?", (RUNNING,)).fetchall()
        gone = [row for row in rows if row["id"] != except_run
                and ((pipeline is not None and row["pipeline"] == pipeline) or owner_gone(row["owner"]))]
        if not gone:
            return []
        with self._db:
            for row in gone:
                owner = row["owner"] or ""
                pid = owner.rsplit(":", 2)[1] if owner.count(":") >= 2 else "?"
                self._db.execute(
                    "UPDATE runs SET status = ?, error = ? WHERE id = ? AND status = ?",
                    (INTERRUPTED, f"interrupted: the process running it (pid {pid}) ended before the run "
                     "finished (killed, or its machine stopped); nodes without a result did not finish. "
                     "Run the pipeline again (a Segment node resumes from its last checkpoint).",
                     row["id"], RUNNING),
                )
        return [row["id"] for row in gone]

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
                    record.error,
                    json.dumps(record.metrics, default=str),
                    _now(),
                ),
            )

    def finish_run(self, run_id: str, status: str, error: str | None = None) -> None:
        with self._db:
            self._db.execute(
                "UPDATE runs SET status = ?, error = ?, finished_at = ? WHERE id = ?",
                (status, error, _now(), run_id),
            )

    # -- reading -------------------------------------------------------------------------

    def _interrupt_dead_runs(self) -> None:
        """Readers mark runs whose process is gone; a history they cannot write is still read."""
        try:
            self.interrupt_runs()
        except sqlite3.OperationalError as exc:  # read-only file, or locked for 30 s
            log.warning("could not mark interrupted runs in %s: %s", self.path, exc)

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
        self._interrupt_dead_runs()
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
        self._interrupt_dead_runs()
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
