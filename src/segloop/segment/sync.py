"""Sync state in the warehouse: send only new, changed and unacknowledged rows; resume after a kill.

For each Segment node, two tables live in the warehouse beside the data:

- ``_segloop_state__<pipeline>__<node>``: per customer key, the payload hash last sent, its
  status (``sent``, ``rejected``, ``failed``, ``removed``), message id, last error, attempts
  and the run that sent it;
- ``_segloop_log__<pipeline>__<node>``: an append-only checkpoint log, written as batches are
  acknowledged. It is folded into the state table at the start and end of each run, so a
  run killed with ``kill -9`` loses at most the acknowledgements not yet written, and
  those rows are re-sent with the same message ids (Segment drops them as duplicates).

A message id hashes the key, the payload and the key's last *acknowledged* message id
(``message_id`` in the state, which a failed or rejected send leaves as it was): a retry
has the same three and so the same id, any send after an acknowledged one a new id.

The diff is one outer join of the input with the state on the customer key, computed by SQL
inside the warehouse; only the rows to send (and the keys gone since the last run) are
materialized, and only they are read into Python, in bounded chunks. Work per run is one
pass over the input and the state plus what is sent, so a re-run with 1% changed costs a
few percent of the full sync (bench/sync.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

if TYPE_CHECKING:  # pragma: no cover
    import ibis.expr.types as ir
    import pyarrow as pa

    from segloop.warehouses import Warehouse

T = TypeVar("T")
HeldKeys = Callable[["ir.StringValue"], "ir.BooleanValue"]  # key -> whether the node holds it back
NEW, CHANGED, RETRY, UNCHANGED, NO_KEY, DUPLICATE = "new", "changed", "retry", "unchanged", "no_key", "duplicate"
HELD = "held"  # a key the node holds back (holdout group, unknown id): never sent, never removed
SEND_CATEGORIES = (NEW, CHANGED, RETRY, NO_KEY)
SENT, REJECTED, FAILED, REMOVED = "sent", "rejected", "failed", "removed"
GONE_SENT, GONE = "gone_sent", "gone"  # keys in the state but not in the input (sent before, or not)
NULL_MARK = "\u2400"  # stands for NULL inside the hashed row text
SEPARATOR = "\u241f"  # between columns in the hashed row text
BUCKET_CHARS = 4  # hex characters of the key hash that chunk the rows to send (remote warehouses)
STATE_COLUMNS = ("key", "payload_hash", "status", "message_id", "last_error", "attempts", "run_id", "updated_at")


def _state_schema() -> Any:
    import ibis

    return ibis.schema(
        {
            "key": "string",
            "payload_hash": "string",
            "status": "string",
            "message_id": "string",
            "last_error": "string",
            "attempts": "int64",
            "run_id": "string",
            "updated_at": "timestamp",
        }
    )


def _key_expr(source: ir.Table, key_columns: Sequence[str]) -> ir.StringValue:
    """The customer key as one string: the key column, or key columns joined with `|`."""
    import ibis

    parts = [source[c].cast("string") for c in key_columns]
    return parts[0] if len(parts) == 1 else ibis.literal("|").join(parts)


def _deduplicated(keyed: ir.Table) -> ir.Table:
    """One row per key (the one with the smallest hash); rows without a key all kept.

    Only used when the input has duplicate or missing keys (``plan`` checks first): a
    distinct and a grouped aggregate over the keyed rows, no sort. Rows without a key are
    never collapsed, even when identical: each one is rejected, and counted, on its own.
    """
    keyed_rows = keyed.filter(keyed._key.notnull()).distinct()
    first = keyed_rows.group_by(_fkey=keyed_rows._key).aggregate(_first=keyed_rows._hash.min())
    chosen = keyed_rows.join(first, [keyed_rows._key == first._fkey, keyed_rows._hash == first._first])
    chosen = chosen.drop("_fkey", "_first")
    return chosen.union(keyed.filter(keyed._key.isnull()), distinct=False)


@dataclass
class SyncPlan:
    """What a run will do: counts by category and the warehouse table holding rows to send."""

    counts: dict[str, int]
    pending_table: str
    pending_rows: int
    removed_keys: int
    mode: str

    @property
    def to_send(self) -> int:
        return self.pending_rows


@dataclass
class Ack:
    """The outcome of one message, as recorded in the checkpoint log."""

    key: str
    payload_hash: str
    status: str
    message_id: str | None = None
    error: str | None = None


@dataclass
class SyncState:
    """The sync state of one Segment node in one warehouse."""

    warehouse: Warehouse
    pipeline: str
    node: str
    run_id: str = ""
    CHUNK_ROWS: ClassVar[int] = 5_000
    DUCKDB_SETTINGS: ClassVar[dict[str, str]] = {"preserve_insertion_order": "false", "memory_limit": "64MB"}
    """Set on an embedded DuckDB while a sync runs (``session``), restored after. No statement
    here needs insertion order; the memory limit makes DuckDB evict cached blocks and spill
    joins and aggregates to its temp folder instead of holding a 1M-row diff in memory
    (bench/sync.py: peak RSS). A ``memory_limit:`` in the warehouse config wins."""
    SENDING_MEMORY_LIMIT: ClassVar[str] = "32MB"
    """The cap while rows are sent (``sending``): only small reads and log appends run then."""
    RELEASE_EVERY_ROWS: ClassVar[int] = 50_000
    _keys: list[str] = field(default_factory=list)
    _hashes: list[str] = field(default_factory=list)
    _statuses: list[str] = field(default_factory=list)
    _message_ids: list[str | None] = field(default_factory=list)
    _errors: list[str | None] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _sessions: int = 0
    _cap: str | None = None
    _uncapped: str = ""
    _since_release: int = 0

    # -- table names ---------------------------------------------------------------------

    @property
    def state_table(self) -> str:
        return f"_segloop_state__{self.pipeline}__{self.node}"

    @property
    def log_table(self) -> str:
        return f"_segloop_log__{self.pipeline}__{self.node}"

    @property
    def merge_table(self) -> str:
        return f"_segloop_merge__{self.pipeline}__{self.node}"

    @property
    def pending_table(self) -> str:
        return f"_segloop_pending__{self.pipeline}__{self.node}"

    @property
    def _embedded(self) -> bool:
        """DuckDB in this process: results stream over a second cursor, settings apply."""
        return self.warehouse.EMBEDDED

    def ensure(self) -> None:
        wh = self.warehouse
        for name in (self.state_table, self.log_table):
            if not wh.has_table(name):
                wh.create_empty(name, _state_schema())

    def reset(self) -> None:
        """Forget what was sent: the next run sends every row, as new messages.

        The keys' last acknowledged message ids are kept (every key is marked ``removed``),
        because they are part of the next ids: were the state dropped, the next run would
        repeat the first sync's ids, and Segment would drop those it still remembers.
        """
        wh = self.warehouse
        if wh.has_table(self.state_table):
            self.ensure()
            self.compact()
            wh.raw_sql(f"UPDATE {wh.qualified(self.state_table)} SET status = '{REMOVED}' WHERE status <> '{REMOVED}'")
        for name in (self.log_table, self.pending_table, self.merge_table):
            wh.drop_table(name)

    # -- small helpers -------------------------------------------------------------------

    def _rows(self, expr: ir.Table) -> list[tuple[Any, ...]]:
        """A small result as tuples (on DuckDB straight from the connection: Ibis's result
        path imports pandas, ~50 MB and half a second, for a handful of numbers)."""
        wh = self.warehouse
        if self._embedded:
            return list(wh.raw.execute(str(wh.con.compile(expr))).fetchall())
        table = wh.to_arrow(expr)
        return [tuple(row.values()) for row in table.to_pylist()]

    @contextmanager
    def session(self) -> Iterator[None]:
        """Apply ``DUCKDB_SETTINGS`` on an embedded DuckDB for the block, then restore them.

        The Segment node wraps a whole run (plan, send, compaction) in one session; ``plan``
        and ``compact`` open their own when called alone.
        """
        if not self._embedded or self._sessions or _other_runs_in_progress():
            self._sessions += 1
            try:
                yield
            finally:
                self._sessions -= 1
            return
        raw = self.warehouse.raw
        wanted = dict(self.DUCKDB_SETTINGS)
        cap = wanted.pop("memory_limit", None)
        if getattr(self.warehouse.config, "memory_limit", None):
            cap = None  # the user's limit stands
        before = {name: raw.execute(f"SELECT current_setting('{name}')").fetchall()[0][0] for name in wanted}
        for name, value in wanted.items():
            raw.execute(f"SET {name} = '{value}'")
        # Restored by value: DuckDB's RESET memory_limit leaves the buffer pool's limit as it was.
        # fetchall, not fetchone: duckdb 2 blocks the connection until a result is read out.
        self._uncapped = raw.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
        if cap and self._set_memory_limit(cap):
            self._cap = cap
        self._sessions += 1
        try:
            yield
        finally:
            self._sessions -= 1
            if self._cap:
                self._set_memory_limit(self._uncapped)  # raising a limit always works
                self._cap = None
            for name, value in before.items():
                raw.execute(f"SET {name} = '{value}'")

    @contextmanager
    def sending(self) -> Iterator[None]:
        """Within a capped session, the lower ``SENDING_MEMORY_LIMIT`` while rows are sent."""
        planned = self._cap
        if not planned or not self._set_memory_limit(self.SENDING_MEMORY_LIMIT):
            yield
            return
        self._cap = self.SENDING_MEMORY_LIMIT
        try:
            yield
        finally:
            self._cap = planned
            self._set_memory_limit(planned)

    def _set_memory_limit(self, value: str) -> bool:
        """``SET memory_limit``; false when DuckDB cannot free enough memory to lower it."""
        try:
            self.warehouse.raw.execute(f"SET memory_limit = '{value}'")
        except Exception as exc:
            if _out_of_memory(exc):
                return False
            raise
        return True

    def _roomy(self, statement: Callable[[], T]) -> T:
        """Run ``statement`` under the session's memory limit; if DuckDB cannot fit it there
        (a bigger input than the limit allows, even spilling), run it again with the limit
        the warehouse had before. A big input costs memory, never a failed sync."""
        try:
            return statement()
        except Exception as exc:
            if self._cap is None or not _out_of_memory(exc):
                raise
        self._set_memory_limit(self._uncapped)
        try:
            return statement()
        finally:
            self._set_memory_limit(self._cap)

    def release_memory(self) -> None:
        """Give back memory an embedded DuckDB keeps after a large statement.

        DuckDB holds freed buffers until its limit is set again (measured: a 1M-row diff
        left ~90 MB resident after the statement ended); re-applying the current
        ``memory_limit`` flushes them. Cheap, and a no-op elsewhere.
        """
        self._since_release = 0
        if self._cap:
            self._set_memory_limit(self._cap)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One transaction on DuckDB (a kill between statements leaves the state whole);
        other warehouses run the statements as they come (``Warehouse.transaction``)."""
        with self.warehouse.transaction():
            yield

    # -- planning ------------------------------------------------------------------------

    def keyed(self, source: ir.Table, key_columns: Sequence[str], payload_columns: Sequence[str],
              fingerprint: str) -> ir.Table:
        """``source`` plus ``_key`` (the customer key) and ``_hash`` (of mapping + payload)."""
        import ibis

        key = _key_expr(source, key_columns)
        text = ibis.literal(fingerprint)
        for column in payload_columns:
            text = text.concat(ibis.literal(SEPARATOR), source[column].cast("string").fill_null(NULL_MARK))
        return source.mutate(_key=key, _hash=self.warehouse.md5_hex(text))

    def classify(self, source: ir.Table, key_columns: Sequence[str], payload_columns: Sequence[str],
                 fingerprint: str, dedupe: bool = True, held: HeldKeys | None = None) -> ir.Table:
        """Input rows and state keys with ``_key``, ``_hash``, ``_category`` and ``_prev_id``.

        One outer join on the key: input rows are new/changed/retry/unchanged/no_key; keys
        only in the state are ``gone_sent`` (delivered before: ``on_removed`` applies) or
        ``gone``. ``_prev_id`` is the key's last acknowledged messageId (part of the next
        message's id, see ``messages.render_row``). ``dedupe=False`` skips collapsing
        duplicate keys, for inputs known to have one row per key (``plan`` counts first).
        ``held(key)`` marks keys held back (``held``), in the input and the state: never sent, nor removed.
        """
        import ibis

        keyed = self.keyed(source, key_columns, payload_columns, fingerprint)
        rows = (_deduplicated(keyed) if dedupe else keyed).mutate(_in=ibis.literal(1))
        state = self.warehouse.table(self.state_table)
        state = state.select(_s_key=state.key, _s_hash=state.payload_hash, _s_status=state.status,
                             _prev_id=state.message_id)
        joined = rows.outer_join(state, rows._key == state._s_key)
        only_in_state = joined._in.isnull()
        # Acknowledged at some time and not removed since: Segment has (a version of) this key.
        delivered = (joined._s_status == SENT) | (joined._prev_id.notnull() & (joined._s_status != REMOVED))
        key = joined._key.fill_null(joined._s_key)
        holds = [(key.notnull() & held(key), HELD)] if held is not None else []
        category = ibis.cases(
            *holds,
            (only_in_state & delivered, GONE_SENT),
            (only_in_state, GONE),
            (joined._key.isnull(), NO_KEY),
            (joined._s_key.isnull() | (joined._s_status == REMOVED), NEW),
            (joined._s_hash != joined._hash, CHANGED),
            (joined._s_status == FAILED, RETRY),
            else_=UNCHANGED,
        )
        return joined.mutate(
            _key=key, _hash=joined._hash.fill_null(joined._s_hash), _category=category,
        ).drop("_in", "_s_key", "_s_hash", "_s_status")

    def plan(self, source: ir.Table, key_columns: Sequence[str], payload_columns: Sequence[str],
             fingerprint: str, mode: str = "diff", held: HeldKeys | None = None, held_keys: int = 0) -> SyncPlan:
        """Fold old checkpoints, classify rows and materialize only the rows to send.

        Three statements: a count of rows and distinct keys (when every row has its own
        key, the diff needs no de-duplication), the outer join written as the pending table
        (rows to send plus keys gone since the last sent run), and counts by category over
        that (small) table. Unchanged and duplicate rows are counted, never written.
        ``held`` (``classify``) keeps keys out of the pending table; the caller counts them (``held_keys``).
        """
        self.ensure()
        self.compact()
        wh = self.warehouse
        key = _key_expr(source, key_columns)
        [(rows, keys)] = self._roomy(lambda: self._rows(source.aggregate(_rows=source.count(), _keys=key.nunique())))
        rows, keys = int(rows), int(keys)
        dedupe = rows != keys
        classified = self.classify(source, key_columns, payload_columns, fingerprint, dedupe=dedupe, held=held)
        kept = [*SEND_CATEGORIES, GONE_SENT, *([UNCHANGED] if mode == "full" else [])]
        pending = classified.filter(classified._category.isin(kept))
        if not self._embedded:  # remote warehouses read the pending rows in key-hash ranges
            pending = pending.mutate(
                _bucket=wh.md5_hex(pending._key.fill_null("")).substr(0, BUCKET_CHARS))
        self._roomy(lambda: wh.create_table(self.pending_table, pending))
        table = wh.table(self.pending_table)
        found = self._rows(table.group_by("_category").aggregate(n=table.count()))
        counts = {str(category): int(n) for category, n in found}
        removed = counts.pop(GONE_SENT, 0)
        if mode != "full":
            counts[UNCHANGED] = keys - held_keys - sum(counts.get(c, 0) for c in (NEW, CHANGED, RETRY))
        if held_keys:
            counts[HELD] = held_keys
        counts[DUPLICATE] = rows - keys - counts.get(NO_KEY, 0)  # identical rows collapse too
        counts = {c: n for c, n in counts.items() if n}
        self.release_memory()
        pending_rows = sum(counts.get(c, 0) for c in (*SEND_CATEGORIES, *([UNCHANGED] if mode == "full" else [])))
        return SyncPlan(counts=counts, pending_table=self.pending_table, pending_rows=pending_rows,
                        removed_keys=removed, mode=mode)

    # -- reading what to send ------------------------------------------------------------

    def pending_chunks(self, rows: int | None = None) -> Iterator[pa.Table]:
        """Rows to send in bounded chunks; each chunk is its own short query, so checkpoints
        can be written on the same connection between chunks.

        On DuckDB a chunk is a range of row ids of the pending table; elsewhere a range of
        the key hash (``_bucket``).
        """
        return self._chunks(rows or self.CHUNK_ROWS, gone=False)

    def removed_chunks(self, rows: int | None = None) -> Iterator[pa.Table]:
        """Keys gone since they were sent (``key``, ``payload_hash``, ``previous_id``), in bounded chunks."""
        for chunk in self._chunks(rows or self.CHUNK_ROWS, gone=True):
            yield chunk.select(["_key", "_hash", "_prev_id"]).rename_columns(["key", "payload_hash", "previous_id"])

    def sample(self, rows: int) -> pa.Table:
        """The first rows to send by key (for previews): a top-n, not a sort of everything."""
        wh = self.warehouse
        pending = wh.table(self.pending_table)
        wanted = pending.filter(pending._category != GONE_SENT).order_by("_key").limit(rows)
        if self._embedded:
            result = _duckdb_reader(wh.raw.sql(str(wh.con.compile(wanted))), rows).read_all()
            wh.rows_fetched += result.num_rows
            return result
        return wh.to_arrow(wanted.drop("_bucket"))

    def _chunks(self, size: int, gone: bool) -> Iterator[pa.Table]:

        wh = self.warehouse
        pending = wh.table(self.pending_table)
        wanted = pending._category == GONE_SENT if gone else pending._category != GONE_SENT
        if self._embedded:
            # Short queries over row-id ranges (DuckDB skips row groups outside the range),
            # not one long streaming query: an open read transaction would stop DuckDB from
            # checkpointing, and the log appended meanwhile would pile up in memory.
            raw = wh.raw
            table = wh.qualified(self.pending_table)
            [(low, high)] = raw.execute(f"SELECT min(rowid), max(rowid) FROM {table}").fetchall()
            if low is None:
                return
            where = f"_category {'=' if gone else '<>'} '{GONE_SENT}'"

            def read(start: int) -> pa.Table:
                query = f"SELECT * FROM {table} WHERE rowid >= {start} AND rowid < {start + size} AND {where}"
                return _duckdb_reader(raw.sql(query), size).read_all()

            for start in range(int(low), int(high) + 1, size):
                chunk = self._roomy(partial(read, start))
                if chunk.num_rows:
                    wh.rows_fetched += chunk.num_rows
                    yield chunk
            return
        total = wh.count(pending.filter(wanted))
        space = 16**BUCKET_CHARS
        chunks = max(1, min(space, -(-total // size)))
        bounds = [f"{space * i // chunks:0{BUCKET_CHARS}x}" for i in range(chunks)]
        for i, low in enumerate(bounds):
            condition = wanted & (pending._bucket >= low)
            if i + 1 < chunks:
                condition &= pending._bucket < bounds[i + 1]
            chunk = wh.to_arrow(pending.filter(condition).order_by(["_bucket", "_key"]).drop("_bucket"))
            if chunk.num_rows:
                yield chunk

    # -- checkpoints ---------------------------------------------------------------------

    def record(self, acks: Sequence[Ack]) -> None:
        """Buffer acknowledgements (any thread); ``checkpoint`` writes them to the log table."""
        with self._lock:
            for a in acks:
                self._keys.append(a.key)
                self._hashes.append(a.payload_hash)
                self._statuses.append(a.status)
                self._message_ids.append(a.message_id)
                self._errors.append(a.error)

    def record_many(self, keys: Sequence[str], hashes: Sequence[str], statuses: Sequence[str],
                    message_ids: Sequence[str | None], errors: Sequence[str | None]) -> None:
        """``record`` for column lists (the sender's hot path: no object per message)."""
        with self._lock:
            self._keys.extend(keys)
            self._hashes.extend(hashes)
            self._statuses.extend(statuses)
            self._message_ids.extend(message_ids)
            self._errors.extend(errors)

    @property
    def buffered(self) -> int:
        return len(self._keys)

    def checkpoint(self) -> int:
        """Append buffered acknowledgements to the log; returns how many were written."""
        import pyarrow as pa

        with self._lock:
            keys, hashes, statuses, ids, errors = (self._keys, self._hashes, self._statuses,
                                                   self._message_ids, self._errors)
            self._keys, self._hashes, self._statuses, self._message_ids, self._errors = [], [], [], [], []
        if not keys:
            return 0
        n = len(keys)
        now = datetime.now(UTC).replace(tzinfo=None)
        table = pa.table(
            {
                "key": pa.array(keys, pa.string()),
                "payload_hash": pa.array(hashes, pa.string()),
                "status": pa.array(statuses, pa.string()),
                "message_id": pa.array(ids, pa.string()),
                "last_error": pa.array([e[:1000] if e else None for e in errors] if any(errors) else errors,
                                       pa.string()),
                "attempts": pa.repeat(pa.scalar(1, pa.int64()), n),
                "run_id": pa.repeat(pa.scalar(self.run_id, pa.string()), n),
                "updated_at": pa.repeat(pa.scalar(now, pa.timestamp("us")), n),
            }
        )
        self._roomy(lambda: self.warehouse.insert(self.log_table, table))
        self._since_release += n
        if self._since_release >= self.RELEASE_EVERY_ROWS:  # log inserts pile up buffers too
            self.release_memory()
        return n

    def compact(self) -> None:
        """Fold the log into the state table: the latest row per key wins, attempts add up.

        Work is proportional to the log (what the last runs sent), not to the state. A run
        sends each key at most once, so the log of this run (or of any run, once checked)
        has one row per key and is copied as it is; logs of several runs (a killed run, then this one) keep the latest
        row per key (a grouped arg-max, no sort). Into an empty state (the first run) the
        rows are appended; otherwise they replace the keys' state rows.
        """
        wh = self.warehouse
        log = wh.table(self.log_table)
        if wh.count(log) == 0:
            return
        with self.session():
            self._roomy(self._fold)
            self.release_memory()

    def _fold(self) -> None:
        wh = self.warehouse
        log = wh.table(self.log_table)
        # One run sends each key at most once: a log written only by this run needs no
        # check (min/max stream; counting distinct keys builds a hash table of them).
        [(first_run, last_run)] = self._rows(log.aggregate(a=log.run_id.min(), b=log.run_id.max()))
        if first_run == last_run == self.run_id:
            rows = keys = 0
        else:
            [(rows, keys)] = self._rows(log.aggregate(n=log.count(), k=log.key.nunique()))
        if rows == keys:
            latest = log.mutate(log_attempts=log.attempts)
        else:
            latest = log.group_by("key").aggregate(
                payload_hash=log.payload_hash.argmax(log.updated_at),
                status=log.status.argmax(log.updated_at),
                message_id=log.message_id.argmax(log.updated_at),
                last_error=log.last_error.argmax(log.updated_at),
                log_attempts=log.attempts.sum(),
                run_id=log.run_id.argmax(log.updated_at),
                updated_at=log.updated_at.max(),
            )
        target, log_q = wh.qualified(self.state_table), wh.qualified(self.log_table)
        columns = ", ".join(STATE_COLUMNS)
        state = wh.table(self.state_table)
        if wh.count(state) == 0:
            first = latest.mutate(attempts=latest.log_attempts).select(*STATE_COLUMNS)
            with self._transaction():
                wh.raw_sql(f"INSERT INTO {target} ({columns}) {wh.compile(first)}")
                wh.raw_sql(f"DELETE FROM {log_q}")
            return
        old = state.select(_old_key=state.key, _old_attempts=state.attempts)
        merged = latest.left_join(old, latest.key == old._old_key).mutate(
            attempts=lambda t: t.log_attempts + t._old_attempts.fill_null(0)
        ).select(*STATE_COLUMNS)
        merge_table = self.merge_table
        wh.create_table(merge_table, merged)
        merge = wh.qualified(merge_table)
        with self._transaction():
            wh.raw_sql(f"DELETE FROM {target} WHERE key IN (SELECT key FROM {merge})")
            wh.raw_sql(f"INSERT INTO {target} ({columns}) SELECT {columns} FROM {merge}")
            wh.raw_sql(f"DELETE FROM {log_q}")
        wh.drop_table(merge_table)

    def statuses(self) -> dict[str, int]:
        """Keys per status in the (compacted plus logged) state, for reports and tests."""
        self.compact()
        state = self.warehouse.table(self.state_table)
        return {str(status): int(n) for status, n in self._rows(state.group_by("status").aggregate(n=state.count()))}


def _out_of_memory(exc: BaseException | None) -> bool:
    """Whether DuckDB ran out of memory somewhere in ``exc``'s chain (WarehouseError wraps it)."""
    while exc is not None:
        if type(exc).__name__ == "OutOfMemoryException":
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _duckdb_reader(result: Any, batch_rows: int) -> pa.RecordBatchReader:
    """A DuckDB relation as Arrow record batches of ``batch_rows`` (duckdb >= 1.4 renamed it;
    a relation, not an execute() result, which duckdb 2 would copy once more)."""
    to_reader = getattr(result, "to_arrow_reader", None)
    if to_reader is not None:
        return to_reader(batch_rows)  # type: ignore[no-any-return]
    return result.fetch_record_batch(batch_rows)  # type: ignore[no-any-return]


def _other_runs_in_progress() -> bool:
    """True when another pipeline run shares this process (and so the DuckDB database):
    DuckDB's memory_limit and preserve_insertion_order apply to the whole database, so the
    sync leaves them alone rather than constrain the other run's queries."""
    from segloop.locks import runs_in_progress

    return runs_in_progress() > 1
