"""The collector's durable write path: dedupe by messageId, then group commit to the archive.

One commit thread takes every request queued since its last fsync, drops messageIds seen
within the dedupe window, appends the rest to the archive and fsyncs once for all of them
(group commit), then answers each request's future. Split from ``collector`` (the HTTP
side) because this is the part that decides what "200 = on disk" means.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sqlite3
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from segloop.segment.archive.files import ArchiveWriter

log = logging.getLogger("segloop.collector")

__all__ = ["CommitResult", "Committer", "DedupeStore"]


# -- dedupe -------------------------------------------------------------------------------


class DedupeStore:
    """messageIds seen in the last window, in SQLite under the data folder (survives restarts).

    Used only from the commit thread. Written after the archive is fsynced: a crash in
    between can let a retried message into the archive twice, which the loader dedupes on
    `id`; the opposite order could lose a message.
    """

    PRUNE_EVERY_S = 300.0
    _CHUNK = 500

    def __init__(self, path: Path, window_s: float):
        self.window_ms = int(window_s * 1000)
        self.db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS seen (message_id TEXT PRIMARY KEY, seen_ms INTEGER NOT NULL)"
        )
        self.db.execute("CREATE INDEX IF NOT EXISTS seen_by_time ON seen (seen_ms)")
        self._last_prune = 0.0

    def seen(self, ids: list[str], now_ms: int) -> set[str]:
        if self.window_ms <= 0:
            return set()
        cutoff = now_ms - self.window_ms
        found: set[str] = set()
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), self._CHUNK):
            chunk = unique[start : start + self._CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(
                f"SELECT message_id FROM seen WHERE seen_ms >= ? AND message_id IN ({marks})",
                [cutoff, *chunk],
            )
            found.update(row[0] for row in rows)
        return found

    def add(self, ids: list[str], now_ms: int) -> None:
        if self.window_ms <= 0 or not ids:
            return
        self.db.execute("BEGIN")
        self.db.executemany(
            "INSERT OR REPLACE INTO seen (message_id, seen_ms) VALUES (?, ?)",
            [(i, now_ms) for i in ids],
        )
        self.db.execute("COMMIT")
        if time.monotonic() - self._last_prune > self.PRUNE_EVERY_S:
            self._last_prune = time.monotonic()
            self.db.execute("DELETE FROM seen WHERE seen_ms < ?", [now_ms - self.window_ms])

    def close(self) -> None:
        self.db.close()


# -- commit thread ------------------------------------------------------------------------


@dataclass
class CommitResult:
    accepted: int
    deduped: int


@dataclass
class _Pending:
    source: str
    day_ms: int
    lines: list[tuple[str, bytes]]
    future: Future[CommitResult]


class Committer:
    """One thread that dedupes, appends and fsyncs everything queued since its last fsync."""

    def __init__(self, writer: ArchiveWriter, dedupe: DedupeStore):
        self.clock = time.time  # seconds; the dedupe window is measured on it (tests replace it)
        self.writer = writer
        self.dedupe = dedupe
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._lock = threading.Lock()  # held while writing; rotate() takes it too
        self.commits = 0
        self._thread = threading.Thread(target=self._run, name="segloop-commit", daemon=True)
        self._thread.start()

    def submit(self, source: str, day_ms: int, lines: list[tuple[str, bytes]]) -> Future[CommitResult]:
        future: Future[CommitResult] = Future()
        self._queue.put(_Pending(source, day_ms, lines, future))
        return future

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            stop = False
            while True:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                group.append(more)
            self._commit(group)
            if stop:
                return

    def _commit(self, group: list[_Pending]) -> None:
        now_ms = int(self.clock() * 1000)
        try:
            with self._lock:
                already = self.dedupe.seen([mid for p in group for mid, _ in p.lines], now_ms)
                fresh: set[str] = set()
                dedupe_on = self.dedupe.window_ms > 0
                files: dict[tuple[str, int], list[bytes]] = {}
                results: list[CommitResult] = []
                for pending in group:
                    accepted = deduped = 0
                    for message_id, line in pending.lines:
                        if message_id in already or message_id in fresh:
                            deduped += 1
                            continue
                        if dedupe_on:
                            fresh.add(message_id)
                        files.setdefault((pending.source, pending.day_ms), []).append(line)
                        accepted += 1
                    results.append(CommitResult(accepted, deduped))
                self.writer.append(files)
                self.dedupe.add(list(fresh), now_ms)
                self.commits += 1
        except Exception as exc:  # disk full, permissions: every waiter gets a 500
            log.error("could not write the archive: %s", exc)
            # Later writes go to fresh files, never after a member that may be half written.
            with contextlib.suppress(OSError):
                self.writer.rotate()
            for pending in group:
                pending.future.set_exception(exc)
            return
        for pending, result in zip(group, results, strict=True):
            pending.future.set_result(result)

    def rotate(self) -> None:
        with self._lock:
            self.writer.rotate()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self.writer.close()
        self.dedupe.close()
