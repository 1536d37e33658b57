"""Workspace (`segloop.yml`) and pipeline (`pipelines/*.yml`) files -> frozen pydantic models.

YAML is read with line numbers kept for every key, so every problem is reported as
``file:line: message``. A pipeline's nodes are validated one by one against the model of
their ``type`` (a plain dict from type name to operator class), which gives one clear error
per problem instead of a wall of union errors.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from segloop.alerts import AlertsConfig
from segloop.errors import ConfigError, ConfigErrors
from segloop.operators import NODE_TYPES
from segloop.operators.base import NodeConfig
from segloop.schedule import ScheduleConfig
from segloop.secrets import ENV_REF
from segloop.warehouse import AnyWarehouseConfig, DuckDBConfig, WarehouseConfig

WORKSPACE_FILE = "segloop.yml"
STATE_DIR = ".segloop"
NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# -- YAML with line numbers ---------------------------------------------------------------


@dataclass
class YamlDoc:
    """Parsed YAML plus the line (1-based) of every key path, e.g. ('nodes', 'rfm', 'amount')."""

    data: Any
    lines: dict[tuple[Any, ...], int] = field(default_factory=dict)
    file: str = "<string>"
    # A key given twice in one mapping: YAML keeps the second silently, so the file does
    # not say what its author meant; each is an error at the second occurrence.
    duplicates: list[ConfigError] = field(default_factory=list)

    def line_of(self, loc: tuple[Any, ...]) -> int | None:
        """Line of the deepest known prefix of ``loc`` (pydantic locs may add union tags)."""
        best: int | None = self.lines.get(())
        path: tuple[Any, ...] = ()
        for part in loc:
            candidate = (*path, part)
            if candidate in self.lines:
                path = candidate
                best = self.lines[candidate]
        return best


def _to_python(
    node: yaml.Node,
    path: tuple[Any, ...],
    lines: dict[tuple[Any, ...], int],
    duplicates: list[tuple[tuple[Any, ...], Any, int, int]],
) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        first_line: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = yaml.safe_load(yaml.serialize(key_node)) if key_node.tag != "tag:yaml.org,2002:str" else key_node.value
            line = key_node.start_mark.line + 1
            if key in first_line:
                duplicates.append((path, key, first_line[key], line))
            else:
                first_line[key] = line
            lines[(*path, key)] = line
            out[key] = _to_python(value_node, (*path, key), lines, duplicates)
            lines[(*path, key)] = line
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(item, (*path, i), lines, duplicates) for i, item in enumerate(node.value)]
    return yaml.safe_load(yaml.serialize(node))


def _dotted(path: tuple[Any, ...]) -> str:
    """``('alerts', 'channels', 0, 'url')`` -> ``alerts.channels[0].url``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _owner(path: tuple[Any, ...]) -> tuple[str, tuple[Any, ...]]:
    """Who a key path belongs to, for messages: (``node `rfm`: ``, rest of the path)."""
    if len(path) >= 2 and path[0] in ("nodes", "warehouses"):
        kind = "node" if path[0] == "nodes" else "warehouse"
        return f"{kind} `{path[1]}`: ", path[2:]
    return "", path


def _duplicate_error(path: tuple[Any, ...], key: Any, first: int, line: int, file: str) -> ConfigError:
    if path in (("nodes",), ("warehouses",)):
        kind = "node" if path == ("nodes",) else "warehouse"
        message = f"{kind} `{key}` is defined twice (first at line {first}); rename or remove one"
    else:
        owner, rest = _owner((*path, key))
        message = f"{owner}key `{_dotted(rest)}` is given twice (first at line {first}); remove one"
    return ConfigError(message, file, line)


