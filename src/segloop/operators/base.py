"""The operator contract: a node config (pydantic, with a ``type``) and one ``run`` method.

An operator takes its input tables (Ibis expressions over upstream nodes' materialized
outputs) and a run context, and returns a ``NodeOutput``: its main table (an Ibis
expression, computed inside the warehouse, or an Arrow table computed in Python), extra
tables (``<pipeline>__<node>__<suffix>``) and metrics for run history and reports.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from segloop.memory import DEFAULT_MEMORY_LIMIT_BYTES, MemoryLimit

if TYPE_CHECKING:  # pragma: no cover
    import ibis.expr.types as ir
    import pyarrow as pa

    from segloop.store import RunStore
    from segloop.warehouses import Warehouse

log = logging.getLogger("segloop")


class NodeConfig(BaseModel):
    """Keys every node has; each node type adds its own (unknown keys are rejected)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Keys still accepted so older pipeline files load, each with what to do instead:
    # `segloop validate` warns where one is set, and so does the run (``deprecated_keys``).
    DEPRECATED: ClassVar[dict[str, str]] = {}

    type: str
    input: str | None = Field(default=None, description="The upstream node this node reads.")
    inputs: list[str] | None = Field(default=None, description="Several upstream nodes.")
    description: str | None = None
    materialize: Literal["table", "view"] | None = Field(
        default=None,
        description="How the output `<pipeline>__<node>` is kept: `table` (computed once per run) "
        "or `view` (a stored query, computed whenever it is read). Default: `view` for a `sql` "
        "node read only by `sql` and `rfm` nodes, `table` otherwise.",
    )
    memory_limit: MemoryLimit | None = Field(
        default=None,
        description="What this node may hold in Python at once (`512MB`, `2GB`); default: the "
        "workspace's `memory_limit:`. Beyond it a model trains on a sample and scores in chunks.",
    )

    def deprecated_keys(self) -> dict[str, str]:
        """The deprecated keys this node sets, each with what to do instead."""
        return {key: why for key, why in self.DEPRECATED.items() if key in self.model_fields_set}

    @field_validator("inputs")
    @classmethod
    def _inputs_not_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("`inputs` is empty; name at least one upstream node or drop the key")
        return value

    def upstream(self) -> list[str]:
        """Declared upstream nodes, in order (``input`` first)."""
        names: list[str] = []
        if self.input:
            names.append(self.input)
        for name in self.inputs or []:
            if name not in names:
                names.append(name)
        return names

    def referenced_nodes(self) -> dict[str, str]:
        """Other nodes a key names besides the inputs (key -> node; `lift`'s `holdout_of`),
        which `segloop validate` checks exist."""
        return {}

    def implicit_upstream(self, node_names: set[str]) -> list[str]:
        """Upstream nodes referenced without being declared (the sql node reads its query)."""
        return []


ProgressCallback = Callable[[int, int | None], None]
"""``progress(advance, total)``: an operator reports work done (rows, messages)."""


