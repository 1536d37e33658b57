"""The workspace as the CLI, the UI and the scheduler see it: runs, pipelines, warehouses, reports.

`config.WorkspaceFiles` reads a workspace's files into models and opens its run history
and warehouses; the pipeline needs no more. This facade adds what sits above one pipeline
run: the run history as records, a pipeline by name, the schedules of every pipeline and a
run's report (rebuilding one needs the pipeline again, so that step lives here rather than
in report/build.py, which would otherwise import the pipeline that imports it).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Self

from segloop.config import WorkspaceFiles
from segloop.errors import SegloopError
from segloop.pipeline import Pipeline
from segloop.report import render, report_path, write_report

if TYPE_CHECKING:  # pragma: no cover
    from segloop.schedule import ScheduleConfig
    from segloop.store import RunRecord
    from segloop.warehouses import Warehouse


class Workspace(WorkspaceFiles):
    """A workspace folder and what can be asked of it beyond its files."""

    @classmethod
    def of(cls, files: WorkspaceFiles) -> Self:
        """The facade over ``files`` (itself when it is one already)."""
        if isinstance(files, cls):
            return files
        return cls(root=files.root, config=files.config)

    def runs(self, pipeline: str | None = None, limit: int = 20) -> list[RunRecord]:
        """The latest runs, newest first (none, and no file created, when nothing ran here)."""
        if not self.has_history():
            return []
        store = self.history()
        try:
            return store.list_runs(pipeline, limit)
        finally:
            store.close()

    def run(self, run_id: str) -> RunRecord:
        """One run, by id, a unique prefix or `latest`."""
        if not self.has_history():  # nothing ran here: create nothing either
            raise SegloopError(f"no runs yet in {self.root}; start one with: segloop run PIPELINE")
        store = self.history()
        try:
            return store.get_run(run_id)
        finally:
            store.close()

    def warehouse(self, name: str | None = None, *, create_schema: bool = True) -> Warehouse:
        """A connection to the warehouse ``name`` of segloop.yml (`default` when None)."""
        return self.open_warehouse(name, create_schema=create_schema)

    def pipeline(self, name_or_path: str | Path) -> Pipeline:
        """A pipeline of this workspace, by its name or its file."""
        return Pipeline.load(name_or_path, self)

    def schedules(self) -> dict[str, ScheduleConfig]:
        """Pipeline name -> schedule, for every pipeline file that has one (bad files are logged)."""
        from segloop.scheduler import workspace_schedules

        return workspace_schedules(self)

    def report(self, run_id: str, rebuild: bool = False) -> Path:
        """The report file of a run (by id, prefix or `latest`), building it when missing."""
        run = self.run(run_id)
        path = report_path(self, run.id)
        if path.exists() and not rebuild:
            return path
        pipeline = None
        for candidate in (run.file, run.pipeline):
            if not candidate:
                continue
            try:
                pipeline = Pipeline.load(candidate, self)
                break
            except Exception:  # the file may have moved or changed since the run
                continue
        if pipeline is not None and pipeline.name == run.pipeline:
            return write_report(pipeline, run.id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(run), encoding="utf-8")
        return path


def ensure_report(workspace: WorkspaceFiles, run_id: str, rebuild: bool = False) -> Path:
    """The report file of a run (by id, prefix or `latest`), building it when missing."""
    return Workspace.of(workspace).report(run_id, rebuild)
