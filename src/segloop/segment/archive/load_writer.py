"""Write Segment rows into one source schema: create, widen and fill tables, losing nothing.

The loader (``segloop.segment.archive.loader``) turns archive messages into rows; this module puts
them into tables that may already exist, with the rules of ``column_types``:

- a new column's type comes from every value in the load; a number column widens in place
  (``ALTER COLUMN ... TYPE``) when new numbers need it;
- a value that does not fit its column goes, whole, to ``_segloop_load_rejects`` (table,
  column, message id, the value as JSON, reason); the row keeps NULL there;
- a table never gets more columns than its warehouse allows (``MAX_TABLE_COLUMNS`` less
  room for Segment's own columns), and on PostgreSQL a row never more inline bytes than
  a page holds (``MAX_ROW_BYTES``): what is past the limit goes, as JSON, into the row's
  ``_segloop_overflow`` column.

Rows are staged as Arrow, then ``INSERT ... SELECT ... WHERE NOT EXISTS`` on ``id``, so a
row loaded twice is added once. Plain SQL that runs on DuckDB and PostgreSQL.
"""

from __future__ import annotations

import secrets
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import chain, repeat
from typing import TYPE_CHECKING, Any

import orjson

from segloop.segment.archive.column_types import (
    EXACT_IN_DOUBLE,
    Kind,
    NumberTypes,
    ValueStats,
    column_kind,
    fit,
    json_text,
    widened_kind,
)
from segloop.segment.schema import (
    COMMON_COLUMNS,
    LOAD_REJECTS_TABLE,
    LOADED_FILES_TABLE,
    MAX_STRING_CHARS,
    OVERFLOW_COLUMN,
    UPSERT_TABLES,
    is_segloop_table,
)
from segloop.warehouses.postgres import row_bytes

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

    from segloop.warehouses import Warehouse

STAGE_PREFIX = "_segloop_stage_"
# A rejected value: table, column, message id, the value as JSON (or a bad line), reason, file.
Reject = tuple[str | None, str | None, str | None, str, str, str]
TIME_COLUMNS = frozenset(["received_at", "sent_at", "timestamp", "original_timestamp", "uuid_ts"])
ID_COLUMNS = frozenset(["id", "user_id", "anonymous_id"])
FIXED_COLUMNS = TIME_COLUMNS | ID_COLUMNS  # their type never comes from the values
# Columns a table may need later that segloop adds itself (event, event_text, name, category,
# group_id, previous_id, the overflow column, ...): data columns stop this far below the limit.
OWN_COLUMNS_ROOM = 16

# The Python type a value of each column type arrives as when it needs no conversion.
_PLAIN: dict[str, type] = {"varchar": str, "integer": int, "float": float, "boolean": bool, "timestamp": datetime}

SQL_TYPES: dict[str, str] = {
    "timestamp": "TIMESTAMPTZ",
    "integer": "BIGINT",
    "float": "DOUBLE PRECISION",
    "boolean": "BOOLEAN",
    "varchar": "VARCHAR",
}


@dataclass
class TableRows:
    """Rows for one table, with the message and file each came from (for rejects).

    Parallel lists rather than an object per row: a load holds hundreds of thousands of
    rows, and every extra object per row is more work for Python's garbage collector.
    """

    values: list[dict[str, Any]] = field(default_factory=list)
    message_ids: list[str | None] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def add(self, values: dict[str, Any], message_id: str | None, file: str) -> None:
        self.values.append(values)
        self.message_ids.append(message_id)
        self.files.append(file)

    def extend(self, other: TableRows) -> None:
        self.values.extend(other.values)
        self.message_ids.extend(other.message_ids)
        self.files.extend(other.files)

    def pick(self, indexes: list[int]) -> TableRows:
        return TableRows([self.values[i] for i in indexes], [self.message_ids[i] for i in indexes],
                         [self.files[i] for i in indexes])


@dataclass
class WriteStats:
    """What writing did to values and columns; the loader adds it to its result."""

    rows_inserted: Counter[str] = field(default_factory=Counter)  # "schema.table" -> rows
    duplicates: int = 0
    converted: Counter[str] = field(default_factory=Counter)  # "schema.table.column" -> values
    rejected: Counter[str] = field(default_factory=Counter)
    cut: Counter[str] = field(default_factory=Counter)  # strings cut at 512 characters
    overflowed: Counter[str] = field(default_factory=Counter)  # "schema.table" -> properties
    widened: list[str] = field(default_factory=list)  # "schema.table.column: integer -> float"


