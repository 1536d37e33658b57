"""Load Segment raw archives into a warehouse, in Segment's warehouse schema, incrementally.

`load_archive(warehouse, path)` reads `segment-logs/<source>/<day>/<file>.gz` files (written
by `segloop collector`, or downloaded from Segment's S3 destination) and writes `tracks`,
`identifies`, `users`, `pages`, `screens`, `groups`, `aliases` and one table per track
event, named and typed as Segment does (see ``segloop.segment.schema``).

Incremental: `_segloop_loaded_files` in each target schema records how many bytes of each
file were loaded, so a file is read once and a growing file only from where the last load
stopped. Rows dedupe on `id` (the messageId), so loading the same data twice adds nothing.
The SQL is plain (CREATE TABLE, ALTER TABLE ADD COLUMN, INSERT ... SELECT ... WHERE NOT
EXISTS, DELETE) so it runs on DuckDB and PostgreSQL alike.
"""

from __future__ import annotations

import logging
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segloop.errors import DataError
from segloop.segment.archive import ArchiveFile, find_archive_files, read_archive_file
from segloop.segment.schema import (
    COMMON_COLUMNS,
    LOADED_FILES_TABLE,
    USERS_TABLE,
    Kind,
    cast_value,
    infer_kind,
    message_rows,
    snake_case,
)

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

    from segloop.warehouse import Warehouse
    from segloop.warehouses.base import WarehouseConfig

log = logging.getLogger("segloop.loader")

SQL_TYPES: dict[Kind, str] = {
    "timestamp": "TIMESTAMPTZ",
    "integer": "BIGINT",
    "float": "DOUBLE PRECISION",
    "boolean": "BOOLEAN",
    "varchar": "VARCHAR",
}


@dataclass
class LoadResult:
    """What one load did, per schema and table."""

    files_loaded: int = 0
    files_skipped: int = 0  # already fully loaded
    messages: int = 0
    rows_inserted: Counter[str] = field(default_factory=Counter)  # "schema.table" -> rows
    duplicates: int = 0  # rows whose id was already in the table (or earlier in the load)
    bad_lines: int = 0
    torn_files: list[str] = field(default_factory=list)
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
            "schemas": list(self.schemas),
        }


def _arrow_type(kind: Kind) -> pa.DataType:
    import pyarrow as pa

    return {
        "timestamp": pa.timestamp("us", tz="UTC"),
        "integer": pa.int64(),
        "float": pa.float64(),
        "boolean": pa.bool_(),
        "varchar": pa.string(),
    }[kind]


def _kind_of(dtype: Any) -> Kind:
    if dtype.is_timestamp():
        return "timestamp"
    if dtype.is_boolean():
        return "boolean"
    if dtype.is_integer():
        return "integer"
    if dtype.is_floating() or dtype.is_decimal():
        return "float"
    return "varchar"


