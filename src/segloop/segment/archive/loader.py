"""Load Segment raw archives into a warehouse, in Segment's warehouse schema, incrementally.

`load_archive(warehouse, path)` reads `segment-logs/<source>/<day>/<file>.gz` files (written
by `segloop collector`, or downloaded from Segment's S3 destination) and writes `tracks`,
`identifies`, `users`, `pages`, `screens`, `groups`, `accounts`, `aliases` and one table per
track event, named as Segment does (see ``segloop.segment.schema``) and typed from every
value (``segloop.segment.archive.column_types``, written by ``segloop.segment.archive.load_writer``).

Incremental: `_segloop_loaded_files` in each target schema records how many bytes of each
file were loaded, so a file is read once and a growing file only from where the last load
stopped. Rows dedupe on `id` (the messageId), so loading the same data twice adds nothing.
Progress is recorded per file: when a batch fails, its files are written one by one, and a
file that still cannot load (or cannot be read) is set aside with its reason in
`_segloop_loaded_files.problem`; the load goes on with the other files. A set-aside file is
tried again once it changes (or when its row is deleted).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segloop.errors import DataError, database_message
from segloop.segment.archive.files import ArchiveFile, find_archive_files, read_archive_file
from segloop.segment.archive.load_writer import Reject, SchemaWriter, TableRows, WriteStats
from segloop.segment.schema import LOAD_REJECTS_TABLE, LOADED_FILES_TABLE, message_rows, snake_case

if TYPE_CHECKING:  # pragma: no cover
    from segloop.warehouses import Warehouse
    from segloop.warehouses.config import WarehouseConfig

log = logging.getLogger("segloop.loader")


@dataclass
class LoadResult(WriteStats):
    """What one load did, per schema and table (counts of rows, values and files)."""

    files_loaded: int = 0
    files_skipped: int = 0  # already fully loaded
    messages: int = 0
    bad_lines: int = 0
    torn_files: list[str] = field(default_factory=list)
    set_aside: dict[str, str] = field(default_factory=dict)  # file -> why it did not load
    set_aside_before: int = 0  # files set aside by an earlier load and unchanged since
    schemas: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "files_loaded": self.files_loaded,
            "files_skipped": self.files_skipped,
            "messages": self.messages,
            "rows_inserted": dict(self.rows_inserted),
            "duplicates": self.duplicates,
            "bad_lines": self.bad_lines,
            "torn_files": list(self.torn_files),
            "converted": sum(self.converted.values()),
            "widened": list(self.widened),
            "overflowed": sum(self.overflowed.values()),
            "rejected": sum(self.rejected.values()),
            "cut": sum(self.cut.values()),
            "set_aside": dict(self.set_aside),
            "set_aside_before": self.set_aside_before,
            "schemas": list(self.schemas),
        }

    def describe(self) -> list[str]:
        """What changed besides plain rows, one sentence each (for the CLI and the collector's log)."""
        lines = []
        if self.converted:
            lines.append(f"converted {sum(self.converted.values()):,} values exactly into their column's type "
                         f"({_top(self.converted)})")
        for widened in self.widened:
            lines.append(f"widened {widened}")
        if self.overflowed:
            lines.append(f"overflowed {sum(self.overflowed.values()):,} properties past the column limit into "
                         f"`_segloop_overflow` as JSON ({_top(self.overflowed)})")
        if self.rejected:
            lines.append(f"rejected {sum(self.rejected.values()):,} values that do not fit their column; each is "
                         f"in `{LOAD_REJECTS_TABLE}` with its reason ({_top(self.rejected)})")
        if self.cut:
            lines.append(f"cut {sum(self.cut.values()):,} strings at 512 characters; the whole values are in "
                         f"`{LOAD_REJECTS_TABLE}` ({_top(self.cut)})")
        if self.bad_lines:
            lines.append(f"skipped {self.bad_lines:,} lines that are not JSON objects; each is in "
                         f"`{LOAD_REJECTS_TABLE}` as it was read")
        for file, reason in self.set_aside.items():
            lines.append(f"set aside {file}: {reason}")
        if self.set_aside_before:
            lines.append(f"{self.set_aside_before} files set aside by an earlier load are unchanged and were not "
                         f"retried; see `{LOADED_FILES_TABLE}.problem` (delete a file's row to retry it)")
        return lines


def _top(counts: Counter[str], n: int = 3) -> str:
    shown = ", ".join(f"{key}: {count:,}" for key, count in counts.most_common(n))
    return shown + (", ..." if len(counts) > n else "")


def _content_id(message: dict[str, Any]) -> str:
    """A stable id for a message without messageId, so reloading it still dedupes."""
    import hashlib

    import orjson

    digest = hashlib.sha1(orjson.dumps(message, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f"sha1-{digest}"


def _target_schema(archive: ArchiveFile, schema: str | None, default: str) -> str:
    if schema:
        return schema
    if archive.source is None:
        return default
    name = archive.source if archive.source.isidentifier() else snake_case(archive.source)
    if not name or name[0].isdigit():
        raise DataError(
            f"archive folder `{archive.source}` (in {archive.path}) is not a usable schema name; "
            "pass --schema to choose the schema to load it into"
        )
    return name


def load_archive(
    warehouse: Warehouse,
    path: str | Path,
    schema: str | None = None,
    chunk_messages: int = 50_000,
    progress: Callable[[int, int], None] | None = None,
) -> LoadResult:
    """Load every new byte of the archives under ``path`` into Segment's warehouse schema.

    Each source folder (`segment-logs/<source>/...`) loads into the schema of that name
    unless ``schema`` is given; a lone file outside that layout loads into ``schema`` or
    the warehouse's output schema. Returns counts per table. ``progress(advance, total)``
    hears the archive bytes dealt with (read, or found loaded already) out of all of them.
    """
    root = Path(path)
    if not root.exists():
        raise DataError(f"archive path {root} does not exist; point load-archive at a `.gz` file or a folder")
    files = find_archive_files(root)
    result = LoadResult()
    by_schema: dict[str, list[ArchiveFile]] = {}
    for archive in files:
        by_schema.setdefault(_target_schema(archive, schema, warehouse.schema), []).append(archive)
    total = sum(archive.path.stat().st_size for archive in files)
    report = (lambda size: progress(size, total)) if progress else (lambda size: None)
    report(0)
    for target, archives in by_schema.items():
        result.schemas.append(target)
        _load_schema(warehouse, target, archives, result, chunk_messages, report)
    return result


@dataclass(frozen=True)
class ArchiveLoader:
    """The collector's periodic loader: opens the warehouse for each load and closes it after.

    A DuckDB file admits one process at a time, so a collector that kept it open between
    loads would lock `segloop run` and `segloop query` out of the workspace. Opening it per
    load holds it for the load only; a file another process holds past the warehouse's
    ``lock_timeout`` raises ``WarehouseLockedError`` (the collector skips that round).
    """

    config: WarehouseConfig
    root: Path
    name: str = "default"

    def check(self) -> None:
        """Open and close the warehouse once, so a wrong setting fails at start, not later."""
        from segloop.errors import WarehouseLockedError
        from segloop.warehouses import Warehouse

        try:
            Warehouse.connect(self.config, self.root, self.name).close()
        except WarehouseLockedError as exc:  # busy now; the timer retries
            log.warning("%s The collector starts anyway and loads when it is free.", exc)

    def __call__(self, data_dir: Path) -> LoadResult:
        from segloop.warehouses import Warehouse

        archive = Path(data_dir) / "segment-logs"
        if not archive.exists():  # nothing received yet: no need to open the warehouse
            return LoadResult()
        with Warehouse.connect(self.config, self.root, self.name) as warehouse:
            result = load_archive(warehouse, archive)
        if result.messages:
            log.info("loaded %d messages: %s", result.messages,
                     ", ".join(f"{t} +{n}" for t, n in sorted(result.rows_inserted.items())) or "no new rows")
        for line in result.describe():
            log.warning("load: %s", line)
        return result


@dataclass
class _FileRows:
    """The rows read from one file, waiting to be written, and how far they go in it."""

    key: str
    start_offset: int  # bytes loaded before this load
    start_messages: int
    end_offset: int
    messages: int  # messages read in this load
    rows: dict[str, TableRows]
    problem: str | None = None  # set when the rest of the file cannot be read
    size: int = 0
    bad: list[str] = field(default_factory=list)  # lines that are not JSON objects


def _load_schema(
    warehouse: Warehouse,
    schema: str,
    archives: list[ArchiveFile],
    result: LoadResult,
    chunk_messages: int,
    report: Callable[[int], None] = lambda size: None,
) -> None:
    writer = SchemaWriter(warehouse, schema, result)
    known = writer.loaded_files()
    pending: list[_FileRows] = []
    pending_messages = 0

    def flush() -> None:
        nonlocal pending, pending_messages
        _write_files(writer, pending, result)
        pending, pending_messages = [], 0

    for archive in archives:
        offset, previous, problem, size_at_problem = known.get(archive.key, (0, 0, None, None))
        try:
            size = archive.path.stat().st_size
            if problem is not None and size == size_at_problem:
                result.set_aside_before += 1
                report(size)
                continue
            if size <= offset:
                result.files_skipped += 1
                report(size)
                continue
            read = read_archive_file(archive.path, offset)
        except OSError as exc:
            # -1: no size to compare, so the next load tries again
            _set_aside(writer, archive.key, offset, previous, f"cannot be read: {exc}", -1, result)
            continue
        file_problem = None
        if read.problem == "corrupt":
            file_problem = (f"corrupt gzip data at byte {read.end_offset}; the messages before it are "
                            "loaded, the rest cannot be read")
        elif read.problem:
            result.torn_files.append(str(archive.path))
            log.warning(
                "%s: stopped at byte %d (%s tail); the rest loads when it is complete",
                archive.path, read.end_offset, read.problem,
            )
        result.bad_lines += read.bad_lines
        if read.end_offset <= offset:
            if file_problem:
                _set_aside(writer, archive.key, offset, previous, file_problem, size, result)
            report(size)
            continue
        loaded_at = datetime.now(UTC)
        rows: dict[str, TableRows] = {}
        for message in read.messages:
            if not message.get("messageId"):
                message["messageId"] = _content_id(message)
            message_id = message["messageId"]
            message_id = message_id if isinstance(message_id, str) else str(message_id)
            for table, row in message_rows(message, loaded_at):
                batch = rows.get(table)
                if batch is None:
                    batch = rows[table] = TableRows()
                batch.add(row, message_id, archive.key)
        result.files_loaded += 1
        result.messages += len(read.messages)
        pending.append(_FileRows(archive.key, offset, previous, read.end_offset, len(read.messages),
                                 rows, file_problem, size, read.bad))
        pending_messages += len(read.messages)
        if pending_messages >= chunk_messages:
            flush()
        report(size)
    flush()


def _write_files(writer: SchemaWriter, files: list[_FileRows], result: LoadResult) -> None:
    """Write a batch of files' rows and record each file's progress.

    When the batch fails, each file is written on its own (rows written before the failure
    dedupe on `id`), and a file that fails alone is set aside with the warehouse's error.
    """
    if not files:
        return
    merged: dict[str, TableRows] = {}
    for file in files:
        for table, rows in file.rows.items():
            merged.setdefault(table, TableRows()).extend(rows)
    try:
        writer.write(merged)
    except Exception as exc:
        if not is_data_error(exc):
            raise  # the warehouse is down, full or busy: stop; the files written so far are recorded
        if len(files) == 1:
            _give_up(writer, files[0], exc, result)
            return
        log.warning("writing %d files at once failed (%s); writing them one by one",
                    len(files), database_message(exc))
        for file in files:
            try:
                writer.write(file.rows)
            except Exception as one:
                if not is_data_error(one):
                    raise
                _give_up(writer, file, one, result)
                continue
            _mark(writer, [file], result)
        return
    _mark(writer, files, result)


BAD_LINE = "not a JSON object; the line is kept here as it was read"

# Errors caused by the rows themselves, which writing the same rows again would repeat:
# PostgreSQL's SQLSTATE classes 22 (data exception), 23 (integrity), 54 (program limit:
# too many columns, row too big); DuckDB's exception classes of the same kinds. Anything
# else (connection lost, disk full, lock) stops the load instead, to be run again.
DATA_SQLSTATE_CLASSES = ("22", "23", "54")
DATA_DUCKDB_ERRORS = ("ConversionException", "OutOfRangeException", "InvalidInputException",
                      "ConstraintException")


def is_data_error(exc: BaseException) -> bool:
    """Whether a write failed because of the data (the file is set aside) rather than the warehouse."""
    seen: BaseException | None = exc
    for _ in range(5):  # the error itself and what it wraps
        if seen is None:
            return False
        sqlstate = getattr(seen, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate[:2] in DATA_SQLSTATE_CLASSES:
            return True
        if type(seen).__name__ in DATA_DUCKDB_ERRORS and type(seen).__module__.startswith("_duckdb"):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _mark(writer: SchemaWriter, files: list[_FileRows], result: LoadResult) -> None:
    bad: list[Reject] = [(None, None, None, line, BAD_LINE, f.key) for f in files for line in f.bad]
    writer.write_rejects(bad, None)  # before the progress: a crash between them re-reads the file
    writer.mark_files([
        (f.key, f.end_offset, f.start_messages + f.messages, f.problem, f.size if f.problem else None)
        for f in files
    ])
    for file in files:
        if file.problem:
            log.warning("archive file %s is set aside: %s", file.key, file.problem)
            result.set_aside[file.key] = file.problem


def _give_up(writer: SchemaWriter, file: _FileRows, exc: Exception, result: LoadResult) -> None:
    """Set aside a file whose rows the warehouse refuses; its earlier progress stays as it was."""
    result.files_loaded -= 1
    result.messages -= file.messages
    reason = f"the warehouse refused its rows: {database_message(exc)}"
    _set_aside(writer, file.key, file.start_offset, file.start_messages, reason, file.size, result)


def _set_aside(writer: SchemaWriter, key: str, offset: int, messages: int, reason: str,
               size: int, result: LoadResult) -> None:
    log.warning("archive file %s is set aside: %s; the load goes on with the other files", key, reason)
    result.set_aside[key] = reason
    writer.mark_files([(key, offset, messages, reason, size)])
