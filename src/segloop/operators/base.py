"""The operator contract: a node config (pydantic, with a ``type``) and one ``run`` method.

An operator takes its input tables (Ibis expressions over upstream nodes' materialized
outputs) and a run context, and returns a ``NodeOutput``: its main table (an Ibis
expression, computed inside the warehouse, or an Arrow table computed in Python), extra
tables (``<pipeline>__<node>__<suffix>``) and metrics for run history and reports.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:  # pragma: no cover
    import ibis.expr.types as ir
    import pyarrow as pa

    from segloop.store import RunStore
    from segloop.warehouses import Warehouse

log = logging.getLogger("segloop")


class NodeConfig(BaseModel):
    """Keys every node has; each node type adds its own (unknown keys are rejected)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

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

    def table_name(self, suffix: str | None = None, node: str | None = None) -> str:
        """Warehouse table name of a node's output: ``<pipeline>__<node>[__<suffix>]``."""
        base = f"{self.pipeline}__{node or self.node}"
        return f"{base}__{suffix}" if suffix else base

    def warn(self, message: str) -> None:
        log.warning("node `%s`: %s", self.node, message)
        self.warnings.append(message)


@dataclass
class NodeOutput:
    """What a node hands back to the engine."""

    table: ir.Table | pa.Table | None = None
    extra: dict[str, ir.Table | pa.Table] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    rows: int | None = None  # for nodes without a main table (the Segment action)
    # The node did its work but not its job (messages that did not reach Segment): the
    # engine keeps its rows and metrics and marks it failed with this message.
    error: str | None = None


class Operator:
    """Base class of every node type: a config model and one ``run`` method."""

    type_name: ClassVar[str]
    config_model: ClassVar[type[NodeConfig]]
    min_inputs: ClassVar[int] = 1
    max_inputs: ClassVar[int | None] = 1
    # The node writes to the warehouse itself while it runs (views, sync state), besides
    # the outputs the engine keeps: the UI's preview of its first rows cannot run it.
    WRITES_WHEN_RUN: ClassVar[bool] = False

    def __init__(self, config: NodeConfig):
        self.config = config

    def run(self, inputs: dict[str, ir.Table], ctx: RunContext) -> NodeOutput:
        raise NotImplementedError

    @staticmethod
    def only_input(inputs: dict[str, ir.Table]) -> ir.Table:
        return next(iter(inputs.values()))
