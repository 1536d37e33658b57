"""`segloop validate`: check the workspace file and pipeline files, every problem with its line."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from segloop.config import (
    WORKSPACE_FILE,
    Workspace,
    WorkspaceConfig,
    pipeline_from_doc,
)
from segloop.errors import ConfigError, ConfigErrors
from segloop.yaml_doc import YamlDoc, load_yaml, read_yaml, unset_env_refs


@dataclass
class FileCheck:
    """What `segloop validate` found in one file: errors, warnings, and a summary when it is valid."""

    file: Path
    errors: list[ConfigError] = field(default_factory=list)
    warnings: list[ConfigError] = field(default_factory=list)
    summary: str | None = None
    # A valid pipeline's `name:` and its line, to find names used by two files.
    name: str | None = None
    name_line: int | None = None


def _check_file(file: Path, parse: Callable[[YamlDoc, FileCheck], str]) -> FileCheck:
    if file.is_dir() or not file.exists():
        what = "is a folder, not a pipeline file; give a .yml file" if file.exists() else "does not exist"
        return FileCheck(file, errors=[ConfigError(f"{file} {what}")])
    return _check(file, lambda: read_yaml(file), parse)


def _check(file: Path, read: Callable[[], YamlDoc], parse: Callable[[YamlDoc, FileCheck], str]) -> FileCheck:
    check = FileCheck(file)
    try:
        doc = read()
        check.warnings = unset_env_refs(doc)
        check.summary = parse(doc, check)
    except ConfigErrors as exc:
        check.errors = list(exc.errors)
    except ConfigError as exc:
        check.errors = [exc]
    return check


def _pipeline_summary(doc: YamlDoc, check: FileCheck) -> str:
    pipeline = pipeline_from_doc(doc)
    check.name, check.name_line = pipeline.name, doc.line_of(("name",))
    for node, config in pipeline.nodes.items():
        for key, why in config.deprecated_keys().items():
            check.warnings.append(ConfigError(f"node `{node}`: `{key}` {why}", doc.file,
                                              doc.line_of(("nodes", node, key))))
    return (f"pipeline `{pipeline.name}`, {len(pipeline.nodes)} nodes "
            f"({' -> '.join(pipeline.topological_order())})")


def check_pipeline_text(text: str, file: str | Path) -> FileCheck:
    """What `segloop validate` says of a pipeline file's text before it is saved (the UI's editor).

    The text is held to the same limits as a file (size, depth, aliases).
    """
    path = Path(file)
    return _check(path, lambda: load_yaml(text, path), _pipeline_summary)


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

    def workspace_summary(doc: YamlDoc, check: FileCheck) -> str:
        folder = doc.data.get("pipelines") if isinstance(doc.data, dict) else None
        if isinstance(folder, str):
            workspace[0] = Workspace(root, WorkspaceConfig(pipelines=folder))
        workspace[0] = Workspace.from_doc(root, doc)
        return f"workspace, warehouses: {', '.join(workspace[0].config.warehouses) or 'none'}"

    if (root / WORKSPACE_FILE).exists():
        checks.append(_check_file(root / WORKSPACE_FILE, workspace_summary))

    targets = list(files) or workspace[0].pipeline_files()
    if not targets and not any(check.errors for check in checks):
        raise ConfigError("no pipeline files given and none found in pipelines/")
    pipelines = [_check_file(Path(file), _pipeline_summary) for file in targets]
    _report_shared_names(pipelines, workspace[0] if files else None)
    checks.extend(pipelines)
    return checks


def _report_shared_names(checks: list[FileCheck], workspace: Workspace | None) -> None:
    """An error on each file whose pipeline `name:` another file uses too, naming both.

    ``workspace`` is given when only some files were checked: its other pipeline files
    count too, since `segloop run NAME` would find them.
    """
    users: dict[str, list[Path]] = {}
    seen: set[Path] = set()
    for check in checks:
        if check.name is not None:
            users.setdefault(check.name, []).append(check.file)
            seen.add(check.file.resolve())
    if workspace is not None:
        for entry in workspace.scan_pipelines():
            if entry.name in users and entry.file.resolve() not in seen:
                users[entry.name].append(entry.file)
    for check in checks:
        if check.name is not None and len(users[check.name]) > 1:
            others = [file for file in users[check.name] if file != check.file]
            check.errors.append(ConfigError(
                f"pipeline name `{check.name}` is also used by {', '.join(map(str, others))}; "
                "give each file its own `name:` (pipelines with one name share their tables, "
                "sync state and run lock, so `segloop run` refuses the name)",
                check.file, check.name_line))
            check.summary = None
