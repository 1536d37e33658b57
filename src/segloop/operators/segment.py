"""Node `segment`: the Segment action. Rows of an upstream table become track/identify/group calls.

What users know from reverse-ETL tools: a write key, a table (``input``), a call, an event
name, the properties (columns) and the customer id column. A row
``{user_id: '162514333', iphone: 0.734, apple_watch: 0.812}`` with ``call: track``,
``event: Sales Prediction`` and ``properties: [iphone, apple_watch]`` becomes
``track('162514333', 'Sales Prediction', {'iphone': 0.734, 'apple_watch': 0.812})``.

Only new, changed and unacknowledged rows are sent (``mode: diff``, see segment/sync.py);
each acknowledged batch is checkpointed, so a killed run resumes where it stopped, and
message ids are deterministic: a retry of an unacknowledged send keeps its id, so Segment's
dedupe drops what is sent twice, while a new send (a value that changes back too) gets a new
id, derived from the key's last acknowledged one (docs/sync.md, "Message ids").
Rejected and failed rows go to ``<pipeline>__<node>__rejects`` with the reason and payload.

``holdout:`` keeps a stable, hashed share of the customers out of every send and records
the groups in ``<pipeline>__<node>__holdout`` for the ``lift`` node (segment/send/holdout.py).
In a pipeline with a ``segment_source``, the node counts how many of its ids Segment
already knows (``match_rate``); ``on_unknown: skip`` sends only those (segment/send/known_ids.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

from segloop.errors import ConfigError
from segloop.operators.base import NodeConfig, NodeOutput, Operator, RunContext
from segloop.operators.columns import require_columns
from segloop.secrets import ENV_REF, SecretRef, resolve_secret

if TYPE_CHECKING:  # pragma: no cover
    import ibis.expr.types as ir
    import pyarrow as pa

    from segloop.segment.messages import RowMapping
    from segloop.segment.send.audience import Audience
    from segloop.segment.send.results import Outcome, QueuedMessage
    from segloop.segment.sync import SyncPlan, SyncState

Columns = list[str] | dict[str, str]


class HoldoutConfig(BaseModel):
    """``holdout: {percent: 10, salt: spring-2026}``: customers never sent, for measuring lift."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    percent: float = Field(gt=0, lt=100, description="Share of customers held out, in percent (0-100).")
    salt: str = Field(min_length=1, description="Mixed into the hash that picks the groups; "
                      "a new salt draws new groups (docs/holdout.md).")


class SegmentConfig(NodeConfig):
    type: Literal["segment"] = "segment"
    write_key: SecretRef | None = Field(default=None, description="The source's write key, as ${ENV_VAR}.")
    call: Literal["track", "identify", "group"] = "track"
    event: str | None = Field(default=None, description="Track event name, e.g. `Sales Prediction`.")
    properties: Columns | None = Field(default=None, description="Columns sent as track properties.")
    traits: Columns | None = Field(default=None, description="Columns sent as identify/group traits.")
    customer_id: str = Field(default="user_id", description="Column sent as userId.")
    anonymous_id: str | None = None
    group_id: str | None = None
    timestamp: str | None = None
    context: dict[str, Any] | None = None
    region: Literal["us", "eu"] = "us"
    endpoint: str | None = Field(
        default=None,
        description="Another endpoint, e.g. a local collector; a URL or ${ENV_VAR} naming one.",
    )
    gzip: bool = False
    mode: Literal["diff", "full"] = "diff"
    on_removed: str | None = Field(
        default=None,
        description="Track event sent for customers gone since the last run, or `null_traits` "
        "to send an identify with the mapped traits set to null.",
    )
    holdout: HoldoutConfig | None = Field(
        default=None, description="Hold a stable share of customers out of every send: "
        "{percent: 10, salt: ...}; groups are kept in <pipeline>__<node>__holdout.")
    on_unknown: Literal["send", "skip"] = Field(
        default="send", description="Ids the pipeline's segment_source does not know (new "
        "profiles, billed as MTUs): `send` them, or `skip` them until Segment knows them.")
    upload_size: int = Field(default=100, ge=1, le=2500)
    upload_interval: float = 0.5
    max_in_flight: int | None = Field(default=None, ge=1, le=64)
    max_retries: int = 10
    max_retry_time: float = 600.0
    timeout: float = 15.0

    @model_validator(mode="after")
    def _check_call(self) -> SegmentConfig:
        if self.call == "track" and not self.event:
            raise ValueError("a track call needs `event:` (the event name, e.g. Sales Prediction)")
        if self.call == "track" and self.traits:
            raise ValueError("track sends `properties:`, not `traits:`")
        if self.call in ("identify", "group") and self.properties:
            raise ValueError(f"{self.call} sends `traits:`, not `properties:`")
        if self.call == "group" and not self.group_id:
            raise ValueError("a group call needs `group_id:` (the column holding the group id)")
        if self.on_removed == "null_traits" and self.call != "identify":
            raise ValueError("`on_removed: null_traits` works with `call: identify`")
        return self

    def fingerprint(self) -> str:
        """Everything about the mapping that changes the payload; a change re-sends every row."""
        fields = ("call", "event", "properties", "traits", "customer_id", "anonymous_id",
                  "group_id", "timestamp", "context")
        return orjson.dumps({f: getattr(self, f) for f in fields}, option=orjson.OPT_SORT_KEYS).decode()