@dataclass(frozen=True)
class RunOptions:
    """What a caller may set for one run (`Pipeline.run(options=...)`)."""

    debug: bool = False  # `--debug`: log a failed node's traceback, re-raise unexpected errors
    report: bool = True  # write the run report at the end
    segment_transport: Any = None  # where Segment nodes send (a test's fake Segment); None: Segment's API

    @classmethod
    def of(cls, value: RunOptions | Mapping[str, Any] | None) -> RunOptions:
        """``value`` as options: a ``RunOptions``, a mapping of its field names, or None (defaults)."""
        if value is None:
            return cls()
        if isinstance(value, RunOptions):
            return value
        known = {item.name for item in fields(cls)}
        unknown = sorted(str(key) for key in value if key not in known)
        if unknown:
            raise TypeError(f"unknown run option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**value)


T = TypeVar("T")


class RunScope:
    """What the nodes of one run share, and what is dropped when the run ends.

    A node that prepares something others may need (the propensity nodes' feature table)
    keeps it under a key that names everything it depends on (e.g. its SQL); a later node
    of the same run with the same key gets it instead of building it again. ``on_close``
    registers how to drop it; the engine calls ``close()`` once the run's nodes are done.
    """

    def __init__(self) -> None:
        self._items: dict[Hashable, Any] = {}
        self._cleanups: list[Callable[[], object]] = []

    def get(self, key: Hashable, build: Callable[[], T]) -> T:
        """The value kept under ``key``, built (once per run) when there is none."""
        if key not in self._items:
            self._items[key] = build()
        value: T = self._items[key]
        return value

    def __enter__(self) -> RunScope:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def on_close(self, cleanup: Callable[[], object]) -> None:
        self._cleanups.append(cleanup)

    def close(self) -> None:
        """Run the cleanups, newest first; one that fails is logged and the rest still run."""
        self._items.clear()
        while self._cleanups:
            cleanup = self._cleanups.pop()
            try:
                cleanup()
            except Exception as exc:  # a temporary table left behind must not fail the run
                log.warning("could not drop what a node prepared for this run: %s", exc)


@dataclass
class RunContext:
    """What a node sees of the run it is part of."""

    warehouse: Warehouse
    pipeline: str
    node: str
    run_id: str
    dry_run: bool = False
    progress: ProgressCallback = field(default=lambda advance, total=None: None)
    upstream: frozenset[str] = frozenset()  # the node's upstream nodes in the pipeline
    history: RunStore | None = None  # the run history, when run from a workspace
    options: RunOptions = field(default_factory=RunOptions)
    warnings: list[str] = field(default_factory=list)
    # Bytes the node may hold in Python at once (`memory_limit:` of the node or workspace).
    memory_limit: int = DEFAULT_MEMORY_LIMIT_BYTES
    # Every node of the pipeline by name (a Segment node looks up its `segment_source`s).
    pipeline_nodes: Mapping[str, NodeConfig] = field(default_factory=dict)
    # Shared by the nodes of one run; the engine closes it when the run ends.
    shared: RunScope = field(default_factory=RunScope)

    def table_name(self, suffix: str | None = None, node: str | None = None) -> str:
        """Warehouse table name of a node's output: ``<pipeline>__<node>[__<suffix>]``."""
        base = f"{self.pipeline}__{node or self.node}"
        return f"{base}__{suffix}" if suffix else base

    def warn(self, message: str) -> None:
        log.warning("node `%s`: %s", self.node, message)
        self.warnings.append(message)


@dataclass
class NodeOutput:
    """What a node hands back to the engine.

    ``table`` is an Ibis expression (computed in the warehouse), an Arrow table, or a
    ``pyarrow.RecordBatchReader``: rows streamed out in batches, which the engine writes
    one batch at a time (a model scoring more customers than ``ctx.memory_limit`` holds).
    """

    table: ir.Table | pa.Table | pa.RecordBatchReader | None = None
    extra: dict[str, ir.Table | pa.Table | pa.RecordBatchReader] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    rows: int | None = None  # for nodes without a main table (the Segment action)
    # The node did its work but not its job (messages that did not reach Segment): the
    # engine keeps its rows and metrics and marks it failed with this message.
    error: str | None = None


ConfigT = TypeVar("ConfigT", bound=NodeConfig)


class Operator(Generic[ConfigT]):
    """Base class of every node type: a config model, one ``run`` method, and its traits.

    What the rest of segloop needs to know about a node type (how its output can be kept,
    what its progress counts, ...) is stored here as class attributes, so no module
    guesses it from the type's name.
    """

    type_name: ClassVar[str]
    config_model: ClassVar[type[NodeConfig]]  # a ClassVar cannot hold ConfigT (mypy)
    min_inputs: ClassVar[int] = 1
    max_inputs: ClassVar[int | None] = 1
    # The output is computed in Python (an Arrow table), so the engine can only keep it as
    # a table: `materialize: view` on such a node is a config error.
    OUTPUT_IN_PYTHON: ClassVar[bool] = False
    # The node reads its inputs only inside the SQL it runs in the warehouse (the input's
    # query becomes part of its own), so an upstream view costs it no more than a table.
    READS_INPUTS_AS_SQL: ClassVar[bool] = False
    # Kept as a view by default when every reader reads its inputs as SQL (the sql node).
    VIEW_BY_DEFAULT: ClassVar[bool] = False
    # The node writes to the warehouse itself while it runs (views, sync state), besides
    # the outputs the engine keeps: the UI's preview of its first rows cannot run it.
    WRITES_WHEN_RUN: ClassVar[bool] = False
    # The node sends its input's rows to Segment (sync state, reset, preview of payloads).
    SENDS_TO_SEGMENT: ClassVar[bool] = False
    # What its progress counts: rows for operators, messages sent for the Segment node.
    PROGRESS_UNIT: ClassVar[str] = "rows"
    # The section of the run report (report/build.py) drawn for the node, besides the generic
    # one (metrics, and charts chosen by output columns such as RFM scores): what was sent
    # to Segment, recommendation quality vs the baseline, CLV or propensity distributions.
    REPORT_SECTION: ClassVar[Literal["segment", "recommend", "clv", "propensity", "lift"] | None] = None

    def __init__(self, config: ConfigT):
        self.config: ConfigT = config

    def run(self, inputs: dict[str, ir.Table], ctx: RunContext) -> NodeOutput:
        raise NotImplementedError

    @staticmethod
    def only_input(inputs: dict[str, ir.Table]) -> ir.Table:
        return next(iter(inputs.values()))
