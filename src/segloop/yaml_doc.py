"""YAML read with the line of every key, so every problem is reported as ``file:line: message``.

A key given twice in one mapping is an error at its second occurrence (YAML would keep the
second silently); ``${NAME}`` references whose variable is not set are found with their
lines; pydantic's errors are turned into ``ConfigError``s at the line of their key.

Workspace files are trusted, but a malformed or huge one must give a clear error fast,
never a hang, a crash or a traceback: files are read up to ``MAX_FILE_BYTES``; before
anything is built, one pass over the parser's events refuses nesting deeper than
``MAX_DEPTH``, an alias inside the value it names, and aliases that would expand the file
past ``MAX_VALUES`` values (a 400-byte "billion laughs" file expands to billions), each at
its line. Aliases and merge keys (``<<: *defaults``) within those limits work as in YAML.
libyaml does the parsing when PyYAML has it (100x faster than pure Python).
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

MAX_FILE_BYTES = 1_000_000
"""A pipeline or workspace file larger than this is refused before it is parsed."""
MAX_DEPTH = 100
"""Nested mappings and lists deeper than this are refused (the composer recurses)."""
MAX_VALUES = 250_000
"""Values (scalars, mappings, lists) a file may hold, each alias counted as a copy of what it names."""

Loader: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"


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


def read_yaml(path: str | Path) -> YamlDoc:
    """Read and parse a YAML file: at most ``MAX_FILE_BYTES``, UTF-8, limits checked first."""
    path = Path(path)
    return load_yaml(read_text_limited(path), path)


def read_text_limited(path: str | Path) -> str:
    """A workspace file's text, read only while it is within ``MAX_FILE_BYTES`` (and UTF-8).

    A huge or binary file in `pipelines/` is refused after reading one byte past the limit,
    with an error naming the file, instead of being read whole first.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else ("does not exist" if not path.exists() else "is not a regular file")
        raise ConfigError(f"{path} {what}; give a .yml file")
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror or exc}", path) from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(_too_large(path.stat().st_size), path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"not UTF-8 text (byte 0x{data[exc.start]:02x}); save the file as UTF-8", path, line) from None
    return text


def _too_large(size: int) -> str:
    return (f"the file is {size:,} bytes; segloop reads pipeline and workspace files up to "
            f"{MAX_FILE_BYTES:,} bytes (split it, or move long SQL into the warehouse as views)")


