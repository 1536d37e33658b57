"""The run report: one self-contained HTML page per run, written by the engine.

The package holds everything the report needs, so the engine never reaches up into the UI:
``build`` gathers a run's sections, ``html`` renders them, ``charts`` draws inline SVG,
``display`` formats times and statuses, and ``templates/_style.html`` is the stylesheet.
The UI (``segloop.web``) imports charts, display and the stylesheet from here.
"""

from __future__ import annotations

from segloop.report.build import (
    REDACTED,
    SENSITIVE_KEY,
    Redactor,
    ReportBuilder,
    Section,
    render,
    report_path,
    write_report,
)

__all__ = ["REDACTED", "SENSITIVE_KEY", "Redactor", "ReportBuilder", "Section", "render", "report_path",
           "write_report"]