class SegmentOperator(Operator[SegmentConfig]):
    """Sends an upstream table to Segment; records per-row state for the next run."""

    type_name: ClassVar[str] = "segment"
    WRITES_WHEN_RUN: ClassVar[bool] = True  # sync state and rejects; `preview` shows what it would send
    config_model: ClassVar[type[NodeConfig]] = SegmentConfig
    REPORT_SECTION = "segment"
    SENDS_TO_SEGMENT = True
    PROGRESS_UNIT: ClassVar[str] = "messages"
    CHECKPOINT_EVERY_ROWS: ClassVar[int] = 20_000  # fewer, larger log appends: ~1 us less per row
    CHECKPOINT_EVERY_SECONDS: ClassVar[float] = 0.25  # bounds what a kill -9 re-sends
    SAMPLE_PAYLOADS: ClassVar[int] = 3

    @property
    def cfg(self) -> SegmentConfig:
        return self.config

    # -- mapping -------------------------------------------------------------------------

    def mapping(self, ctx: RunContext) -> RowMapping:
        from segloop.segment.messages import RowMapping

        cfg = self.cfg
        return RowMapping(
            call=cfg.call, customer_id=cfg.customer_id, event=cfg.event,
            properties=cfg.properties, traits=cfg.traits, anonymous_id=cfg.anonymous_id,
            group_id=cfg.group_id, timestamp=cfg.timestamp, context=cfg.context,
            namespace=(ctx.pipeline, ctx.node),
        )

    def audience(self, ctx: RunContext) -> Audience:
        """The node's holdout and the ids Segment knows (from the pipeline's segment_sources)."""
        from segloop.segment.send.audience import Audience
        from segloop.segment.send.holdout import SUFFIX, Holdout
        from segloop.segment.send.known_ids import known_ids

        cfg = self.cfg
        holdout = (Holdout(cfg.holdout.percent, cfg.holdout.salt, ctx.table_name(SUFFIX), ctx.node)
                   if cfg.holdout is not None else None)
        known = known_ids(ctx.warehouse, ctx.pipeline, ctx.pipeline_nodes)
        return Audience(holdout, known, skip_unknown=cfg.on_unknown == "skip")

    def _plan(self, state: SyncState, inputs: dict[str, ir.Table], ctx: RunContext
              ) -> tuple[SyncPlan, ir.Table, int, Audience, dict[str, Any]]:
        from segloop.segment.sync import SEND_CATEGORIES

        source_name, source = next(iter(inputs.items()))
        mapping = self.mapping(ctx)
        columns = mapping.columns()
        require_columns(source, mapping.column_keys(), node=ctx.node, source=source_name)
        narrow = source.select(*columns)
        audience = self.audience(ctx)
        if audience.holdout is not None:  # a changed percent or salt: refused before anything is sent
            audience.holdout.check_settings(ctx.warehouse, ctx.pipeline)
        counts = audience.counts(ctx.warehouse, narrow, self.cfg.customer_id)
        held_keys = counts.pop("_held_keys")
        if audience.known is None and self.cfg.on_unknown == "skip":
            ctx.warn("`on_unknown: skip` needs a `segment_source` node with a `users` or `user_identifiers` "
                     "table in the pipeline; without one every id is sent")
        key_columns = [self.cfg.customer_id]
        payload_columns = [c for c in columns if c != self.cfg.customer_id]
        plan = state.plan(narrow, key_columns, payload_columns, self.cfg.fingerprint(), self.cfg.mode,
                          held=audience.held(ctx.warehouse), held_keys=held_keys)
        if audience.known is not None and self.cfg.on_unknown == "send":
            counts["unknown_to_send"] = audience.unknown_to_send(
                ctx.warehouse, ctx.warehouse.table(plan.pending_table),
                (*SEND_CATEGORIES, *(("unchanged",) if plan.mode == "full" else ())))
        rows = sum(plan.counts.values())
        return plan, narrow, rows, audience, counts

    # -- run -----------------------------------------------------------------------------

    def run(self, inputs: dict[str, ir.Table], ctx: RunContext) -> NodeOutput:
        from segloop.segment.sync import SyncState

        state = SyncState(ctx.warehouse, ctx.pipeline, ctx.node, ctx.run_id)
        with state.session():  # bounded warehouse memory for plan, send and compaction
            return self._run(state, inputs, ctx)

    def _run(self, state: SyncState, inputs: dict[str, ir.Table], ctx: RunContext) -> NodeOutput:
        plan, narrow, rows, audience, counts = self._plan(state, inputs, ctx)
        metrics = {**self._plan_metrics(plan, rows), **counts}
        if ctx.dry_run:
            samples = self.render_samples(state, ctx)
            metrics.update(dry_run=True, sent=0, sample_payloads=samples)
            return NodeOutput(rows=rows, metrics=metrics)
        # No `where`: the run starts every node error with "node `name`: " already.
        write_key = resolve_secret(self.cfg.write_key, also=[self.cfg.endpoint]) if self.cfg.write_key else None
        if write_key is None:
            raise ConfigError(f"node `{ctx.node}`: `write_key:` is missing; set it to ${{SEGMENT_WRITE_KEY}}")
        if audience.holdout is not None:  # before sending: a customer's first run is its assignment
            metrics["holdout_assigned"] = audience.holdout.assign(
                ctx.warehouse, audience.keys(narrow, self.cfg.customer_id), ctx.run_id)
        delivery = _Delivery(self, state, ctx)
        with state.sending():
            summary = delivery.send(self._messages(state, ctx, delivery), write_key.get_secret_value(), plan.to_send)
            removed_sent = 0
            if self.cfg.on_removed and plan.removed_keys:
                removed = delivery.send(self._removed_messages(state, narrow, ctx),
                                        write_key.get_secret_value(), plan.removed_keys)
                removed_sent = removed.sent
            state.checkpoint()
        state.compact()
        metrics.update(
            sent=summary.sent + removed_sent, rejected=delivery.rejected, failed=delivery.failed,
            rejected_by_reason=delivery.reasons("rejected"), failed_by_reason=delivery.reasons("failed"),
            removed_sent=removed_sent, messages_per_second=round(summary.messages_per_second, 1),
            sample_payloads=delivery.samples,
        )
        if delivery.rejected:
            ctx.warn(f"{delivery.rejected} rows rejected (bad data, not sent); they are in "
                     f"{ctx.table_name('rejects')} with the reason")
        error = None
        if delivery.failed:  # Segment refused them or never answered: the run did not do its job
            reasons = sorted(delivery.reasons("failed").items(), key=lambda kv: -kv[1])
            why = "; ".join(f"{n:,} {reason}" for reason, n in reasons[:3])
            hint = (" Check `write_key:` (Segment does not know this key)." if any("401" in r or "403" in r for r, _ in reasons)
                    else " Check `endpoint:` / the network.")
            error = (f"{delivery.failed:,} of {plan.to_send + (plan.removed_keys if self.cfg.on_removed else 0):,} messages did not reach Segment ({why}; "
                     f"details in {ctx.table_name('rejects')}); they are sent again on the next run.{hint}")
        return NodeOutput(rows=rows, metrics=metrics, error=error)

    def _plan_metrics(self, plan: SyncPlan, rows: int) -> dict[str, Any]:
        c = plan.counts
        return {
            "mode": plan.mode, "rows": rows, "new": c.get("new", 0), "changed": c.get("changed", 0),
            "retried": c.get("retry", 0), "unchanged": c.get("unchanged", 0),
            "duplicate_keys": c.get("duplicate", 0), "missing_key": c.get("no_key", 0),
            "removed": plan.removed_keys, "to_send": plan.to_send,
        }

    def _messages(self, state: SyncState, ctx: RunContext, delivery: _Delivery) -> Iterator[tuple[Any, Any]]:
        from segloop.segment.messages import Rejection, render_row

        mapping = self.mapping(ctx)
        for chunk in state.pending_chunks():
            for i, row in enumerate(chunk.to_pylist()):
                previous = row["_prev_id"]
                message = render_row(row, mapping, previous)
                # A queued message carries its payload; only a local rejection needs the row
                # (for the rejects table), so queued refs do not keep 10,000 rows alive.
                yield (row["_key"], row["_hash"], previous, row if type(message) is Rejection else None), message
                if i % 512 == 511:
                    delivery.maybe_checkpoint()
            delivery.maybe_checkpoint()

    def _removed_messages(self, state: SyncState, narrow: ir.Table, ctx: RunContext) -> Iterator[tuple[Any, Any]]:
        from segloop.segment.messages import build, message_id, payload_hash

        traits = list(self.cfg.traits or [])
        for chunk in state.removed_chunks():
            for row in chunk.to_pylist():
                if self.cfg.on_removed == "null_traits":
                    names = traits if isinstance(self.cfg.traits, list) else list((self.cfg.traits or {}).values())
                    msg = build("identify", user_id=row["key"], traits=dict.fromkeys(names), context=self.cfg.context)
                else:
                    msg = build("track", user_id=row["key"], event=self.cfg.on_removed, context=self.cfg.context)
                # The key's last acknowledged id is part of the id, as for rows: a customer who
                # leaves, comes back and leaves again gets a second removal message.
                previous = row["previous_id"]
                msg["messageId"] = message_id(ctx.pipeline, ctx.node, "removed", row["key"], payload_hash(msg),
                                              *([previous] if previous else []))
                yield (row["key"], row["payload_hash"], previous, {"_removed": True}), msg

    def render_samples(self, state: SyncState, ctx: RunContext, limit: int | None = None) -> list[dict[str, Any]]:
        """The first payloads the next run would send (for --dry-run and `segloop preview`)."""
        from segloop.segment.messages import Rejection, render_row

        mapping = self.mapping(ctx)
        wanted = limit or self.SAMPLE_PAYLOADS
        samples: list[dict[str, Any]] = []
        for row in state.sample(wanted).to_pylist():
            message = render_row(row, mapping, row.get("_prev_id"))  # the id the run would send
            if isinstance(message, Rejection):
                samples.append({"rejected": message.reason, "detail": message.detail, "key": row["_key"]})
            else:
                samples.append(message)
        return samples

    def preview(self, inputs: dict[str, ir.Table], ctx: RunContext, rows: int = 5) -> dict[str, Any]:
        from segloop.segment.sync import SyncState

        state = SyncState(ctx.warehouse, ctx.pipeline, ctx.node, ctx.run_id)
        with state.session():
            plan, _narrow, total, _audience, counts = self._plan(state, inputs, ctx)
            return {**self._plan_metrics(plan, total), **counts, "payloads": self.render_samples(state, ctx, rows)}


