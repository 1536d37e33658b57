"""Jinja2 templates shared by the run report and the UI pages (autoescaped HTML)."""

from __future__ import annotations

from functools import cache
from typing import Any

import jinja2
from markupsafe import Markup

from segloop.masking import mask_text
from segloop.report import display
from segloop.report.charts import STATUS_COLORS, fmt


def _masked(value: Any) -> Any:
    """Every ``{{ value }}`` printed by a template, with credentials in URLs masked (segloop.masking)."""
    if isinstance(value, Markup):
        return Markup(mask_text(str(value)))
    return mask_text(value) if isinstance(value, str) else value


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        # The UI's pages, and the stylesheet it shares with the run report (report/templates).
        loader=jinja2.ChoiceLoader([jinja2.PackageLoader("segloop.web", "templates"),
                                    jinja2.PackageLoader("segloop.report", "templates")]),
        autoescape=jinja2.select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
        finalize=_masked,
    )
    env.filters["fmt"] = fmt
    env.filters["when"] = display.when
    env.filters["ago"] = display.ago
    env.filters["duration"] = display.duration
    env.globals["run_label"] = display.run_label
    env.globals["run_css"] = display.run_css
    env.globals["status_color"] = lambda status: STATUS_COLORS.get(status, STATUS_COLORS["pending"])
    return env


def render_template(name: str, **context: Any) -> str:
    return environment().get_template(name).render(**context)