def load_yaml(text: str, file: str | Path = "<string>") -> YamlDoc:
    """Parse YAML keeping line numbers; bad YAML, or YAML past the limits, is a ConfigError naming the line."""
    if len(text) > MAX_FILE_BYTES:
        raise ConfigError(_too_large(len(text.encode("utf-8", "surrogatepass"))), file)
    try:
        _check_limits(text, file)
        root = yaml.compose(text, Loader=Loader)
    except yaml.MarkedYAMLError as exc:
        problem, line = _syntax_problem(exc, text)
        raise ConfigError(f"invalid YAML: {problem}", file, line) from None
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise ConfigError(f"invalid YAML: {exc.reason} (U+{char:04X}); remove it", file, line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", file) from None
    builder = _Builder(str(file))
    data = builder.value(root, ()) if root is not None else None
    duplicates = [_duplicate_error(path, key, first, line, str(file)) for path, key, first, line in builder.duplicates]
    return YamlDoc(data=data, lines=builder.lines, file=str(file), duplicates=duplicates)


def _syntax_problem(exc: yaml.MarkedYAMLError, text: str) -> tuple[str, int | None]:
    """The parser's complaint as one sentence, and the line to fix."""
    problem = exc.problem or str(exc)
    mark = exc.problem_mark or exc.context_mark
    context, opened = exc.context, exc.context_mark
    if context and opened is not None:
        where = opened.line + 1
        at_end = exc.problem_mark is not None and exc.problem_mark.index >= len(text.rstrip())
        if context.startswith(("while parsing ", "while scanning ")):
            what = context.removeprefix("while parsing ").removeprefix("while scanning ")
            if "<stream end>" in problem or at_end:
                # An unclosed bracket or quote is reported at the end of the file; the
                # line that opened it is the one to fix.
                return f"{problem}: {what} opened on line {where} is never closed", where
            problem = f"{problem} (in {what} started on line {where})"
        elif problem.startswith("but "):  # "expected a single document ..., but found another document"
            problem = f"{context}, {problem}"
        elif "first occurrence" in context:  # "found duplicate anchor; first occurrence" / "second occurrence"
            problem = f"{context.split(';')[0]} (first on line {where}); rename one"
        else:
            problem = f"{problem} ({context})"
    return problem, (mark.line + 1 if mark is not None else None)


def _check_limits(text: str, file: str | Path) -> None:
    """One pass over the parser's events, before anything is built: depth, aliases, size.

    Counts the values the file would expand to, each alias as a copy of the value it
    names (whose size is known once its anchor is closed), so an alias bomb is refused at
    the alias that crosses ``MAX_VALUES`` without expanding anything. An alias met while
    its anchor is still open would make the value infinite, and is refused too.
    """
    frames: list[list[Any]] = []  # open mappings and lists: [expanded size so far, anchor id]
    current: dict[str, int] = {}  # anchor name -> id of its latest definition
    sizes: dict[int, int] = {}  # anchor id -> expanded size, once its value is closed
    total = 0

    def add(size: int, event: yaml.Event) -> None:
        nonlocal total
        total += size
        if frames:
            frames[-1][0] += size
        if total > MAX_VALUES:
            line = _line(event)
            if isinstance(event, yaml.AliasEvent):
                raise ConfigError(
                    f"the alias *{event.anchor} here makes the file hold more than {MAX_VALUES:,} values "
                    "(each alias counts as a copy of what it names); write the values out or use fewer aliases",
                    file, line)
            raise ConfigError(f"the file holds more than {MAX_VALUES:,} values; split it", file, line)

    def define(anchor: str | None) -> int | None:
        if anchor is None:
            return None
        current[anchor] = len(current) + len(sizes) + 1
        return current[anchor]

    for event in yaml.parse(text, Loader=Loader):
        if isinstance(event, yaml.CollectionStartEvent):
            if len(frames) >= MAX_DEPTH:
                raise ConfigError(f"values are nested more than {MAX_DEPTH} levels deep; flatten them",
                                  file, _line(event))
            frames.append([0, define(event.anchor)])
            add(1, event)  # counted in its parent below, once closed
            frames[-1][0] = 1
        elif isinstance(event, yaml.CollectionEndEvent):
            size, anchor_id = frames.pop()
            if anchor_id is not None:
                sizes[anchor_id] = size
            if frames:
                frames[-1][0] += size
        elif isinstance(event, yaml.ScalarEvent):
            anchor_id = define(event.anchor)
            if anchor_id is not None:
                sizes[anchor_id] = 1
            add(1, event)
        elif isinstance(event, yaml.AliasEvent):
            anchor_id = current.get(event.anchor or "")
            line = _line(event)
            if anchor_id is None:
                raise ConfigError(f"the alias *{event.anchor} names no anchor; define &{event.anchor} "
                                  "before it, in the same document", file, line)
            if anchor_id not in sizes:
                raise ConfigError(f"the alias *{event.anchor} is inside the value &{event.anchor} it names, "
                                  "which would make that value infinite; remove it", file, line)
            add(sizes[anchor_id], event)
        elif isinstance(event, yaml.DocumentStartEvent):
            current.clear()  # anchors belong to their document


def _line(event: yaml.Event) -> int | None:
    return event.start_mark.line + 1 if event.start_mark is not None else None


def _short_tag(tag: str) -> str:
    return tag.replace("tag:yaml.org,2002:", "!!")


class _Builder:
    """Composed YAML nodes -> Python values, recording the line of every key path.

    The node graph may share nodes (aliases); `_check_limits` has bounded what sharing
    expands to, and refused cycles, before this runs.
    """

    def __init__(self, file: str):
        self.file = file
        self.lines: dict[tuple[Any, ...], int] = {}
        self.duplicates: list[tuple[tuple[Any, ...], Any, int, int]] = []
        self.constructor = yaml.constructor.SafeConstructor()

    def value(self, node: yaml.Node, path: tuple[Any, ...]) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            self._check_tag(node, "tag:yaml.org,2002:map")
            return self.mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            self._check_tag(node, "tag:yaml.org,2002:seq")
            return [self.value(item, (*path, i)) for i, item in enumerate(node.value)]
        return self.scalar(node)

    def _check_tag(self, node: yaml.Node, expected: str) -> None:
        if node.tag != expected:
            raise ConfigError(f"invalid YAML: the tag {_short_tag(node.tag)} is not supported here; remove it",
                              self.file, node.start_mark.line + 1)

    def scalar(self, node: yaml.Node) -> Any:
        if node.tag == _STR:
            return node.value
        try:
            return self.constructor.construct_object(node)
        except Exception as exc:  # ConstructorError, or int()/base64/date errors from a tagged value
            problem = getattr(exc, "problem", None) or str(exc)
            shown = str(node.value)[:60]
            raise ConfigError(f"invalid YAML: cannot read {shown!r} as {_short_tag(node.tag)}: {problem}; "
                              "fix the value or remove the tag",
                              self.file, node.start_mark.line + 1) from None

    def mapping(self, node: yaml.MappingNode, path: tuple[Any, ...]) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        first_line: dict[Any, int] = {}
        own, merged = self._pairs(node)
        for key_node, value_node in own:
            key = self.key(key_node)
            line = key_node.start_mark.line + 1
            if key in first_line:
                self.duplicates.append((path, key, first_line[key], line))
            else:
                first_line[key] = line
            self.lines[(*path, key)] = line
            out[key] = self.value(value_node, (*path, key))
            self.lines[(*path, key)] = line
        for key_node, value_node in merged:  # `<<: *defaults`: keys given here win
            key = self.key(key_node)
            if key not in out:
                self.lines[(*path, key)] = key_node.start_mark.line + 1
                out[key] = self.value(value_node, (*path, key))
        return out

    def key(self, node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            kind = "mapping" if isinstance(node, yaml.MappingNode) else "list"
            raise ConfigError(f"invalid YAML: a {kind} is used as a key; keys must be names",
                              self.file, node.start_mark.line + 1)
        return node.value if node.tag == _STR else self.scalar(node)

    def _pairs(self, node: yaml.MappingNode) -> tuple[list[tuple[yaml.Node, yaml.Node]], list[tuple[yaml.Node, yaml.Node]]]:
        """The mapping's own (key, value) nodes, and those its ``<<`` merge keys bring in, in order of precedence.

        Iterative (merges may chain through many anchors): each merged mapping's own keys,
        then what it merges itself, depth first, as YAML's merge-key spec orders them.
        """
        own: list[tuple[yaml.Node, yaml.Node]] = []
        merged: list[tuple[yaml.Node, yaml.Node]] = []
        stack: list[tuple[yaml.MappingNode, bool]] = [(node, True)]
        expanded = 0
        while stack:
            mapping, is_own = stack.pop()
            expanded += 1
            if expanded > MAX_VALUES:
                raise ConfigError(f"merge keys (<<) expand to more than {MAX_VALUES:,} mappings; use fewer",
                                  self.file, node.start_mark.line + 1)
            sources: list[yaml.Node] = []
            for key_node, value_node in mapping.value:
                if key_node.tag == _MERGE:
                    sources.extend(value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node])
                else:
                    (own if is_own else merged).append((key_node, value_node))
            for source in reversed(sources):
                if not isinstance(source, yaml.MappingNode):
                    raise ConfigError("invalid YAML: `<<` merges mappings only (e.g. `<<: *defaults`)",
                                      self.file, source.start_mark.line + 1)
                stack.append((source, False))
        return own, merged


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