class _Delivery:
    """Sends through a Client, turns outcomes into checkpoints and rejects rows."""

    def __init__(self, op: SegmentOperator, state: SyncState, ctx: RunContext):
        self.op, self.state, self.ctx = op, state, ctx
        self.lock = threading.Lock()
        self.rejects: list[dict[str, Any]] = []
        self.rejected = self.failed = 0
        self._reasons: dict[tuple[str, str], int] = {}
        self.samples: list[dict[str, Any]] = []
        self.last_checkpoint = time.monotonic()
        self.rejects_table = ctx.table_name("rejects")
        ctx.warehouse.create_table(self.rejects_table, _rejects_table([]))

    def send(self, messages: Iterator[tuple[Any, Any]], write_key: str, total: int) -> Any:
        from segloop.segment.send.client import Client
        from segloop.segment.send.sending import send_messages

        cfg = self.op.cfg
        options: dict[str, Any] = {}
        if cfg.max_in_flight:
            options["max_in_flight"] = cfg.max_in_flight
        transport = self.ctx.options.segment_transport
        endpoint = cfg.endpoint
        if endpoint and ENV_REF.match(endpoint):
            endpoint = resolve_secret(endpoint, "`endpoint:`").get_secret_value()
        client = Client(
            write_key, host=endpoint, region=cfg.region, upload_size=cfg.upload_size,
            upload_interval=cfg.upload_interval, on_full="block", gzip=cfg.gzip,
            max_retries=cfg.max_retries, max_retry_time=cfg.max_retry_time, timeout=cfg.timeout,
            transport=transport, **options,
        )
        self.ctx.progress(0, total)
        try:
            summary = send_messages(self._sampled(messages), client, on_result=self.on_result,
                                    progress=self._progress)
        finally:
            client.shutdown()
        self.maybe_checkpoint(force=True)
        return summary

    def _progress(self, finished: int) -> None:
        """Main thread, while rendering and while waiting for the last batches: report, and
        checkpoint what was acknowledged (a run that fits in the client's queue spends most
        of its send waiting here; a kill then must not re-send what already arrived)."""
        self.ctx.progress(finished, None)
        self.maybe_checkpoint()

    def _sampled(self, messages: Iterator[tuple[Any, Any]]) -> Iterator[tuple[Any, Any]]:
        for ref, message in messages:
            if len(self.samples) < self.op.SAMPLE_PAYLOADS and isinstance(message, dict):
                self.samples.append(message)
            yield ref, message

    def on_result(self, items: list[QueuedMessage], outcome: Outcome) -> None:
        """Called from sender threads (and the main thread for local rejections)."""
        from segloop.segment.sync import FAILED, REJECTED, REMOVED, SENT

        if outcome.status == "sent":
            status = SENT
        elif outcome.status == "rejected" and outcome.http_status is None:
            status = REJECTED  # our own checks: re-sent only when the row changes
        else:
            status = FAILED  # the endpoint refused or never answered: retried next run
        keys: list[str] = []
        hashes: list[str] = []
        statuses: list[str] = []
        ids: list[str | None] = []
        rejects: list[dict[str, Any]] = []
        error = None if status == SENT else f"{outcome.reason}: {outcome.detail}"
        for item in items:
            key, payload_hash, previous, row = item.ref
            if key is not None:
                keys.append(key)
                hashes.append(payload_hash)
                statuses.append(REMOVED if status == SENT and type(row) is dict and row.get("_removed") else status)
                # The state keeps the key's last *acknowledged* id: a retry of this message
                # derives the same id from it (the failed id is in the rejects table).
                ids.append((item.message_id or None) if status == SENT else previous)
            if status != SENT:
                rejects.append({
                    "key": key, "status": status, "reason": outcome.reason or status,
                    "detail": outcome.detail, "http_status": outcome.http_status,
                    "message_id": item.message_id or None,
                    "payload": item.payload.decode() if item.payload else _row_json(row),
                })
        with self.lock:
            self.state.record_many(keys, hashes, statuses, ids, [error] * len(keys))
            self.rejects.extend(rejects)
            for r in rejects:
                if r["status"] == REJECTED:
                    self.rejected += 1
                else:
                    self.failed += 1
                self._reasons[(r["status"], r["reason"])] = self._reasons.get((r["status"], r["reason"]), 0) + 1

    def reasons(self, status: str) -> dict[str, int]:
        return {reason: n for (s, reason), n in self._reasons.items() if s == status}

    def maybe_checkpoint(self, force: bool = False) -> None:
        """Write acknowledgements and rejects to the warehouse (main thread only)."""
        now = time.monotonic()
        due = force or self.state.buffered >= self.op.CHECKPOINT_EVERY_ROWS or (
            now - self.last_checkpoint >= self.op.CHECKPOINT_EVERY_SECONDS)
        if not due:
            return
        with self.lock:
            rejects, self.rejects = self.rejects, []
        self.state.checkpoint()
        if rejects:
            self.ctx.warehouse.insert(self.rejects_table, _rejects_table(rejects, self.ctx.run_id))
        self.last_checkpoint = now


def _row_json(row: Any) -> str | None:
    if not isinstance(row, Mapping):
        return None
    clean = {k: v for k, v in row.items() if not k.startswith("_")}
    return orjson.dumps(clean, default=str, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY).decode()


def _rejects_table(rows: list[dict[str, Any]], run_id: str = "") -> pa.Table:
    import pyarrow as pa

    return pa.table({
        "key": pa.array([r["key"] for r in rows], pa.string()),
        "status": pa.array([r["status"] for r in rows], pa.string()),
        "reason": pa.array([r["reason"] for r in rows], pa.string()),
        "detail": pa.array([r["detail"] for r in rows], pa.string()),
        "http_status": pa.array([r["http_status"] for r in rows], pa.int64()),
        "message_id": pa.array([r["message_id"] for r in rows], pa.string()),
        "payload": pa.array([r["payload"] for r in rows], pa.string()),
        "run_id": pa.array([run_id] * len(rows), pa.string()),
    })