class _SchemaWriter:
    """Writes rows into one target schema, creating and widening tables as needed."""

    def __init__(self, warehouse: Warehouse, schema: str, result: LoadResult):
        self.wh = warehouse
        self.schema = schema
        self.result = result
        warehouse.ensure_schema(schema)
        self.columns: dict[str, dict[str, Kind]] = {}
        for table in warehouse.list_tables(schema):
            if table.startswith("_segloop_stage_"):
                warehouse.drop_table(table, schema)  # left by an interrupted load
                continue
            self.columns[table] = {
                name: _kind_of(dtype)
                for name, dtype in warehouse.table(table, schema).schema().items()
            }

    def q(self, table: str) -> str:
        return self.wh.qualified(table, self.schema)

    # -- loaded-files bookkeeping ----------------------------------------------------------

    def loaded_offsets(self) -> dict[str, tuple[int, int]]:
        """file key -> (bytes loaded, messages loaded) from earlier loads."""
        if LOADED_FILES_TABLE not in self.columns:
            self.wh.raw_sql(
                f"CREATE TABLE IF NOT EXISTS {self.q(LOADED_FILES_TABLE)} (file VARCHAR, "
                "bytes_loaded BIGINT, messages BIGINT, loaded_at TIMESTAMPTZ)"
            )
            self.columns[LOADED_FILES_TABLE] = {}
            return {}
        table = self.wh.table(LOADED_FILES_TABLE, self.schema)
        rows = self.wh.to_arrow(table.select("file", "bytes_loaded", "messages")).to_pylist()
        return {row["file"]: (int(row["bytes_loaded"]), int(row["messages"] or 0)) for row in rows}

    def mark_loaded(self, done: list[tuple[str, int, int]]) -> None:
        import pyarrow as pa

        if not done:
            return
        keys = ", ".join(_literal(key) for key, _, _ in done)
        self.wh.raw_sql(f"DELETE FROM {self.q(LOADED_FILES_TABLE)} WHERE file IN ({keys})")
        now = datetime.now(UTC)
        rows = pa.table(
            {
                "file": pa.array([k for k, _, _ in done], pa.string()),
                "bytes_loaded": pa.array([b for _, b, _ in done], pa.int64()),
                "messages": pa.array([m for _, _, m in done], pa.int64()),
                "loaded_at": pa.array([now] * len(done), pa.timestamp("us", tz="UTC")),
            }
        )
        self._insert_arrow(LOADED_FILES_TABLE, rows, ["file", "bytes_loaded", "messages", "loaded_at"])

    # -- rows ------------------------------------------------------------------------------

    def write(self, rows_by_table: dict[str, list[dict[str, Any]]]) -> None:
        for table, rows in rows_by_table.items():
            if table == USERS_TABLE:
                self._upsert_users(rows)
            else:
                self._append(table, rows)

    def _prepare_columns(self, table: str, rows: list[dict[str, Any]]) -> dict[str, Kind]:
        """Create the table or add the new columns; a column's type is fixed by its first value."""
        known = self.columns.get(table)
        new: dict[str, Kind] = {}
        for row in rows:
            for col, value in row.items():
                if value is None or col in new or (known is not None and col in known):
                    continue
                new[col] = "timestamp" if col in _TIME_COLUMNS else infer_kind(value)
                if col in ("id", "user_id", "anonymous_id"):
                    new[col] = "varchar"
        if known is None:
            base = _base_columns(table, rows)
            new = {**base, **{c: k for c, k in new.items() if c not in base}}
            defs = ", ".join(f"{self.wh.quote(c)} {SQL_TYPES[k]}" for c, k in new.items())
            self.wh.raw_sql(f"CREATE TABLE IF NOT EXISTS {self.q(table)} ({defs})")
            self.columns[table] = dict(new)
        else:
            for col, kind in new.items():
                self.wh.raw_sql(
                    f"ALTER TABLE {self.q(table)} ADD COLUMN {self.wh.quote(col)} {SQL_TYPES[kind]}"
                )
                known[col] = kind
        return self.columns[table]

    def _arrow(self, rows: list[dict[str, Any]], kinds: dict[str, Kind]) -> tuple[pa.Table, list[str]]:
        import pyarrow as pa

        non_null: set[str] = {"id"}
        for row in rows:
            non_null.update(col for col, value in row.items() if value is not None)
        present = [c for c in kinds if c in non_null]
        arrays = {
            col: pa.array([cast_value(row.get(col), kinds[col]) for row in rows], _arrow_type(kinds[col]))
            for col in present
        }
        return pa.table(arrays), present

    def _stage(self, table: pa.Table) -> str:
        name = f"_segloop_stage_{secrets.token_hex(4)}"
        self.wh.create_table(name, table, schema=self.schema, overwrite=True)
        return name

    def _insert_arrow(self, table: str, data: pa.Table, cols: list[str]) -> None:
        stage = self._stage(data)
        try:
            names = ", ".join(self.wh.quote(c) for c in cols)
            self.wh.raw_sql(
                f"INSERT INTO {self.q(table)} ({names}) SELECT {names} FROM {self.q(stage)}"
            )
        finally:
            self.wh.drop_table(stage, self.schema)

    def _append(self, table: str, rows: list[dict[str, Any]]) -> None:
        unique: dict[str, dict[str, Any]] = {}
        for row in rows:
            if row.get("id") is None or row["id"] in unique:
                self.result.duplicates += 1
                continue
            unique[row["id"]] = row
        if not unique:
            return
        kinds = self._prepare_columns(table, list(unique.values()))
        data, cols = self._arrow(list(unique.values()), kinds)
        stage = self._stage(data)
        try:
            names = ", ".join(self.wh.quote(c) for c in cols)
            target, staged = self.q(table), self.q(stage)
            fresh = (
                f"FROM {staged} s WHERE NOT EXISTS (SELECT 1 FROM {target} t WHERE t.id = s.id)"
            )
            count = self._scalar(f"SELECT COUNT(*) {fresh}")
            prefixed = ", ".join(f"s.{self.wh.quote(c)}" for c in cols)
            self.wh.raw_sql(f"INSERT INTO {target} ({names}) SELECT {prefixed} {fresh}")
        finally:
            self.wh.drop_table(stage, self.schema)
        self.result.rows_inserted[f"{self.schema}.{table}"] += count
        self.result.duplicates += len(unique) - count

    def _upsert_users(self, rows: list[dict[str, Any]]) -> None:
        """Merge identifies into `users` on id: newer non-null traits win over older ones."""
        merged: dict[str, dict[str, Any]] = {}
        far_past = datetime.min.replace(tzinfo=UTC)
        for row in sorted(rows, key=lambda r: r.get("received_at") or far_past):
            current = merged.setdefault(row["id"], {})
            current.update({k: v for k, v in row.items() if v is not None})
        kinds = self._prepare_columns(USERS_TABLE, list(merged.values()))
        data, cols = self._arrow(list(merged.values()), kinds)
        stage = self._stage(data)
        combined = f"_segloop_stage_{secrets.token_hex(4)}"
        target, staged = self.q(USERS_TABLE), self.q(stage)
        newer = "(u.id IS NULL OR u.received_at IS NULL OR s.received_at >= u.received_at)"
        selects = []
        for col in kinds:
            c = self.wh.quote(col)
            if col == "id":
                selects.append(f"s.{c} AS {c}")
            elif col in cols:
                selects.append(
                    f"CASE WHEN {newer} THEN COALESCE(s.{c}, u.{c}) ELSE COALESCE(u.{c}, s.{c}) END AS {c}"
                )
            else:
                selects.append(f"u.{c} AS {c}")
        try:
            existing = self._scalar(
                f"SELECT COUNT(*) FROM {staged} s WHERE EXISTS (SELECT 1 FROM {target} t WHERE t.id = s.id)"
            )
            self.wh.raw_sql(
                f"CREATE TABLE {self.q(combined)} AS SELECT {', '.join(selects)} "
                f"FROM {staged} s LEFT JOIN {target} u ON u.id = s.id"
            )
            names = ", ".join(self.wh.quote(c) for c in kinds)
            self._atomic(
                [
                    f"DELETE FROM {target} WHERE id IN (SELECT id FROM {staged})",
                    f"INSERT INTO {target} ({names}) SELECT {names} FROM {self.q(combined)}",
                ]
            )
        finally:
            self.wh.drop_table(stage, self.schema)
            self.wh.drop_table(combined, self.schema)
        self.result.rows_inserted[f"{self.schema}.{USERS_TABLE}"] += len(merged) - existing

    def _atomic(self, statements: list[str]) -> None:
        """Run statements as one transaction, so a crash cannot leave users half-replaced.

        PostgreSQL runs several statements sent at once in one implicit transaction; DuckDB
        needs an explicit one (rolled back if any statement fails).
        """
        if self.wh.dialect != "duckdb":
            self.wh.raw_sql("; ".join(statements))
            return
        self.wh.raw_sql("BEGIN TRANSACTION")
        try:
            for statement in statements:
                self.wh.raw_sql(statement)
        except Exception:
            self.wh.raw_sql("ROLLBACK")
            raise
        self.wh.raw_sql("COMMIT")

    def _scalar(self, query: str) -> int:
        table = self.wh.sql(query)
        value = table.to_pyarrow().column(0)[0].as_py()
        return int(value or 0)


