"""Workspace (`segloop.yml`) and pipeline (`pipelines/*.yml`) files -> frozen pydantic models.

YAML is read with line numbers kept for every key, so every problem is reported as
``file:line: message``. A pipeline's nodes are validated one by one against the model of
their ``type`` (a plain dict from type name to operator class), which gives one clear error
per problem instead of a wall of union errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from pydantic import BaseModel, ByteSize, ConfigDict, Field, PrivateAttr, ValidationError

from segloop.alerts import AlertsConfig
from segloop.errors import ConfigError, ConfigErrors
from segloop.memory import DEFAULT_MEMORY_LIMIT_BYTES, MemoryLimit
from segloop.operators import NODE_TYPES
from segloop.operators.base import NodeConfig
from segloop.schedule import ScheduleConfig
from segloop.warehouses import AnyWarehouseConfig, DuckDBConfig, WarehouseConfig
from segloop.yaml_doc import YamlDoc, load_yaml, pydantic_errors, read_yaml

if TYPE_CHECKING:  # pragma: no cover
    from segloop.store import RunStore
    from segloop.warehouses import Warehouse

WORKSPACE_FILE = "segloop.yml"
STATE_DIR = ".segloop"
HISTORY_FILE = "state.db"  # the run history, in STATE_DIR
NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# -- workspace ----------------------------------------------------------------------------


class CollectorConfig(BaseModel):
    """Settings of `segloop collector` taken from the workspace file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    keys: dict[str, str] = Field(default_factory=dict, description="write key env ref -> source schema")
    port: int = 8088
    data: str = ".segloop/collector"


def _default_warehouses() -> dict[str, AnyWarehouseConfig]:
    return {"default": DuckDBConfig()}


