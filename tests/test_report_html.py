"""The run report looks the same since it is written in Python instead of a Jinja2 template.

`tests/data/report_reference.html` is the template the report was rendered with before
(`segloop.report.html` explains why it changed); every case below, with awkward text in
every field, must give the same bytes through both. A deliberate change of the report's
layout changes both files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import pytest
from markupsafe import Markup

from segloop.report import Section, display
from segloop.report.charts import STATUS_COLORS, fmt
from segloop.report.html import render_report
from segloop.store import NodeRunRecord, RunRecord

REFERENCE = Path(__file__).parent / "data" / "report_reference.html"
TEMPLATES = Path(__file__).parents[1] / "src" / "segloop" / "report" / "templates"
AWKWARD = "a <b> & \"c\" 'd'"


def reference_template() -> jinja2.Template:
    """The former report template, in the environment `segloop.web.templating` sets up."""
    env = jinja2.Environment(
        loader=jinja2.DictLoader({"_style.html": (TEMPLATES / "_style.html").read_text(),
                                  "report.html": REFERENCE.read_text()}),
        autoescape=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined,
    )
    env.filters["fmt"] = fmt
    env.filters["when"] = display.when
    env.filters["duration"] = display.duration
    env.globals["run_label"] = display.run_label
    env.globals["run_css"] = display.run_css
    env.globals["status_color"] = lambda status: STATUS_COLORS.get(status, STATUS_COLORS["pending"])
    return env.get_template("report.html")


class Schedule:
    def describe(self) -> str:
        return f"every 5 minutes ({AWKWARD})"


def case(i: int) -> dict[str, Any]:
    failed = i % 2 == 1
    nodes = [
        NodeRunRecord("orders", "sql", "success", 52476, 0.0123, None, {}),
        NodeRunRecord(f"rfm {AWKWARD}", "rfm", "failed" if failed else "success",
                      None if i % 3 == 0 else 7599, None if i % 4 == 0 else 1.5,
                      f"boom {AWKWARD}" if failed else None, {}),
    ]
    run = RunRecord(
        id=f"20261129T100000.00000{i}-abcdef", pipeline=f"bench {AWKWARD}", file=None, warehouse="default",
        status="failed" if failed else "success", dry_run=failed, started_at="2026-11-29T10:00:00.000000+00:00",
        finished_at=None if i % 3 == 0 else "2026-11-29T10:00:01.234000+00:00",
        error=f"run error {AWKWARD}" if i % 5 == 1 else None, trigger="schedule" if i % 2 else "cli", nodes=nodes,
    )
    sections = []
    for k, node in enumerate(nodes):
        section = Section(node)
        if (i + k) % 2:
            section.charts += [(f"grid {AWKWARD}", Markup("<svg>grid</svg>")), ("sizes", Markup("<svg>bars</svg>"))]
            section.notes += [f"note {AWKWARD}", "second note"]
            section.tables += [(f"profiles {AWKWARD}", ["cluster", AWKWARD], [["1", AWKWARD], ["2", ""]]), ("empty", [], [])]
            section.payloads += ['{\n  "event": "<RFM Segment>"\n}', "second"]
            section.metrics += [("rows", 5), ("auc", 0.7345), ("flag", True), ("text", AWKWARD), ("none", None),
                                ("big", 12345678.9), ("small", 0.00001)]
            section.query = f"select * from t where a < 'b' and {AWKWARD}"
        sections.append(section)
    return {"run": run, "dag": Markup("<svg class='dag'><text>dag</text></svg>"), "sections": sections,
            "schedule": Schedule() if i % 3 == 1 else None, "generated": "2026-11-29T10:00:02+00:00",
            "warehouse_note": None if i % 2 else f"the warehouse was not reachable {AWKWARD}"}


@pytest.mark.parametrize("i", range(12))
def test_report_html_is_the_same_as_the_former_template(i: int) -> None:
    context = case(i)
    assert render_report(**context) == reference_template().render(**context)


def test_report_escapes_text_and_keeps_charts() -> None:
    html = render_report(**case(1))
    assert "<svg>grid</svg>" in html
    assert AWKWARD not in html and "a &lt;b&gt; &amp; &#34;c&#34; &#39;d&#39;" in html