def load_yaml(text: str, file: str | Path = "<string>") -> YamlDoc:
    """Parse YAML keeping line numbers; bad YAML is a ConfigError naming the line."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or str(exc)
        if exc.context_mark is not None and "<stream end>" in problem:
            # An unclosed bracket or quote is reported at the end of the file; the line
            # that opened it is the one to fix.
            problem = f"{problem} ({exc.context} on line {exc.context_mark.line + 1} is never closed)"
            mark = exc.context_mark
        line = mark.line + 1 if mark else None
        raise ConfigError(f"invalid YAML: {problem}", file, line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", file) from None
    lines: dict[tuple[Any, ...], int] = {}
    found: list[tuple[tuple[Any, ...], Any, int, int]] = []
    data = _to_python(root, (), lines, found) if root is not None else None
    duplicates = [_duplicate_error(path, key, first, line, str(file)) for path, key, first, line in found]
    return YamlDoc(data=data, lines=lines, file=str(file), duplicates=duplicates)


def unset_env_refs(doc: YamlDoc) -> list[ConfigError]:
    """Every ``${NAME}`` in the file whose variable is not set (or empty) here, with its line.

    `segloop validate` reports these as warnings, all at once: the variables may well be
    set where the pipeline runs, but a missing one would otherwise only show at run time.
    """
    found: list[ConfigError] = []

    def report(ref: str, path: tuple[Any, ...], line_path: tuple[Any, ...]) -> None:
        match = ENV_REF.match(ref)
        if match is None or os.environ.get(match.group(1)):
            return
        name = match.group(1)
        owner, rest = _owner(path)
        message = f"{owner}`{_dotted(rest)}` names ${{{name}}}, which is not set; export {name}=... before running"
        found.append(ConfigError(message, doc.file, doc.line_of(line_path)))

    def walk(value: Any, path: tuple[Any, ...]) -> None:
        if isinstance(value, str):
            report(value, path, path)
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str):
                    report(key, path, (*path, key))  # e.g. collector keys: {${WRITE_KEY}: schema}
                walk(item, (*path, key))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, (*path, i))

    walk(doc.data, ())
    return found


def _pydantic_errors(
    exc: ValidationError, doc: YamlDoc, prefix: tuple[Any, ...], what: str
) -> list[ConfigError]:
    errors = []
    for err in exc.errors():
        loc = (*prefix, *err["loc"])
        key = ".".join(str(p) for p in err["loc"]) or what
        if err["type"] == "extra_forbidden":
            message = f"{what}: unknown key `{err['loc'][-1]}`"
        elif err["type"] == "missing":
            message = f"{what}: missing required key `{key}`"
        else:
            # pydantic prefixes the message of a check of ours with "Value error, "
            message = f"{what}: `{key}`: {err['msg'].removeprefix('Value error, ')}"
        errors.append(ConfigError(message, doc.file, doc.line_of(loc)))
    return errors


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


@dataclass
class Workspace:
    """A folder with `segloop.yml`, `pipelines/` and the `.segloop/` state directory."""

    root: Path
    config: WorkspaceConfig

    @classmethod
    def load(cls, root: str | Path = ".") -> Workspace:
        root = Path(root).resolve()
        file = root / WORKSPACE_FILE
        if not file.exists():
            return cls(root=root, config=WorkspaceConfig())
        return cls.from_doc(root, load_yaml(file.read_text(), file))

    @classmethod
    def from_doc(cls, root: Path, doc: YamlDoc) -> Workspace:
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
            errors.extend(_pydantic_errors(exc, doc, (), "workspace"))
        if errors or config is None:
            raise ConfigErrors(errors) from None
        return cls(root=root, config=config)

    @classmethod
    def find(cls, start: str | Path = ".") -> Workspace:
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
        """A pipeline file given as a path, or by name from `pipelines/`."""
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
        for file in self.pipeline_files():
            if file.stem == name_or_path:
                return file
            try:
                if load_yaml(file.read_text(), file).data.get("name") == name_or_path:
                    return file
            except Exception:
                continue
        raise ConfigError(
            f"no pipeline file `{name_or_path}`; give a path or the name of a file in "
            f"{self.pipelines_dir}"
        )


# -- pipelines ----------------------------------------------------------------------------


# Node types that read their inputs only inside the SQL they run in the warehouse (the
# input's query becomes part of theirs), so an upstream view costs them no more than a table.
SQL_READERS: frozenset[str] = frozenset({"sql", "rfm"})


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

    def upstream_of(self, node: str) -> list[str]:
        if node not in self._upstream:
            config = self.nodes[node]
            names = config.upstream()
            for extra in config.implicit_upstream(set(self.nodes) - {node}):
                if extra not in names:
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
        if config.type != "sql":
            return "table"
        readers = [name for name in self.nodes if node in self.upstream_of(name)]
        return "view" if readers and all(self.nodes[r].type in SQL_READERS for r in readers) else "table"

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


# Node types whose output is computed in Python (an Arrow table), so the engine can only
# keep it as a table: `materialize: view` on them cannot work.
PYTHON_OUTPUT_TYPES: frozenset[str] = frozenset({"clusters", "clv", "propensity", "recommend", "segment_source"})


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
            errors.extend(_pydantic_errors(exc, doc, where, what))

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
        if raw.get("materialize") == "view" and node_type in PYTHON_OUTPUT_TYPES:
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
            errors.extend(_pydantic_errors(exc, doc, (key,), f"`{key}`"))
    return options


def load_pipeline(path: str | Path) -> PipelineConfig:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"pipeline file {path} does not exist")
    if not path.is_file():
        raise ConfigError(f"{path} is a folder, not a pipeline file; give a .yml file")
    return parse_pipeline(path.read_text(), path)


# -- segloop validate ---------------------------------------------------------------------


@dataclass
class FileCheck:
    """What `segloop validate` found in one file: errors, warnings, and a summary when it is valid."""

    file: Path
    errors: list[ConfigError] = field(default_factory=list)
    warnings: list[ConfigError] = field(default_factory=list)
    summary: str | None = None


def _check_file(file: Path, parse: Callable[[YamlDoc], str]) -> FileCheck:
    check = FileCheck(file)
    if not file.is_file():
        what = "is a folder, not a pipeline file; give a .yml file" if file.exists() else "does not exist"
        check.errors = [ConfigError(f"{file} {what}")]
        return check
    try:
        doc = load_yaml(file.read_text(), file)
        check.warnings = unset_env_refs(doc)
        check.summary = parse(doc)
    except ConfigErrors as exc:
        check.errors = list(exc.errors)
    except ConfigError as exc:
        check.errors = [exc]
    return check


def check_files(files: list[Path]) -> list[FileCheck]:
    """Check the workspace file (when there is one) and the given pipeline files.

    With no files given, every pipeline of the workspace is checked. Raises ConfigError
    when there is nothing to check.
    """
    here = Path(".").resolve()
    root = next((folder for folder in (here, *here.parents) if (folder / WORKSPACE_FILE).exists()), here)
    checks: list[FileCheck] = []
    # Where the pipelines are; set before the workspace file is checked, so that a broken
    # workspace file still has its pipelines checked.
    workspace = [Workspace(root, WorkspaceConfig())]

    def workspace_summary(doc: YamlDoc) -> str:
        folder = doc.data.get("pipelines") if isinstance(doc.data, dict) else None
        if isinstance(folder, str):
            workspace[0] = Workspace(root, WorkspaceConfig(pipelines=folder))
        workspace[0] = Workspace.from_doc(root, doc)
        return f"workspace, warehouses: {', '.join(workspace[0].config.warehouses) or 'none'}"

    if (root / WORKSPACE_FILE).exists():
        checks.append(_check_file(root / WORKSPACE_FILE, workspace_summary))

    def pipeline_summary(doc: YamlDoc) -> str:
        pipeline = pipeline_from_doc(doc)
        return (f"pipeline `{pipeline.name}`, {len(pipeline.nodes)} nodes "
                f"({' -> '.join(pipeline.topological_order())})")

    targets = list(files) or workspace[0].pipeline_files()
    if not targets and not any(check.errors for check in checks):
        raise ConfigError("no pipeline files given and none found in pipelines/")
    checks.extend(_check_file(Path(file), pipeline_summary) for file in targets)
    return checks
