"""The one facade: load a pipeline file -> plan the DAG -> run each node -> record the run.

The CLI, the web UI and the scheduler all go through ``Pipeline``; none has logic of its own.
Each node's output is materialized in the warehouse as ``<pipeline>__<node>`` so the next
node, and a person with SQL, can read it. A failing node stops its descendants, not its
siblings.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

from segloop.config import WORKSPACE_FILE, PipelineConfig, Workspace, load_pipeline
from segloop.errors import ConfigError, NodeError, SegloopError, database_message
from segloop.locks import PipelineBusy, PipelineLock, run_finished, run_started
from segloop.masking import Redactor, mask_text
from segloop.memory import release_freed_memory
from segloop.operators import NODE_TYPES
from segloop.operators.base import NodeOutput, RunContext, RunOptions, RunScope
from segloop.sql_cache import code_version
from segloop.store import NodeRunRecord, RunStore, new_run_id
from segloop.warehouses import Warehouse, is_arrow_stream, is_arrow_table

log = logging.getLogger("segloop")
T = TypeVar("T")

SUCCESS, FAILED, SKIPPED = "success", "failed", "skipped"
ON_BUSY = ("wait", "skip")  # what a trigger does while the same pipeline is running
_STARTUP_FROZEN = threading.Event()
@dataclass
class NodeResult:
    name: str
    type: str
    status: str = "pending"
    rows: int | None = None
    seconds: float = 0.0
    error: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    table: str | None = None


@dataclass
class RunResult:
    run_id: str
    pipeline: str
    nodes: list[NodeResult]
    seconds: float = 0.0
    skipped: str | None = None  # why the run did not happen (the pipeline was busy)
    report: Path | None = None

    @property
    def status(self) -> str:
        if self.skipped:
            return SKIPPED
        return FAILED if any(n.status == FAILED for n in self.nodes) else SUCCESS

    @property
    def ok(self) -> bool:
        return self.status == SUCCESS

    def node(self, name: str) -> NodeResult:
        for result in self.nodes:
            if result.name == name:
                return result
        raise KeyError(name)


class Reporter:
    """Hooks the CLI (progress bars) and the UI implement; the default does nothing."""

    def node_started(self, name: str, node_type: str) -> None: ...

    def node_progress(self, name: str, advance: int, total: int | None) -> None: ...

    def node_finished(self, result: NodeResult) -> None: ...


class Pipeline:
    """A pipeline file bound to its workspace."""

    def __init__(self, config: PipelineConfig, workspace: Workspace | None = None, file: Path | None = None):
        self.config = config
        self.workspace = workspace or Workspace.load(file.parent.parent if file else ".")
        self.file = file

    @classmethod
    def load(cls, name_or_path: str | Path, workspace: Workspace | None = None) -> Pipeline:
        """From a file path, or a pipeline name in the workspace's `pipelines/` folder."""
        path = Path(name_or_path)
        if workspace is None:
            workspace = Workspace.find(path.parent if path.exists() else ".")
            if path.exists() and not (workspace.root / WORKSPACE_FILE).exists():
                # A file in no workspace, run from inside one: that workspace (as dbt would),
                # not a new one next to the file.
                here = Workspace.find(".")
                if (here.root / WORKSPACE_FILE).exists():
                    workspace = here
        file = workspace.resolve_pipeline(str(name_or_path))
        return cls(load_pipeline(file), workspace, file)

    @property
    def name(self) -> str:
        return self.config.name

    def table_name(self, node: str, suffix: str | None = None) -> str:
        base = f"{self.name}__{node}"
        return f"{base}__{suffix}" if suffix else base

    def connect(self) -> Warehouse:
        return self.workspace.open_warehouse(self.config.warehouse, cache_sql=True)

    def store(self) -> RunStore:
        return self.workspace.history()

    def memory_limit(self, node: str) -> int:
        """Bytes ``node`` may hold in Python: its own `memory_limit:`, else the workspace's."""
        own = self.config.nodes[node].memory_limit
        return int(own if own is not None else self.workspace.config.memory_limit)

    def plan(self, node: str | None = None) -> list[str]:
        """Nodes to run, in topological order; ``node`` restricts the run to that one node."""
        order = self.config.topological_order()
        if node is None:
            return order
        if node not in self.config.nodes:
            raise ConfigError(
                f"pipeline `{self.name}` has no node `{node}` (nodes: {', '.join(order)})",
                self.file,
            )
        return [node]

    def run(
        self,
        node: str | None = None,
        dry_run: bool = False,
        reporter: Reporter | None = None,
        trigger: str = "cli",
        options: RunOptions | Mapping[str, Any] | None = None,
        on_busy: str = "wait",
    ) -> RunResult:
        """Run the pipeline (or one node) and record it in the run history.

        One run of a pipeline at a time: while another run holds the pipeline's lock, this
        one waits (``on_busy="wait"``) or is recorded as skipped (``on_busy="skip"``, what
        the scheduler and the UI use). Afterwards the run report is written to
        `.segloop/runs/<run_id>/report.html` and alerts are checked; neither can fail the run.
        """
        _freeze_startup_objects()
        run_options = RunOptions.of(options)  # a dict of the same names is accepted too
        if on_busy not in ON_BUSY:
            raise ValueError(f"on_busy must be one of {ON_BUSY}, got {on_busy!r}")
        self.plan(node)  # a bad --node is an error before anything is recorded
        run_id = new_run_id()
        lock = PipelineLock(self.workspace.state_dir, self.name)
        try:
            lock.acquire(run_id, wait=False)
        except PipelineBusy as busy:
            if on_busy == "skip":
                return self._record_busy(run_id, busy.holder, dry_run, trigger)
            log.warning("pipeline `%s` is running (run %s); waiting for it to finish", self.name, busy.holder)
            lock.acquire(run_id, wait=True)
        opened: list[Warehouse] = []  # the run's connection, kept open for the report
        store: RunStore | None = None  # the run's history connection, also the report's
        # Connecting (~20 ms for a DuckDB file) goes on while the run history is opened.
        connecting = _InBackground(self.connect, "segloop-connect")
        run_started()
        try:
            store = self.store()
            result = self._run(node, dry_run, reporter, trigger, run_options, run_id, connecting, opened, store)
        finally:
            run_finished()
            # Released as soon as the history says "finished", so a trigger that sees the
            # run done is not turned away while the report is written.
            lock.release()
            if not opened:  # the run stopped before it took the connection: closed once it is open
                connecting.discard(Warehouse.close)
            for warehouse in opened:  # the outputs go into the file while the report is written
                warehouse.checkpoint_in_background()
            try:
                if store is not None:
                    report = self._after_run(run_id, dry_run, run_options, opened[0] if opened else None, store)
            finally:
                # Both closes write their files (SQLite's and DuckDB's checkpoints): at once.
                closing = _InBackground(store.close, "segloop-history") if store else None
                for warehouse in opened:
                    warehouse.close()
                if closing is not None:
                    closing.result()
        result.report = report
        return result

    def _record_busy(self, run_id: str, holder: str, dry_run: bool, trigger: str) -> RunResult:
        message = (f"pipeline `{self.name}` was already running (run {holder}); "
                   f"this {trigger} trigger was skipped")
        log.warning(message)
        store = self.store()
        try:
            store.record_skipped(self.name, str(self.file) if self.file else None, self.config.warehouse,
                                 dry_run, trigger, run_id, message)
        finally:
            store.close()
        return RunResult(run_id, self.name, [], skipped=message)

    def _after_run(
        self, run_id: str, dry_run: bool, options: RunOptions, warehouse: Warehouse | None = None,
        store: RunStore | None = None,
    ) -> Path | None:
        """Write the report, then send alerts; problems are logged, never raised."""
        report: Path | None = None
        if options.report:
            try:
                from segloop.report import write_report

                report = write_report(self, run_id, warehouse, store)
            except Exception as exc:
                log.warning("run %s: the report could not be written: %s", run_id, exc)
                log.debug("report failure", exc_info=True)
        if self.config.alerts is not None and not dry_run:
            try:
                from segloop.alerts import check_run

                check_run(self, run_id, report)
            except Exception as exc:
                log.warning("run %s: alerts could not be checked: %s", run_id, exc)
        return report

    def _run(
        self,
        node: str | None,
        dry_run: bool,
        reporter: Reporter | None,
        trigger: str,
        options: RunOptions,
        run_id: str,
        connecting: _InBackground[Warehouse],
        opened: list[Warehouse],
        store: RunStore,
    ) -> RunResult:
        reporter = reporter or Reporter()
        plan = self.plan(node)
        # This run holds the pipeline's lock: a run of it still marked `running` was killed.
        for stale in store.interrupt_runs(self.name, except_run=run_id):
            log.warning("run %s of `%s` ended without finishing (its process was killed?); "
                        "marked `interrupted` in the run history", stale, self.name)
        store.start_run(self.name, str(self.file) if self.file else None,
                        self.config.warehouse, dry_run, trigger, run_id=run_id)
        started = time.perf_counter()
        results = {name: NodeResult(name, self.config.nodes[name].type) for name in plan}
        error: str | None = None
        shared = RunScope()  # what nodes of this run share (prepared features), dropped at its end
        try:
            # While the warehouse connects: what the run needs later and can have now.
            code_version()  # part of cached expressions' keys
            warehouse = connecting.result()
            opened.append(warehouse)  # closed by run(), after the report
            for name in plan:
                self._run_node(name, results, warehouse, run_id, dry_run, reporter, store, options, shared)
        except SegloopError as exc:
            error = mask_text(str(exc))
            for result in results.values():
                if result.status == "pending":
                    result.status, result.error = SKIPPED, error
                    store.record_node(run_id, _record(result))
            raise
        finally:
            shared.close()
            run = RunResult(run_id, self.name, list(results.values()), time.perf_counter() - started)
            store.finish_run(run_id, FAILED if error else run.status, error or _first_error(run))
        return run

    def _segment_node(self, node: str) -> Any:
        config = self.config.nodes.get(node)
        if config is None or not NODE_TYPES[config.type].SENDS_TO_SEGMENT:
            segment_nodes = [n for n, c in self.config.nodes.items() if NODE_TYPES[c.type].SENDS_TO_SEGMENT]
            raise ConfigError(
                f"`{node}` is not a Segment node of pipeline `{self.name}` "
                f"(Segment nodes: {', '.join(segment_nodes) or 'none'})",
                self.file,
            )
        return NODE_TYPES[config.type](config)

    def check_segment_node(self, node: str) -> None:
        """A ConfigError naming the pipeline's Segment nodes unless ``node`` is one of them."""
        self._segment_node(node)

    def preview(self, node: str, rows: int = 5) -> dict[str, Any]:
        """What the next run of a Segment node would send: counts by category and payloads.

        Reads the upstream outputs of the last run and sends nothing.
        """
        operator = self._segment_node(node)
        with self.connect() as warehouse:
            ctx = RunContext(warehouse=warehouse, pipeline=self.name, node=node, run_id="preview",
                             dry_run=True, memory_limit=self.memory_limit(node),
                             pipeline_nodes=self.config.nodes)
            inputs = {up: self._input_table(warehouse, up) for up in self.config.upstream_of(node)}
            result: dict[str, Any] = operator.preview(inputs, ctx, rows)
        masked: dict[str, Any] = Redactor.for_pipeline(self).value(result)  # shown as is by the CLI
        return masked

    def sample(self, node: str, rows: int = 20) -> dict[str, Any]:
        """A dry run of one node on the upstream outputs of the last run: its first rows.

        The node's output is read, never materialized, and nothing is recorded, so a
        pipeline being edited can be tried before it is saved. Returns ``table`` (the first
        ``rows`` rows, Arrow), ``total`` (its row count), ``metrics`` and ``warnings``.
        """
        self.plan(node)
        config = self.config.nodes[node]
        operator = NODE_TYPES[config.type](config)
        if operator.WRITES_WHEN_RUN:
            raise ConfigError(
                f"node `{node}`: a `{config.type}` node writes to the warehouse when it runs, so it "
                "is not previewed here; run the pipeline to see its output"
                + (" (or preview what it would send)" if operator.SENDS_TO_SEGMENT else ""),
                self.file,
            )
        upstream = self.config.upstream_of(node)
        # What the node prepares for the run is dropped after its output has been read.
        with self.connect() as warehouse, closing(RunScope()) as shared:
            history = self.store()  # an incremental source reads where the last run stopped
            try:
                ctx = RunContext(warehouse=warehouse, pipeline=self.name, node=node, run_id="preview",
                                 dry_run=True, upstream=frozenset(upstream), history=history,
                                 memory_limit=self.memory_limit(node), pipeline_nodes=self.config.nodes,
                                 shared=shared)
                inputs = {up: self._input_table(warehouse, up) for up in upstream}
                output = operator.run(inputs, ctx)
            finally:
                history.close()
            if output.error:
                raise NodeError(node, output.error)
            table = output.table
            if table is None:
                first, total = None, output.rows
            elif is_arrow_table(table):
                first, total = table.slice(0, rows), table.num_rows
            elif is_arrow_stream(table):  # a streamed output: its first rows, every batch counted
                import pyarrow as pa

                first, total = None, 0
                for batch in table:
                    if first is None or first.num_rows < rows:
                        part = pa.Table.from_batches([batch], schema=table.schema)
                        first = part if first is None else pa.concat_tables([first, part])
                    total += batch.num_rows
                first = (first if first is not None else table.schema.empty_table()).slice(0, rows)
            else:
                first, total = warehouse.to_arrow(table, limit=rows), warehouse.count(table)
            return {"table": first, "total": total, "metrics": dict(output.metrics), "warnings": list(ctx.warnings)}

    def reset(self, node: str) -> None:
        """Forget a Segment node's sync state: its next run sends every row."""
        from segloop.segment.sync import SyncState

        self._segment_node(node)
        with self.connect() as warehouse:
            SyncState(warehouse, self.name, node).reset()

    def end_holdout(self, node: str) -> str | None:
        """End a Segment node's holdout experiment: its groups are kept under a dated name
        (returned; None when it had none) and the next run draws new ones."""
        from segloop.segment.send.holdout import SUFFIX, Holdout

        self._segment_node(node)
        with self.connect() as warehouse:
            return Holdout(0.0, "", self.table_name(node, SUFFIX), node).end(warehouse)

    # -- one node ------------------------------------------------------------------------

    def _run_node(
        self,
        name: str,
        results: dict[str, NodeResult],
        warehouse: Warehouse,
        run_id: str,
        dry_run: bool,
        reporter: Reporter,
        store: RunStore,
        options: RunOptions,
        shared: RunScope | None = None,
    ) -> None:
        result = results[name]
        config = self.config.nodes[name]
        upstream = self.config.upstream_of(name)
        blocked = [up for up in upstream if up in results and results[up].status in (FAILED, SKIPPED)]
        if blocked:
            result.status = SKIPPED
            result.error = f"skipped because upstream node `{blocked[0]}` did not succeed"
            store.record_node(run_id, _record(result))
            reporter.node_finished(result)
            return
        reporter.node_started(name, config.type)
        operator_class = NODE_TYPES[config.type]
        started = time.perf_counter()
        ctx = RunContext(
            warehouse=warehouse,
            pipeline=self.name,
            node=name,
            run_id=run_id,
            dry_run=dry_run,
            progress=partial(reporter.node_progress, name),
            upstream=frozenset(upstream),
            history=store,
            options=options,
            memory_limit=self.memory_limit(name),
            pipeline_nodes=self.config.nodes,
            shared=shared or RunScope(),
        )
        try:
            inputs = {up: self._input_table(warehouse, up) for up in upstream}
            operator = operator_class(config)
            output = operator.run(inputs, ctx)
            self._materialize(output, ctx, result)
            result.status = SUCCESS
            if output.error:
                result.status, result.error = FAILED, f"node `{name}`: {output.error}"
        except SegloopError as exc:
            if options.debug:  # `--debug`: where it came from (the run goes on, as always)
                log.error("node `%s` failed; the traceback:", name, exc_info=True)
            message = str(exc)
            prefix = f"node `{name}`: "
            result.status, result.error = FAILED, message if message.startswith(prefix) else prefix + message
        except Exception as exc:  # an operator bug or a warehouse error we did not anticipate
            log.debug("node %s failed:\n%s", name, traceback.format_exc())
            result.status = FAILED
            result.error = str(NodeError(name, f"{type(exc).__name__}: {database_message(exc)} (run with --debug for the traceback)"))
            if options.debug:
                raise
        result.seconds = time.perf_counter() - started
        if operator_class.OUTPUT_IN_PYTHON:  # a model's arrays: the next node starts without them
            release_freed_memory()
        if result.error:  # a library's message may quote a URL with its credentials
            result.error = mask_text(result.error)
        result.warnings = [mask_text(warning) for warning in ctx.warnings]
        if result.warnings:
            result.metrics.setdefault("warnings", result.warnings)
        store.record_node(run_id, _record(result))
        reporter.node_finished(result)

    def _input_table(self, warehouse: Warehouse, node: str) -> Any:
        name = self.table_name(node)
        try:
            return warehouse.table(name)  # one catalog look-up when it exists (the usual case)
        except SegloopError:
            if warehouse.has_table(name):
                raise
        raise NodeError(
            node,
            f"its output table {warehouse.schema}.{name} does not exist yet; "
            "run the whole pipeline once (without --node)",
        )

    def _materialize(self, output: NodeOutput, ctx: RunContext, result: NodeResult) -> None:
        """Keep the node's output as ``<pipeline>__<node>`` (a view or a table) and count its rows."""
        warehouse = ctx.warehouse
        result.metrics.update(output.metrics)
        if output.table is not None:
            table_name = ctx.table_name()
            kind = self.config.materialization(ctx.node)
            if kind == "view" and (is_arrow_table(output.table) or is_arrow_stream(output.table)):
                if self.config.nodes[ctx.node].materialize == "view":
                    raise NodeError(
                        ctx.node,
                        f"`materialize: view` needs a query the warehouse runs, but a "
                        f"`{result.type}` node computes its output in Python; use "
                        "`materialize: table` or drop the key",
                    )
                kind = "table"
            if kind == "view":
                warehouse.replace_view(table_name, output.table)
                result.rows = warehouse.count_rows(table_name)
                result.metrics["materialized"] = "view"
            else:
                result.rows = warehouse.replace_table(table_name, output.table)
            result.table = f"{warehouse.schema}.{table_name}"
        else:
            result.rows = output.rows
        for suffix, extra in output.extra.items():
            warehouse.replace_table(ctx.table_name(suffix), extra, count=False)
        result.metrics.update(output.metrics)  # what a streamed output measured while it was written


