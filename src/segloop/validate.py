"""`segloop validate`: check the workspace file and pipeline files, every problem with its line."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from segloop.config import WORKSPACE_FILE, Workspace, WorkspaceConfig, pipeline_from_doc
from segloop.errors import ConfigError, ConfigErrors
from segloop.yaml_doc import YamlDoc, load_yaml, unset_env_refs


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
    return _check_text(file.read_text(), file, parse)


def _check_text(text: str, file: Path, parse: Callable[[YamlDoc], str]) -> FileCheck:
    check = FileCheck(file)
    try:
        doc = load_yaml(text, file)
        check.warnings = unset_env_refs(doc)
        check.summary = parse(doc)
    except ConfigErrors as exc:
        check.errors = list(exc.errors)
    except ConfigError as exc:
        check.errors = [exc]
    return check


def _pipeline_summary(doc: YamlDoc) -> str:
    pipeline = pipeline_from_doc(doc)
    return (f"pipeline `{pipeline.name}`, {len(pipeline.nodes)} nodes "
            f"({' -> '.join(pipeline.topological_order())})")


def check_pipeline_text(text: str, file: str | Path) -> FileCheck:
    """What `segloop validate` says of a pipeline file's text before it is saved (the UI's editor)."""
    return _check_text(text, Path(file), _pipeline_summary)


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

    targets = list(files) or workspace[0].pipeline_files()
    if not targets and not any(check.errors for check in checks):
        raise ConfigError("no pipeline files given and none found in pipelines/")
    checks.extend(_check_file(Path(file), _pipeline_summary) for file in targets)
    return checks
