"""YAML read with the line of every key, so every problem is reported as ``file:line: message``.

A key given twice in one mapping is an error at its second occurrence (YAML would keep the
second silently); ``${NAME}`` references whose variable is not set are found with their
lines; pydantic's errors are turned into ``ConfigError``s at the line of their key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from segloop.errors import ConfigError
from segloop.secrets import ENV_REF


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


def pydantic_errors(
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