def _freeze_startup_objects() -> None:
    """Take the objects alive at the process's first run out of the garbage collector's scans.

    Importing Ibis, sqlglot, pyarrow and pydantic leaves ~100k long-lived objects (modules,
    classes, functions). Building the first Ibis expression allocates enough to trigger a
    full collection, which walks all of them: ~40 ms of a one-shot `segloop run` spent
    proving that modules are still alive. ``gc.freeze()`` (what it is for: objects made at
    start-up) moves them to a generation that is never scanned; objects made later, by
    this and every later run, are collected as usual. Done once per process.
    """
    if not _STARTUP_FROZEN.is_set():
        _STARTUP_FROZEN.set()
        gc.freeze()


class _InBackground(Generic[T]):
    """``fn()`` started in a thread; ``result()`` waits for it and returns or raises what it did;
    ``discard(cleanup)`` gives up on the result: ``cleanup`` gets it when it comes."""

    def __init__(self, fn: Callable[[], T], name: str):
        self._value: T | None = None
        self._error: BaseException | None = None
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._cleanup: Callable[[T], object] | None = None

        def call() -> None:
            try:
                self._value = fn()
            except BaseException as exc:  # handed to the caller of result()
                self._error = exc
            with self._lock:
                self._done.set()
                cleanup = self._cleanup
            if cleanup is not None:
                self._clean(cleanup)

        threading.Thread(target=call, name=name, daemon=True).start()

    def result(self) -> T:
        self._done.wait()
        if self._error is not None:
            raise self._error
        return cast(T, self._value)

    def discard(self, cleanup: Callable[[T], object]) -> None:
        """No one will take the result: ``cleanup(result)`` now if it is there, else when it
        comes (in the background thread), so the caller never waits for a slow ``fn``."""
        with self._lock:
            if not self._done.is_set():
                self._cleanup = cleanup
                return
        self._clean(cleanup)

    def _clean(self, cleanup: Callable[[T], object]) -> None:
        if self._error is None:
            try:
                cleanup(cast(T, self._value))
            except Exception:
                log.debug("cleaning up after a run that did not start failed", exc_info=True)


def _record(result: NodeResult) -> NodeRunRecord:
    return NodeRunRecord(
        node=result.name,
        type=result.type,
        status=result.status,
        rows=result.rows,
        seconds=round(result.seconds, 3),
        error=result.error,
        metrics=result.metrics,
    )


def _first_error(run: RunResult) -> str | None:
    for node in run.nodes:
        if node.status == FAILED:
            return node.error
    return None
