"""What every UI page shares: the app's state, page and error rendering, table cells.

The pages of web/app.py and the editor's of web/editor.py both render through here, so
every POST form carries the request's CSRF token, and neither module imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse

from segloop.config import NAME_PATTERN
from segloop.errors import ConfigError
from segloop.pipeline import Pipeline
from segloop.report import Redactor, charts
from segloop.scheduler import BackgroundRuns, Scheduler
from segloop.store import RunStore
from segloop.web.guard import CSRF_TOKEN, with_csrf
from segloop.web.templating import render_template
from segloop.workspace import Workspace


@dataclass
class UiState:
    """What the pages share: the workspace and the runs started from the UI or the scheduler."""

    workspace: Workspace
    runs: BackgroundRuns
    scheduler: Scheduler | None = None

    def store(self) -> RunStore:
        return self.workspace.history()

    def pipeline(self, name: str) -> Pipeline:
        """The pipeline whose `name:` is ``name``, as `segloop validate` lists it; else a ConfigError (404).

        Only names are looked up, never paths: ``segloop.yml``, ``.env`` or ``.`` are not
        pipeline names, so nothing outside `pipelines/` is read.
        """
        if not NAME_PATTERN.match(name):
            raise ConfigError(f"no pipeline file `{name}`: pipeline names are letters, digits and underscores")
        file = self.workspace.find_pipeline(name)
        pipeline = Pipeline.load(file, self.workspace)
        if pipeline.name != name:
            raise ConfigError(f"no pipeline file `{name}` ({file.name} holds pipeline `{pipeline.name}`)")
        return pipeline


def render_page(name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """Every UI page is rendered here, which gives each POST form the request's CSRF token."""
    return HTMLResponse(with_csrf(render_template(name, **context), CSRF_TOKEN.get()), status_code=status_code)


def error_page(message: str, status_code: int = 404) -> HTMLResponse:
    return render_page("error.html", status_code=status_code, title="Problem", message=message)


def ui_state(request: Request) -> UiState:
    state: UiState = request.app.state.ui
    return state


def cell_text(redact: Redactor, value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return charts.fmt(value)
    return redact.text(str(redact.value(value)) if value is not None else "")