class WorkspaceConfig(BaseModel):
    """`segloop.yml`: named warehouses (the first or `default` is used when a pipeline names none)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str | None = None
    warehouses: dict[str, AnyWarehouseConfig] = Field(default_factory=_default_warehouses)
    pipelines: str = "pipelines"
    collector: CollectorConfig | None = None
    memory_limit: MemoryLimit = Field(
        default=ByteSize(DEFAULT_MEMORY_LIMIT_BYTES),
        description="What one node may hold in Python at once (`512MB`, `2GB`, `2GiB`); a node's "
        "own `memory_limit:` overrides it. DuckDB's own limit is the warehouse's `memory_limit`.",
    )


@dataclass
class WorkspaceFiles:
    """A folder with `segloop.yml`, `pipelines/` and the `.segloop/` state directory.

    The lower layer of a workspace: its files read into models, its run history and its
    warehouses opened. `segloop.workspace.Workspace` builds on it what the CLI, the UI and
    the scheduler ask (runs, pipelines, schedules, reports); the pipeline takes this one.
    """

    root: Path
    config: WorkspaceConfig

    @classmethod
    def load(cls, root: str | Path = ".") -> Self:
        root = Path(root).resolve()
        file = root / WORKSPACE_FILE
        if not file.exists():
            return cls(root=root, config=WorkspaceConfig())
        return cls.from_doc(root, read_yaml(file))

    @classmethod
    def from_doc(cls, root: Path, doc: YamlDoc) -> Self:
        """The workspace of a parsed `segloop.yml`; raises ConfigErrors listing every problem."""
        if doc.data is None:
            return cls(root=root, config=WorkspaceConfig())
        if not isinstance(doc.data, dict):
            raise ConfigError("the workspace file must be a mapping with `warehouses:`", doc.file, 1)
        errors = list(doc.duplicates)
        config = None
        try:
            config = WorkspaceConfig.model_validate(doc.data)
        except ValidationError as exc:
            errors.extend(pydantic_errors(exc, doc, (), "workspace"))
        if errors or config is None:
            raise ConfigErrors(errors) from None
        return cls(root=root, config=config)

    @classmethod
    def find(cls, start: str | Path = ".") -> Self:
        """The workspace containing ``start`` (searching parents for segloop.yml)."""
        here = Path(start).resolve()
        for folder in (here, *here.parents):
            if (folder / WORKSPACE_FILE).exists():
                return cls.load(folder)
        return cls.load(here)

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    @property
    def pipelines_dir(self) -> Path:
        return self.root / self.config.pipelines

    @property
    def history_file(self) -> Path:
        """The SQLite file of the run history (`.segloop/state.db`)."""
        return self.state_dir / HISTORY_FILE

    def has_history(self) -> bool:
        """Whether anything ran here (opening the history would create its file)."""
        return self.history_file.exists()

    def history(self) -> RunStore:
        """The run history, opened (created when missing); the caller closes it."""
        from segloop.store import RunStore

        return RunStore(self.history_file)

    def open_warehouse(self, name: str | None = None, *, create_schema: bool = True, cache_sql: bool = False) -> Warehouse:
        """A connection to the warehouse ``name`` of segloop.yml (`default` when None).

        ``cache_sql`` keeps the results of SQL translation under `.segloop/cache/sql`, as a
        pipeline run does; ``create_schema=False`` only looks (`segloop check-warehouse`).
        """
        from segloop.warehouses import Warehouse

        config = self.warehouse_config(name)
        warehouse = Warehouse.connect(config, self.root, name or "default", create_schema=create_schema)
        if cache_sql:
            from segloop.sql_cache import SqlCache

            warehouse.sql_cache = SqlCache(self.state_dir / "cache" / "sql", warehouse.backend)
        return warehouse

    def warehouse_config(self, name: str | None) -> WarehouseConfig:
        warehouses = self.config.warehouses
        if name is None:
            name = "default" if "default" in warehouses else next(iter(warehouses), "default")
        if name not in warehouses:
            if name == "default" and not warehouses:
                return DuckDBConfig()
            known = ", ".join(sorted(warehouses)) or "none"
            raise ConfigError(
                f"warehouse `{name}` is not defined in {WORKSPACE_FILE} (defined: {known}); "
                "add it under `warehouses:`"
            )
        return warehouses[name]

    def pipeline_files(self) -> list[Path]:
        folder = self.pipelines_dir
        if not folder.is_dir():
            return []
        return sorted([*folder.glob("*.yml"), *folder.glob("*.yaml")])

    def resolve_pipeline(self, name_or_path: str) -> Path:
        """A pipeline file given as a path, or by name from `pipelines/` (see `find_pipeline`)."""
        path = Path(name_or_path)
        if path.is_file():
            return path
        if path.exists():
            files = ", ".join(f.name for f in sorted(path.glob("*.y*ml"))[:5])
            raise ConfigError(
                f"{path} is a folder, not a pipeline file; give a .yml file"
                + (f" (this folder has: {files})" if files else "")
                + f" or the name of a pipeline in {self.pipelines_dir}"
            )
        return self.find_pipeline(name_or_path)

    def scan_pipelines(self) -> list[PipelineFile]:
        """Every file of `pipelines/` as `segloop validate` sees it: its pipeline, or its error.

        Each file is read within the YAML limits, so one hostile or broken file costs
        milliseconds and never stops the others from being found.
        """
        entries = []
        for file in self.pipeline_files():
            try:
                doc = read_yaml(file)
            except ConfigError as exc:
                entries.append(PipelineFile(file, None, exc))
                continue
            data = doc.data
            raw = data.get("name") if isinstance(data, dict) else None
            raw_name = raw if isinstance(raw, str) else None
            try:
                entries.append(PipelineFile(file, pipeline_from_doc(doc), raw_name=raw_name))
            except ConfigError as exc:
                entries.append(PipelineFile(file, None, exc, raw_name=raw_name))
        return entries

    def find_pipeline(self, name: str) -> Path:
        """The file of the pipeline called ``name`` (its `name:`), else the file ``name``.yml.

        Two files with the same `name:` would share tables, sync state and the run lock,
        so such a name is refused, naming both files. A file found by its file name that
        has errors raises them.
        """
        entries = self.scan_pipelines()
        named = [entry.file for entry in entries if entry.name == name]
        if len(named) > 1:
            raise ConfigError(duplicate_name_message(name, named))
        if named:
            return named[0]
        for entry in entries:
            if entry.file.stem == name:
                if entry.error is not None:
                    raise entry.error
                return entry.file
        raise ConfigError(
            f"no pipeline file `{name}`; give a path or the name of a pipeline in {self.pipelines_dir}"
            + (f" (pipelines: {', '.join(sorted({e.name for e in entries if e.name}))})" if any(e.name for e in entries) else "")
        )


Workspace = WorkspaceFiles  # the name most imports (and tests) use for the file layer


def duplicate_name_message(name: str, files: list[Path]) -> str:
    listed = ", ".join(str(file) for file in files[:-1]) + f" and {files[-1]}"
    return (f"pipeline name `{name}` is used by {listed}; give each file its own `name:` "
            "(pipelines with one name share their tables, sync state and run lock)")


@dataclass(frozen=True)
class PipelineFile:
    """One file of `pipelines/`: its checked pipeline, or the error that stops it."""

    file: Path
    config: PipelineConfig | None
    error: ConfigError | None = None
    # The `name:` written in the file, even when the file does not validate (the editor
    # opens and renames broken files by it).
    raw_name: str | None = None

    @property
    def name(self) -> str | None:
        return self.config.name if self.config is not None else None


# -- pipelines ----------------------------------------------------------------------------


class PipelineConfig(BaseModel):
    """A pipeline file: its warehouse and its nodes (in file order)."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    name: str
    warehouse: str | None = None
    description: str | None = None
    nodes: dict[str, NodeConfig]
    schedule: ScheduleConfig | None = None
    alerts: AlertsConfig | None = None
    # The model is frozen, so a node's upstream never changes; a `sql` node's is found by
    # parsing its query, which planning and each node run would otherwise repeat.
    _upstream: dict[str, list[str]] = PrivateAttr(default_factory=dict)
    _names: set[str] | None = PrivateAttr(default=None)

    def upstream_of(self, node: str) -> list[str]:
        if node not in self._upstream:
            config = self.nodes[node]
            names = config.upstream()
            if self._names is None:  # one set for all nodes: a set per node made 10,000 nodes quadratic
                self._names = set(self.nodes)  # read only: node types look names up in it
            for extra in config.implicit_upstream(self._names):
                if extra != node and extra not in names:
                    names.append(extra)
            self._upstream[node] = names
        return list(self._upstream[node])

    def topological_order(self) -> list[str]:
        """Nodes in an order where every node comes after its inputs (file order otherwise)."""
        order: list[str] = []
        done: set[str] = set()
        visiting: list[str] = []

        def visit(name: str) -> None:
            if name in done:
                return
            if name in visiting:
                cycle = [*visiting[visiting.index(name) :], name]
                raise ConfigError("cycle between nodes: " + " -> ".join(cycle))
            visiting.append(name)
            for up in self.upstream_of(name):
                if up in self.nodes:
                    visit(up)
            visiting.pop()
            done.add(name)
            order.append(name)

        for name in self.nodes:
            visit(name)
        return order

    def materialization(self, node: str) -> str:
        """``"view"`` or ``"table"``: how the engine keeps ``node``'s output in the warehouse.

        What dbt users expect: cheap SQL steps are views (no copy of their rows), and the
        outputs people query or a Segment node sends are tables. A view runs its query
        each time it is read, so it only pays when its readers read it inside their own
        SQL: a `sql` node whose readers are all `sql` or `rfm` nodes is a view. A node
        read by nobody (what people query), or by a node that pulls rows into Python
        (models read their input several times: counts, splits, batches) or sends them,
        is a table; so is every other node type, unless the node says `materialize:`.
        """
        config = self.nodes[node]
        if config.materialize is not None:
            return config.materialize
        if not NODE_TYPES[config.type].VIEW_BY_DEFAULT:
            return "table"
        readers = [name for name in self.nodes if node in self.upstream_of(name)]
        sql_readers = all(NODE_TYPES[self.nodes[r].type].READS_INPUTS_AS_SQL for r in readers)
        return "view" if readers and sql_readers else "table"

    def descendants(self, node: str) -> set[str]:
        out: set[str] = set()
        frontier = [node]
        while frontier:
            current = frontier.pop()
            for name in self.nodes:
                if current in self.upstream_of(name) and name not in out:
                    out.add(name)
                    frontier.append(name)
        return out