def _arrow_type(kind: str) -> pa.DataType:
    import pyarrow as pa

    return {
        "timestamp": pa.timestamp("us", tz="UTC"),
        "integer": pa.int64(),
        "float": pa.float64(),
        "boolean": pa.bool_(),
        "varchar": pa.string(),
        "decimal": pa.string(),  # staged as text, cast by the warehouse: no digit lost
    }[kind]


def _kind_of(dtype: Any) -> Kind:
    if dtype.is_timestamp():
        return "timestamp"
    if dtype.is_boolean():
        return "boolean"
    if dtype.is_integer():
        return "integer"
    if dtype.is_decimal():
        return "decimal"
    if dtype.is_floating():
        return "float"
    return "varchar"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class SchemaWriter:
    """Writes rows into one target schema, creating and widening tables as needed."""

    def __init__(self, warehouse: Warehouse, schema: str, stats: WriteStats):
        self.wh = warehouse
        self.schema = schema
        self.stats = stats
        config = warehouse.config
        self.numbers = NumberTypes(
            decimal_sql=config.EXACT_NUMBER_SQL,
            max_digits=config.EXACT_NUMBER_DIGITS,
            fractions=config.EXACT_NUMBER_FRACTIONS,
        )
        self.max_columns = config.MAX_TABLE_COLUMNS - OWN_COLUMNS_ROOM
        self.max_row_bytes = config.MAX_ROW_BYTES
        self.text_holds_nul = config.TEXT_HOLDS_NUL
        warehouse.ensure_schema(schema)
        self.columns: dict[str, dict[str, Kind]] = {}
        for table in warehouse.list_tables(schema):
            if table.startswith(STAGE_PREFIX):
                warehouse.drop_table(table, schema)  # left by an interrupted load
                continue
            self.columns[table] = {
                name: _kind_of(dtype) for name, dtype in warehouse.table(table, schema).schema().items()
            }

    def q(self, table: str) -> str:
        return self.wh.qualified(table, self.schema)

    def sql_type(self, kind: str) -> str:
        return self.numbers.decimal_sql if kind == "decimal" else SQL_TYPES[kind]

    # -- bookkeeping tables ----------------------------------------------------------------

    def loaded_files(self) -> dict[str, tuple[int, int, str | None, int | None]]:
        """file key -> (bytes loaded, messages loaded, problem, size when set aside)."""
        known = self.columns.get(LOADED_FILES_TABLE)
        if known is None:
            self.wh.raw_sql(
                f"CREATE TABLE IF NOT EXISTS {self.q(LOADED_FILES_TABLE)} (file VARCHAR, "
                "bytes_loaded BIGINT, messages BIGINT, loaded_at TIMESTAMPTZ, problem VARCHAR, "
                "size_at_problem BIGINT)"
            )
            self.columns[LOADED_FILES_TABLE] = {}
            return {}
        for col, kind in (("problem", "varchar"), ("size_at_problem", "integer")):
            if col not in known:  # a table from before files could be set aside
                self.wh.raw_sql(f"ALTER TABLE {self.q(LOADED_FILES_TABLE)} ADD COLUMN {col} {SQL_TYPES[kind]}")
                known[col] = kind  # type: ignore[assignment]
        table = self.wh.table(LOADED_FILES_TABLE, self.schema)
        rows = self.wh.to_arrow(table.select("file", "bytes_loaded", "messages", "problem", "size_at_problem"))
        return {
            row["file"]: (int(row["bytes_loaded"]), int(row["messages"] or 0), row["problem"], row["size_at_problem"])
            for row in rows.to_pylist()
        }

    def mark_files(self, done: list[tuple[str, int, int, str | None, int | None]]) -> None:
        """Record (file, bytes loaded, messages, problem, size) for each file handled."""
        import pyarrow as pa

        if not done:
            return
        keys = ", ".join(_literal(key) for key, *_ in done)
        now = datetime.now(UTC)
        rows = pa.table(
            {
                "file": pa.array([d[0] for d in done], pa.string()),
                "bytes_loaded": pa.array([d[1] for d in done], pa.int64()),
                "messages": pa.array([d[2] for d in done], pa.int64()),
                "loaded_at": pa.array([now] * len(done), pa.timestamp("us", tz="UTC")),
                "problem": pa.array([d[3] for d in done], pa.string()),
                "size_at_problem": pa.array([d[4] for d in done], pa.int64()),
            }
        )
        stage = self._stage(rows)
        names = ", ".join(rows.column_names)
        try:
            self._atomic([
                f"DELETE FROM {self.q(LOADED_FILES_TABLE)} WHERE file IN ({keys})",
                f"INSERT INTO {self.q(LOADED_FILES_TABLE)} ({names}) SELECT {names} FROM {self.q(stage)}",
            ])
        finally:
            self.wh.drop_table(stage, self.schema)

    def write_rejects(self, rejects: list[Reject],
                       target: str | None) -> None:
        """Add rejected values (table, column, message id, JSON, reason, file) once each.

        For an appended table only values of rows not loaded yet are added (``target`` is
        that table, whose ``id`` is the message id), so a load run twice adds them once.
        """
        import pyarrow as pa

        if not rejects:
            return
        if LOAD_REJECTS_TABLE not in self.columns:
            self.wh.raw_sql(
                f"CREATE TABLE IF NOT EXISTS {self.q(LOAD_REJECTS_TABLE)} (table_name VARCHAR, "
                "column_name VARCHAR, message_id VARCHAR, raw_value VARCHAR, reason VARCHAR, "
                "file VARCHAR, rejected_at TIMESTAMPTZ)"
            )
            self.columns[LOAD_REJECTS_TABLE] = {}
        now = datetime.now(UTC)
        data = pa.table({
            "table_name": pa.array([r[0] for r in rejects], pa.string()),
            "column_name": pa.array([r[1] for r in rejects], pa.string()),
            "message_id": pa.array([r[2] for r in rejects], pa.string()),
            "raw_value": pa.array([r[3] for r in rejects], pa.string()),
            "reason": pa.array([r[4] for r in rejects], pa.string()),
            "file": pa.array([r[5] for r in rejects], pa.string()),
            "rejected_at": pa.array([now] * len(rejects), pa.timestamp("us", tz="UTC")),
        })
        stage = self._stage(data)
        names = ", ".join(data.column_names)
        fresh = ""
        if target is not None:
            fresh = f" AND NOT EXISTS (SELECT 1 FROM {self.q(target)} t WHERE t.id = r.message_id)"
        try:
            self.wh.raw_sql(
                f"INSERT INTO {self.q(LOAD_REJECTS_TABLE)} ({names}) SELECT {names} FROM {self.q(stage)} r "
                f"WHERE NOT EXISTS (SELECT 1 FROM {self.q(LOAD_REJECTS_TABLE)} x WHERE "
                "x.table_name IS NOT DISTINCT FROM r.table_name AND x.column_name IS NOT DISTINCT FROM r.column_name "
                "AND x.message_id IS NOT DISTINCT FROM r.message_id "
                "AND (r.message_id IS NOT NULL OR (x.file = r.file AND x.raw_value = r.raw_value)))" + fresh
            )
        finally:
            self.wh.drop_table(stage, self.schema)

    # -- rows ------------------------------------------------------------------------------

    def write(self, rows_by_table: dict[str, TableRows]) -> None:
        for table, rows in rows_by_table.items():
            if is_segloop_table(table):  # never written from messages (event names are prefixed)
                continue
            if table in UPSERT_TABLES:
                self._upsert(table, rows)
            else:
                self._append(table, rows)

    def _plan_columns(self, table: str, cols: dict[str, list[Any]], rows: TableRows) -> dict[str, Kind]:
        """Create the table, add new columns (as room allows) and widen number columns.

        ``cols`` holds each column's values, one per row, in order of first appearance.
        """
        known = self.columns.get(table)
        current: dict[str, Kind] = dict(known) if known is not None else {}
        stats: dict[str, ValueStats] = {}
        new: dict[str, Kind] = {}
        for col, values in cols.items():
            kind = current.get(col)
            if col in FIXED_COLUMNS:
                if kind is None:
                    new[col] = "timestamp" if col in TIME_COLUMNS else "varchar"
            elif kind is None or kind in ("integer", "float", "decimal"):
                stats[col] = seen = ValueStats.of(values)
                if kind is None and seen.kinds:
                    new[col] = column_kind(seen, self.numbers)
        if known is None:
            base = _base_columns(table, rows)
            ordered = {**base, **{c: k for c, k in new.items() if c not in base}}
            columns = self._room(ordered, 0, base)
            defs = ", ".join(f"{self.wh.quote(c)} {self.sql_type(k)}" for c, k in columns.items())
            self.wh.raw_sql(f"CREATE TABLE IF NOT EXISTS {self.q(table)} ({defs})")
            self.columns[table] = dict(columns)
            return self.columns[table]
        added = self._room(new, len(known), {})
        if added:
            adds = [f"ADD COLUMN {self.wh.quote(c)} {self.sql_type(k)}" for c, k in added.items()]
            self.wh.add_columns(self.q(table), adds)
            known.update(added)
        for col, seen in stats.items():
            kind = current.get(col)
            if kind is None:
                continue
            existing_max = 0
            if kind == "integer" and "float" in seen.kinds:
                existing_max = self._beyond_double(table, col)
            wanted = widened_kind(kind, seen, existing_max, self.numbers)
            if wanted != kind:
                self._widen(table, col, kind, wanted)
                known[col] = wanted
        return known

    def _room(self, wanted: dict[str, Kind], present: int, keep: dict[str, Kind]) -> dict[str, Kind]:
        """The first of ``wanted`` that fit under the column limit (``keep`` always fits)."""
        room = self.max_columns - present
        out: dict[str, Kind] = {}
        for col, kind in wanted.items():
            if col in keep or len(out) < room:
                out[col] = kind
        return out

    def _beyond_double(self, table: str, col: str) -> int:
        """A magnitude over 2**53 when the integer column holds one (a double would change it)."""
        c = self.wh.quote(col)
        count = self._scalar(
            f"SELECT COUNT(*) FROM {self.q(table)} WHERE {c} > {EXACT_IN_DOUBLE} OR {c} < -{EXACT_IN_DOUBLE}"
        )
        return EXACT_IN_DOUBLE + 1 if count else 0

    def _widen(self, table: str, col: str, old: Kind, new: Kind) -> None:
        """Change a column's type in place, keeping every stored value exactly."""
        c = self.wh.quote(col)
        # A double goes through its shortest text: PostgreSQL's float8 -> numeric keeps 15 digits.
        using = f"CAST({c} AS TEXT)" if old == "float" or new == "varchar" else c
        self.wh.alter_column_type(self.q(table), c, self.sql_type(new), using)
        self.stats.widened.append(f"{self.schema}.{table}.{col}: {old} -> {new}")

    def _overflow(self, rows: TableRows, cols: dict[str, list[Any]], kinds: dict[str, Kind]) -> list[Any]:
        """Move what a row cannot hold into its overflow JSON: values of columns the table has
        no room for and, on PostgreSQL, the last values of a row too wide for a page."""
        homeless = [c for c in cols if c not in kinds]
        wide_at = self.max_row_bytes // 28 if self.max_row_bytes is not None else None  # fewer values always fit
        overflow: list[Any] = [None] * len(rows.values)
        if not homeless and (wide_at is None or not any(len(v) > wide_at for v in rows.values)):
            return overflow
        for i, row in enumerate(rows.values):
            extra = {c: cols[c][i] for c in homeless if cols[c][i] is not None}
            if wide_at is not None and len(row) > wide_at:
                stored = {c: cols[c][i] for c in cols if c in kinds and cols[c][i] is not None}
                if row_bytes(stored) > (self.max_row_bytes or 0):
                    for col in self._spill(stored):
                        extra[col] = cols[col][i]
                        cols[col][i] = None
            if extra:
                overflow[i] = orjson.dumps(extra, default=json_text).decode()
        return overflow

    def _fit_columns(
        self, table: str, rows: TableRows, cols: dict[str, list[Any]], kinds: dict[str, Kind]
    ) -> tuple[dict[str, list[Any]], list[Reject]]:
        """Each column's values as the table stores them; rejects, conversions and overflow counted."""
        prefix = f"{self.schema}.{table}"
        overflow = self._overflow(rows, cols, kinds)
        out: dict[str, list[Any]] = {}
        rejects: list[Reject] = []
        for col, values in cols.items():
            kind = kinds.get(col)
            if kind is None or values.count(None) == len(values):
                continue  # no room for it (in the overflow), or NULL in every row (not staged)
            if self._as_they_are(values, kind):
                out[col] = values  # what the column stores already (most columns)
                continue
            fitted_values: list[Any] = []
            key = f"{prefix}.{col}"
            for i, value in enumerate(values):
                fitted = fit(value, kind, self.text_holds_nul)
                fitted_values.append(fitted.value)
                if fitted.outcome == "ok":
                    continue
                if fitted.outcome == "converted":
                    self.stats.converted[key] += 1
                    continue
                (self.stats.cut if fitted.outcome == "cut" else self.stats.rejected)[key] += 1
                rejects.append((table, col, rows.message_ids[i], json_text(value), fitted.reason, rows.files[i]))
            out[col] = fitted_values
        spilled = [o for o in overflow if o is not None]
        if spilled:
            self.stats.overflowed[prefix] += sum(len(orjson.loads(o)) for o in spilled)
            if OVERFLOW_COLUMN not in kinds:
                self.wh.raw_sql(f"ALTER TABLE {self.q(table)} ADD COLUMN {self.wh.quote(OVERFLOW_COLUMN)} VARCHAR")
                kinds[OVERFLOW_COLUMN] = "varchar"
            out[OVERFLOW_COLUMN] = overflow
        return out, rejects

    def _as_they_are(self, values: list[Any], kind: Kind) -> bool:
        """Whether a column's values need no conversion and no check (C loops over the list)."""
        types = set(map(type, values))
        types.discard(type(None))
        if not types:
            return True  # all NULL
        plain = _PLAIN.get(kind)
        if plain is None or not types <= {plain}:
            return False
        if plain is not str:
            return True
        if max(map(len, filter(None, values)), default=0) > MAX_STRING_CHARS:
            return False
        return self.text_holds_nul or "\x00" not in "".join(filter(None, values))

    def _spill(self, stored: dict[str, Any]) -> list[str]:
        """The last data columns to move out of a too-wide row until it fits a page."""
        assert self.max_row_bytes is not None  # noqa: S101
        keep = self.max_row_bytes - 28  # room for the overflow column's own pointer
        size = row_bytes(stored)
        moved: list[str] = []
        for col in reversed(list(stored)):
            if size <= keep:
                break
            if col in COMMON_COLUMNS or col in ("event", "event_text"):
                continue
            size -= row_bytes({col: stored[col]})
            moved.append(col)
        return moved

    def _arrow(self, columns: dict[str, list[Any]], kinds: dict[str, Kind]) -> tuple[pa.Table, list[str]]:
        import pyarrow as pa

        cols = [c for c in kinds if c in columns]
        arrays = {col: pa.array(columns[col], _arrow_type(kinds[col])) for col in cols}
        return pa.table(arrays), cols

    def _staged(self, col: str, kinds: dict[str, Kind], alias: str = "s") -> str:
        """A staged column as its target type (decimals travel as text)."""
        ref = f"{alias}.{self.wh.quote(col)}"
        return f"CAST({ref} AS {self.numbers.decimal_sql})" if kinds[col] == "decimal" else ref

    def _stage(self, table: pa.Table) -> str:
        name = f"{STAGE_PREFIX}{secrets.token_hex(4)}"
        self.wh.create_table(name, table, schema=self.schema, overwrite=True)
        return name

    def _unique(self, rows: TableRows) -> TableRows:
        seen: dict[str, int] = {}
        for i, values in enumerate(rows.values):
            row_id = values.get("id")
            if row_id is None or row_id in seen:
                self.stats.duplicates += 1
                continue
            seen[row_id] = i
        return rows if len(seen) == len(rows.values) else rows.pick(list(seen.values()))

    def _append(self, table: str, rows: TableRows) -> None:
        unique = self._unique(rows)
        if not unique.values:
            return
        cols = _columns_of(unique)
        kinds = self._plan_columns(table, cols, unique)
        fitted, rejects = self._fit_columns(table, unique, cols, kinds)
        data, cols_written = self._arrow(fitted, kinds)
        stage = self._stage(data)
        try:
            names = ", ".join(self.wh.quote(c) for c in cols_written)
            target, staged = self.q(table), self.q(stage)
            fresh = f"FROM {staged} s WHERE NOT EXISTS (SELECT 1 FROM {target} t WHERE t.id = s.id)"
            count = self._scalar(f"SELECT COUNT(*) {fresh}")
            self.write_rejects(rejects, table)
            values = ", ".join(self._staged(c, kinds) for c in cols_written)
            self.wh.raw_sql(f"INSERT INTO {target} ({names}) SELECT {values} {fresh}")
        finally:
            self.wh.drop_table(stage, self.schema)
        self.stats.rows_inserted[f"{self.schema}.{table}"] += count
        self.stats.duplicates += len(unique.values) - count

    def _upsert(self, table: str, rows: TableRows) -> None:
        """Merge rows into `users`/`accounts` on id: newer non-null values win over older ones."""
        far_past = datetime.min.replace(tzinfo=UTC)

        def received(i: int) -> datetime:
            value = rows.values[i].get("received_at")
            return value if isinstance(value, datetime) else far_past

        ordered = rows.pick(sorted(range(len(rows.values)), key=received))
        by_row = _columns_of(ordered)
        kinds = self._plan_columns(table, by_row, ordered)
        fitted, rejects = self._fit_columns(table, ordered, by_row, kinds)
        fitted.setdefault("received_at", [None] * len(ordered.values))  # the merge below compares it
        ids: dict[str, int] = {}  # id -> its row in the merged columns
        slots = [ids.setdefault(values["id"], len(ids)) for values in ordered.values]
        merged_cols: dict[str, list[Any]] = {}
        for col, values in fitted.items():
            merged_col: list[Any] = [None] * len(ids)
            for slot, value in zip(slots, values, strict=True):
                if value is not None:  # later (newer) rows win
                    merged_col[slot] = value
            merged_cols[col] = merged_col
        merged_cols["id"] = list(ids)
        data, cols = self._arrow(merged_cols, kinds)
        stage = self._stage(data)
        combined = f"{STAGE_PREFIX}{secrets.token_hex(4)}"
        target, staged = self.q(table), self.q(stage)
        newer = "(u.id IS NULL OR u.received_at IS NULL OR s.received_at >= u.received_at)"
        selects = []
        for col in kinds:
            c = self.wh.quote(col)
            if col == "id":
                selects.append(f"s.{c} AS {c}")
            elif col in cols:
                s = self._staged(col, kinds)
                selects.append(f"CASE WHEN {newer} THEN COALESCE({s}, u.{c}) ELSE COALESCE(u.{c}, {s}) END AS {c}")
            else:
                selects.append(f"u.{c} AS {c}")
        try:
            existing = self._scalar(
                f"SELECT COUNT(*) FROM {staged} s WHERE EXISTS (SELECT 1 FROM {target} t WHERE t.id = s.id)"
            )
            self.write_rejects(rejects, None)
            self.wh.raw_sql(
                f"CREATE TABLE {self.q(combined)} AS SELECT {', '.join(selects)} "
                f"FROM {staged} s LEFT JOIN {target} u ON u.id = s.id"
            )
            names = ", ".join(self.wh.quote(c) for c in kinds)
            self._atomic([
                f"DELETE FROM {target} WHERE id IN (SELECT id FROM {staged})",
                f"INSERT INTO {target} ({names}) SELECT {names} FROM {self.q(combined)}",
            ])
        finally:
            self.wh.drop_table(stage, self.schema)
            self.wh.drop_table(combined, self.schema)
        self.stats.rows_inserted[f"{self.schema}.{table}"] += len(ids) - existing

    def _atomic(self, statements: list[str]) -> None:
        """Run statements as one transaction, so a crash cannot leave a table half-replaced.

        (``Warehouse.execute_atomically``: an explicit transaction on DuckDB).
        """
        self.wh.execute_atomically(statements)

    def _scalar(self, query: str) -> int:
        table = self.wh.sql(query)
        value = table.to_pyarrow().column(0)[0].as_py()
        return int(value or 0)


def _columns_of(rows: TableRows) -> dict[str, list[Any]]:
    """Each column's values, one per row (None where a row has none), in order of first appearance."""
    dicts = rows.values
    order = dict.fromkeys(chain.from_iterable(dicts))
    return {col: list(map(dict.get, dicts, repeat(col))) for col in order}  # C loops, no bytecode per cell


def _base_columns(table: str, rows: TableRows) -> dict[str, Kind]:
    """Columns a new table always gets, so queries on them work before a value arrives."""
    if table in UPSERT_TABLES:
        return {"id": "varchar", "received_at": "timestamp", "uuid_ts": "timestamp"}
    base: dict[str, Kind] = {col: ("timestamp" if col in TIME_COLUMNS else "varchar") for col in COMMON_COLUMNS}
    if any("event_text" in row for row in rows.values[:1]):
        base["event"] = "varchar"
        base["event_text"] = "varchar"
    return base
