"""What the CLI and the UI ask of a workspace beyond one pipeline run: a run's report.

It sits above both the pipeline and the report builder. The report is written by the
pipeline at the end of a run; rebuilding one later (`segloop report`, the UI's report
page) needs the pipeline again, so that step lives here rather than in report.py, which
would otherwise import the pipeline that imports it.
"""

from __future__ import annotations

from pathlib import Path

from segloop.config import Workspace
from segloop.pipeline import Pipeline
from segloop.report import render, report_path, write_report
from segloop.store import RunStore


def ensure_report(workspace: Workspace, run_id: str, rebuild: bool = False) -> Path:
    """The report file of a run (by id, prefix or `latest`), building it when missing."""
    store = RunStore(workspace.state_dir / "state.db")
    try:
        run = store.get_run(run_id)
    finally:
        store.close()
    path = report_path(workspace, run.id)
    if path.exists() and not rebuild:
        return path
    pipeline = None
    for candidate in (run.file, run.pipeline):
        if not candidate:
            continue
        try:
            pipeline = Pipeline.load(candidate, workspace)
            break
        except Exception:  # the file may have moved or changed since the run
            continue
    if pipeline is not None and pipeline.name == run.pipeline:
        return write_report(pipeline, run.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(run), encoding="utf-8")
    return path
