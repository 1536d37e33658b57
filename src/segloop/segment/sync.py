"""Sync state in the warehouse: send only new, changed and unacknowledged rows; resume after a kill.

For each Segment node, two tables live in the warehouse beside the data:

- ``_segloop_state__<pipeline>__<node>``: per customer key, the payload hash last sent, its
  status (``sent``, ``rejected``, ``failed``, ``removed``), message id, last error, attempts
  and the run that sent it;
- ``_segloop_log__<pipeline>__<node>``: an append-only checkpoint log, written as batches are
  acknowledged. It is folded into the state table at the start and end of each run, so a
  run killed with ``kill -9`` loses at most the acknowledgements not yet written, and
  those rows are re-sent with the same message ids (Segment drops them as duplicates).

The diff is an anti-join on key + hash computed by SQL inside the warehouse; only the rows to
send are streamed to Python, in bounded chunks.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # pragma: no cover
    import ibis.expr.types as ir
    import pyarrow as pa

    from segloop.warehouse import Warehouse

NEW, CHANGED, RETRY, UNCHANGED, NO_KEY, DUPLICATE = "new", "changed", "retry", "unchanged", "no_key", "duplicate"
SEND_CATEGORIES = (NEW, CHANGED, RETRY, NO_KEY)
SENT, REJECTED, FAILED, REMOVED = "sent", "rejected", "failed", "removed"
NULL_MARK = "\u2400"  # stands for NULL inside the hashed row text
SEPARATOR = "\u241f"  # between columns in the hashed row text
BUCKET_CHARS = 4  # hex characters of the key hash that chunk the rows to send


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


def _md5(value: ir.StringValue, dialect: str) -> ir.StringValue:
    import ibis

    @ibis.udf.scalar.builtin(name="md5")
    def md5(x: str) -> str:  # type: ignore[empty-body]
        ...

    @ibis.udf.scalar.builtin(name="md5")
    def md5_bytes(x: str) -> bytes:  # type: ignore[empty-body]
        ...

    @ibis.udf.scalar.builtin(name="to_hex")
    def to_hex(x: bytes) -> str:  # type: ignore[empty-body]
        ...

    if dialect == "bigquery":  # BigQuery's MD5 returns BYTES
        return to_hex(md5_bytes(value))
    return md5(value)


def _key_expr(source: ir.Table, key_columns: Sequence[str]) -> ir.StringValue:
    """The customer key as one string: the key column, or key columns joined with `|`."""
    import ibis

    parts = [source[c].cast("string") for c in key_columns]
    return parts[0] if len(parts) == 1 else ibis.literal("|").join(parts)


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
    CHUNK_ROWS: ClassVar[int] = 20_000
    _buffer: list[Ack] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

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

    def ensure(self) -> None:
        wh = self.warehouse
        for name in (self.state_table, self.log_table):
            if not wh.has_table(name):
                wh.con.create_table(name, schema=_state_schema(), database=wh.schema)

    def reset(self) -> None:
        """Forget everything: the next run sends every row."""
        for name in (self.state_table, self.log_table, self.pending_table, self.merge_table):
            self.warehouse.drop_table(name)

    # -- planning ------------------------------------------------------------------------

    def classify(self, source: ir.Table, key_columns: Sequence[str], payload_columns: Sequence[str],
                 fingerprint: str) -> ir.Table:
        """``source`` plus ``_key``, ``_hash`` and ``_category`` (new/changed/retry/...)."""
        import ibis

        dialect = self.warehouse.dialect
        key = _key_expr(source, key_columns)
        text = ibis.literal(fingerprint)
        for column in payload_columns:
            text = text.concat(ibis.literal(SEPARATOR), source[column].cast("string").fill_null(NULL_MARK))
        # Identical rows collapse into one (plan() counts them as duplicates).
        keyed = source.mutate(_key=key, _hash=_md5(text, dialect)).distinct()
        # Duplicate keys: the row with the smallest hash is sent, the others are flagged.
        # A grouped aggregate and a join, not a window: no sort of the whole input.
        per_key = keyed.group_by(_fkey=keyed._key).aggregate(_first=keyed._hash.min(), _n=keyed.count())
        ranked = keyed.left_join(per_key, keyed._key == per_key._fkey)
        state = self.warehouse.table(self.state_table)
        state = state.select(_s_key=state.key, _s_hash=state.payload_hash, _s_status=state.status,
                             _s_attempts=state.attempts)
        joined = ranked.left_join(state, ranked._key == state._s_key)
        category = ibis.cases(
            (joined._key.isnull(), NO_KEY),
            ((joined._n > 1) & (joined._hash > joined._first), DUPLICATE),
            (joined._s_key.isnull() | (joined._s_status == REMOVED), NEW),
            (joined._s_hash != joined._hash, CHANGED),
            (joined._s_status == FAILED, RETRY),
            else_=UNCHANGED,
        )
        return joined.mutate(
            _category=category,
            _attempts=joined._s_attempts.fill_null(0),
            # Chunks are ranges of this key hash prefix: uniform, and no sort needed.
            _bucket=_md5(joined._key.fill_null(""), dialect).substr(0, BUCKET_CHARS),
        ).drop("_s_key", "_s_hash", "_s_status", "_s_attempts", "_fkey", "_first", "_n")

    def plan(self, source: ir.Table, key_columns: Sequence[str], payload_columns: Sequence[str],
             fingerprint: str, mode: str = "diff") -> SyncPlan:
        """Fold old checkpoints, classify rows and materialize the rows to send."""
        self.ensure()
        self.compact()
        classified = self.classify(source, key_columns, payload_columns, fingerprint)
        categories = (*SEND_CATEGORIES, UNCHANGED) if mode == "full" else SEND_CATEGORIES
        # Materialize the classification once; counts and the pending rows read it.
        self.warehouse.create_table(self.pending_table, classified.filter(
            classified._category.isin([*categories, DUPLICATE, UNCHANGED])
        ))
        pending_all = self.warehouse.table(self.pending_table)
        counts_table = self.warehouse.to_arrow(
            pending_all.group_by("_category").aggregate(n=pending_all.count())
        )
        counts = {row["_category"]: int(row["n"]) for row in counts_table.to_pylist()}
        identical = self.warehouse.count(source) - sum(counts.values())
        if identical:
            counts[DUPLICATE] = counts.get(DUPLICATE, 0) + identical
        self.warehouse.raw_sql(
            f"DELETE FROM {self.warehouse.qualified(self.pending_table)} WHERE _category NOT IN "
            f"({', '.join(repr(c) for c in categories)})"
        )
        pending_rows = sum(counts.get(c, 0) for c in categories)
        return SyncPlan(counts=counts, pending_table=self.pending_table, pending_rows=pending_rows,
                        removed_keys=self.count_removed(source, key_columns), mode=mode)

    def removed_keys_expr(self, source: ir.Table, key_columns: Sequence[str]) -> ir.Table:
        """Keys sent before that are no longer in the input."""

        key = _key_expr(source, key_columns)
        present = source.select(_key=key).distinct()
        state = self.warehouse.table(self.state_table)
        sent = state.filter(state.status == SENT)
        return sent.anti_join(present, sent.key == present._key).select("key", "payload_hash")

    def count_removed(self, source: ir.Table, key_columns: Sequence[str]) -> int:
        return self.warehouse.count(self.removed_keys_expr(source, key_columns))

    def pending_chunks(self, rows: int | None = None) -> Iterator[pa.Table]:
        """Rows to send in bounded chunks; each chunk is its own query (a range of the key
        hash), so checkpoints can be written to the same connection between chunks."""
        wh = self.warehouse
        size = rows or self.CHUNK_ROWS
        pending = wh.table(self.pending_table)
        total = wh.count(pending)
        space = 16**BUCKET_CHARS
        chunks = max(1, min(space, -(-total // size)))
        bounds = [f"{space * i // chunks:0{BUCKET_CHARS}x}" for i in range(chunks)]
        for i, low in enumerate(bounds):
            condition = pending._bucket >= low
            if i + 1 < chunks:
                condition &= pending._bucket < bounds[i + 1]
            chunk = wh.to_arrow(pending.filter(condition).order_by(["_bucket", "_key"]))
            if chunk.num_rows:
                yield chunk

    # -- checkpoints ---------------------------------------------------------------------

    def record(self, acks: Sequence[Ack]) -> None:
        """Buffer acknowledgements (any thread); ``checkpoint`` writes them to the log table."""
        with self._lock:
            self._buffer.extend(acks)

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def checkpoint(self) -> int:
        """Append buffered acknowledgements to the log; returns how many were written."""
        import pyarrow as pa

        with self._lock:
            acks, self._buffer = self._buffer, []
        if not acks:
            return 0
        now = datetime.now(UTC).replace(tzinfo=None)
        table = pa.table(
            {
                "key": [a.key for a in acks],
                "payload_hash": [a.payload_hash for a in acks],
                "status": [a.status for a in acks],
                "message_id": [a.message_id for a in acks],
                "last_error": [a.error[:1000] if a.error else None for a in acks],
                "attempts": pa.array([1] * len(acks), pa.int64()),
                "run_id": [self.run_id] * len(acks),
                "updated_at": pa.array([now] * len(acks), pa.timestamp("us")),
            }
        )
        self.warehouse.insert(self.log_table, table)
        return len(acks)

    def compact(self) -> None:
        """Fold the log into the state table: the latest row per key wins, attempts add up.

        Work is proportional to the log (what the last runs sent), not to the state: the
        latest log row per key (a grouped arg-max, no sort) replaces the key's state row.
        """
        wh = self.warehouse
        log = wh.table(self.log_table)
        if wh.count(log) == 0:
            return
        latest = log.group_by("key").aggregate(
            payload_hash=log.payload_hash.argmax(log.updated_at),
            status=log.status.argmax(log.updated_at),
            message_id=log.message_id.argmax(log.updated_at),
            last_error=log.last_error.argmax(log.updated_at),
            log_attempts=log.attempts.sum(),
            run_id=log.run_id.argmax(log.updated_at),
            updated_at=log.updated_at.max(),
        )
        state = wh.table(self.state_table)
        old = state.select(_old_key=state.key, _old_attempts=state.attempts)
        merged = latest.left_join(old, latest.key == old._old_key).mutate(
            attempts=lambda t: t.log_attempts + t._old_attempts.fill_null(0)
        ).select(*_state_schema().names)
        merge_table = self.merge_table
        wh.create_table(merge_table, merged)
        target, merge, log_q = (wh.qualified(self.state_table), wh.qualified(merge_table),
                                wh.qualified(self.log_table))
        columns = ", ".join(_state_schema().names)
        wh.raw_sql(f"DELETE FROM {target} WHERE key IN (SELECT key FROM {merge})")
        wh.raw_sql(f"INSERT INTO {target} ({columns}) SELECT {columns} FROM {merge}")
        wh.raw_sql(f"DELETE FROM {log_q}")
        wh.drop_table(merge_table)

    def statuses(self) -> dict[str, int]:
        """Keys per status in the (compacted plus logged) state, for reports and tests."""
        self.compact()
        state = self.warehouse.table(self.state_table)
        rows = self.warehouse.to_arrow(state.group_by("status").aggregate(n=state.count()))
        return {row["status"]: int(row["n"]) for row in rows.to_pylist()}