def parse_pipeline(text: str, file: str | Path = "<string>") -> PipelineConfig:
    """Parse and check a pipeline file; raises ConfigErrors listing every problem found."""
    return pipeline_from_doc(load_yaml(text, file))


def _declared_inputs(raw: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, upstream name) pairs a node's file text declares, read without its model.

    Read from the raw mapping so a node whose other keys are wrong still has its inputs
    checked: each problem is reported, not only the first of a node.
    """
    pairs: list[tuple[str, str]] = []
    if isinstance(raw.get("input"), str):
        pairs.append(("input", raw["input"]))
    if isinstance(raw.get("inputs"), list):
        pairs.extend(("inputs", name) for name in raw["inputs"] if isinstance(name, str))
    unique: dict[str, str] = {}
    for key, name in pairs:
        unique.setdefault(name, key)
    return [(key, name) for name, key in unique.items()]


def pipeline_from_doc(doc: YamlDoc) -> PipelineConfig:
    """Check a parsed pipeline file; raises ConfigErrors listing every problem found."""
    file = doc.file
    data = doc.data
    if not isinstance(data, dict):
        raise ConfigError("a pipeline file must be a mapping with `name:` and `nodes:`", file, 1)
    errors: list[ConfigError] = list(doc.duplicates)

    top_known = set(PipelineConfig.model_fields)
    for key in data:
        if key not in top_known:
            errors.append(ConfigError(f"pipeline: unknown key `{key}`", file, doc.line_of((key,))))
    name = data.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        errors.append(
            ConfigError(
                "pipeline: `name` must be an identifier (letters, digits, underscores), "
                f"got {name!r}",
                file,
                doc.line_of(("name",)),
            )
        )
    raw_nodes = data.get("nodes")
    nodes: dict[str, NodeConfig] = {}
    typed: dict[str, tuple[str, dict[str, Any]]] = {}  # nodes of a known type, valid or not
    if not isinstance(raw_nodes, dict) or not raw_nodes:
        errors.append(ConfigError("pipeline: `nodes:` must map node names to nodes", file, doc.line_of(("nodes",))))
        raw_nodes = {}
    for node_name, raw in raw_nodes.items():
        where = ("nodes", node_name)
        what = f"node `{node_name}`"
        if not isinstance(node_name, str) or not NAME_PATTERN.match(node_name):
            errors.append(ConfigError(f"{what}: node names must be identifiers", file, doc.line_of(where)))
            continue
        if not isinstance(raw, dict):
            errors.append(ConfigError(f"{what}: must be a mapping with a `type:`", file, doc.line_of(where)))
            continue
        node_type = raw.get("type")
        if node_type not in NODE_TYPES:
            known = ", ".join(sorted(NODE_TYPES))
            errors.append(
                ConfigError(
                    f"{what}: unknown node type `{node_type}`; known types: {known}",
                    file,
                    doc.line_of((*where, "type")),
                )
            )
            continue
        typed[node_name] = (node_type, raw)
        try:
            nodes[node_name] = NODE_TYPES[node_type].config_model.model_validate(raw)
        except ValidationError as exc:
            errors.extend(pydantic_errors(exc, doc, where, what))

    for node_name, (node_type, raw) in typed.items():
        declared = _declared_inputs(raw)
        for key, up in declared:
            if up not in raw_nodes:
                errors.append(
                    ConfigError(
                        f"node `{node_name}`: input `{up}` is not a node of this pipeline "
                        f"(nodes: {', '.join(raw_nodes)})",
                        file,
                        doc.line_of(("nodes", node_name, key)),
                    )
                )
            elif up == node_name:
                errors.append(ConfigError(f"node `{node_name}` names itself as input", file, doc.line_of(("nodes", node_name))))
        referenced = nodes[node_name].referenced_nodes() if node_name in nodes else {}
        for key, other in referenced.items():
            if other not in raw_nodes:
                errors.append(ConfigError(
                    f"node `{node_name}`: `{key}: {other}` is not a node of this pipeline (nodes: {', '.join(raw_nodes)})",
                    file, doc.line_of(("nodes", node_name, key))))
        op = NODE_TYPES[node_type]
        count = len(declared)
        if count < op.min_inputs:
            errors.append(
                ConfigError(
                    f"node `{node_name}`: a `{node_type}` node needs an upstream node; add `input: <node>`",
                    file,
                    doc.line_of(("nodes", node_name)),
                )
            )
        elif op.max_inputs is not None and count > op.max_inputs:
            errors.append(
                ConfigError(
                    f"node `{node_name}`: a `{node_type}` node takes at most {op.max_inputs} input(s), got {count}",
                    file,
                    doc.line_of(("nodes", node_name)),
                )
            )
        if raw.get("materialize") == "view" and op.OUTPUT_IN_PYTHON:
            errors.append(
                ConfigError(
                    f"node `{node_name}`: `materialize: view` needs a query the warehouse runs, but a "
                    f"`{node_type}` node computes its output in Python; use `materialize: table` "
                    "or drop the key",
                    file,
                    doc.line_of(("nodes", node_name, "materialize")),
                )
            )

    options = _parse_options(data, doc, errors)
    if errors:
        raise ConfigErrors(errors)
    pipeline = PipelineConfig(name=str(name), warehouse=data.get("warehouse"), description=data.get("description"), nodes=nodes, **options)
    try:
        pipeline.topological_order()
    except ConfigError as exc:
        first = exc.message.split(": ", 1)[-1].split(" -> ")[0]
        raise ConfigError(exc.message, file, doc.line_of(("nodes", first))) from None
    return pipeline


# Optional top-level sections, each validated against its own model.
PIPELINE_OPTIONS: dict[str, type[BaseModel]] = {"schedule": ScheduleConfig, "alerts": AlertsConfig}


def _parse_options(data: dict[str, Any], doc: YamlDoc, errors: list[ConfigError]) -> dict[str, Any]:
    """`schedule:` and `alerts:`, with file:line errors like the nodes get."""
    options: dict[str, Any] = {}
    for key, model in PIPELINE_OPTIONS.items():
        if data.get(key) is None:
            continue
        try:
            options[key] = model.model_validate(data[key])
        except ValidationError as exc:
            errors.extend(pydantic_errors(exc, doc, (key,), f"`{key}`"))
    return options


def load_pipeline(path: str | Path) -> PipelineConfig:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"pipeline file {path} does not exist")
    if path.is_dir():
        raise ConfigError(f"{path} is a folder, not a pipeline file; give a .yml file")
    return pipeline_from_doc(read_yaml(path))  # refuses pipes and devices, files over the limits