_TIME_COLUMNS = frozenset(["received_at", "sent_at", "timestamp", "original_timestamp", "uuid_ts"])


def _base_columns(table: str, rows: list[dict[str, Any]]) -> dict[str, Kind]:
    """Columns a new table always gets, so queries on them work before a value arrives."""
    if table == USERS_TABLE:
        return {"id": "varchar", "received_at": "timestamp", "uuid_ts": "timestamp"}
    base: dict[str, Kind] = {
        col: ("timestamp" if col in _TIME_COLUMNS else "varchar") for col in COMMON_COLUMNS
    }
    if any("event_text" in row for row in rows[:1]):
        base["event"] = "varchar"
        base["event_text"] = "varchar"
    return base


def _content_id(message: dict[str, Any]) -> str:
    """A stable id for a message without messageId, so reloading it still dedupes."""
    import hashlib

    import orjson

    digest = hashlib.sha1(orjson.dumps(message, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f"sha1-{digest}"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


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
        from segloop.warehouse import Warehouse

        try:
            Warehouse.connect(self.config, self.root, self.name).close()
        except WarehouseLockedError as exc:  # busy now; the timer retries
            log.warning("%s The collector starts anyway and loads when it is free.", exc)

    def __call__(self, data_dir: Path) -> LoadResult:
        from segloop.warehouse import Warehouse

        archive = Path(data_dir) / "segment-logs"
        if not archive.exists():  # nothing received yet: no need to open the warehouse
            return LoadResult()
        with Warehouse.connect(self.config, self.root, self.name) as warehouse:
            return load_archive(warehouse, archive)


def _load_schema(
    warehouse: Warehouse,
    schema: str,
    archives: list[ArchiveFile],
    result: LoadResult,
    chunk_messages: int,
    report: Callable[[int], None] = lambda size: None,
) -> None:
    writer = _SchemaWriter(warehouse, schema, result)
    offsets = writer.loaded_offsets()
    pending: dict[str, list[dict[str, Any]]] = {}
    pending_messages = 0
    done: list[tuple[str, int, int]] = []

    def flush() -> None:
        nonlocal pending, pending_messages, done
        writer.write(pending)
        writer.mark_loaded(done)
        pending, pending_messages, done = {}, 0, []

    for archive in archives:
        offset, previous = offsets.get(archive.key, (0, 0))
        size = archive.path.stat().st_size
        if size <= offset:
            result.files_skipped += 1
            report(size)
            continue
        read = read_archive_file(archive.path, offset)
        if read.problem:
            result.torn_files.append(str(archive.path))
            log.warning(
                "%s: stopped at byte %d (%s tail); the rest loads when it is complete",
                archive.path, read.end_offset, read.problem,
            )
        if read.end_offset <= offset:
            report(size)
            continue
        loaded_at = datetime.now(UTC)
        for message in read.messages:
            if not message.get("messageId"):
                message["messageId"] = _content_id(message)
            for table, row in message_rows(message, loaded_at):
                pending.setdefault(table, []).append(row)
        result.files_loaded += 1
        result.messages += len(read.messages)
        result.bad_lines += read.bad_lines
        pending_messages += len(read.messages)
        done.append((archive.key, read.end_offset, previous + len(read.messages)))
        if pending_messages >= chunk_messages:
            flush()
        report(size)
    flush()
