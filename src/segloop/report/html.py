"""The run report's HTML, written out in Python (the layout of the former `report.html` template).

Every `segloop run` writes a report, and in a one-shot run importing Jinja2 and compiling
the template cost ~35 ms, about as much as computing RFM over a million events. This
module builds the same HTML with string joins: values are escaped with MarkupSafe, as
Jinja2's autoescape does, and charts (``Markup``) go in as they are. The UI pages still use
the Jinja2 templates; the report shares their stylesheet (`report/templates/_style.html`).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from markupsafe import escape

from segloop.report.charts import fmt
from segloop.report.display import duration, run_css, run_label, when

if TYPE_CHECKING:  # pragma: no cover
    from markupsafe import Markup

    from segloop.report import Section
    from segloop.store import RunRecord

STYLE_FILE = Path(__file__).parent / "templates" / "_style.html"


@cache
def _style() -> str:
    # What `{% include "_style.html" %}` gives: the file without its last newline.
    text = STYLE_FILE.read_text(encoding="utf-8")
    return text[:-1] if text.endswith("\n") else text


def e(value: Any) -> str:
    """``{{ value }}`` of an autoescaping template."""
    return str(escape(value))


def render_report(
    run: RunRecord,
    dag: Markup,
    sections: list[Section],
    schedule: Any,
    generated: str,
    warehouse_note: str | None,
) -> str:
    """The report page of ``run``."""
    out: list[str] = []
    w = out.append
    w('<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
      '<meta name="viewport" content="width=device-width, initial-scale=1">\n')
    w(f"<title>segloop run {e(run.id)} · {e(run.pipeline)}</title>\n")
    w(_style())
    w("</head>\n<body>\n")
    w(f'<main id="report" data-run-id="{e(run.id)}" data-status="{e(run.status)}">\n')
    w(f"<h1>Run report: pipeline <code>{e(run.pipeline)}</code></h1>\n")
    w('<p class="muted">\n')
    w(f"  run <code>{e(run.id)}</code> ·\n")
    w(f'  <span class="status status-{e(run_css(run))}" id="run-status">{e(run_label(run))}</span> ·\n')
    dry = " (nothing sent)" if run.dry_run else ""
    w(f"  trigger {e(run.trigger)}{dry} ·\n")
    seconds = f" · took {e(duration(run.seconds))}" if run.seconds is not None else ""
    w(f'  started <time datetime="{e(run.started_at)}">{e(when(run.started_at, seconds=True))}</time>{seconds}')
    if schedule:
        w(f" · schedule {e(schedule.describe())}")
    w("</p>\n")
    if run.error:
        w(f'<div class="card error">{e(run.error)}</div>')
    if warehouse_note:
        w(f'<p class="muted">Note: {e(warehouse_note)}.</p>')
    w("\n<h2>Pipeline</h2>\n")
    w(f'<div class="card">{e(dag)}</div>\n')
    w('\n<h2>Nodes</h2>\n<div class="card">\n<table id="nodes">\n'
      '<thead><tr><th>node</th><th>type</th><th>status</th><th class="num">rows</th>'
      '<th class="num">seconds</th><th>error</th></tr></thead>\n<tbody>\n')
    for node in run.nodes:
        name = e(node.node)
        w(f'<tr data-node="{name}">\n')
        w(f'  <td><a href="#node-{name}">{name}</a></td><td>{e(node.type)}</td>\n')
        w(f'  <td class="status status-{e(node.status)}">{e(node.status)}</td>\n')
        w(f'  <td class="num">{e(fmt(node.rows))}</td>\n')
        node_seconds = f"{node.seconds:.2f}" if node.seconds is not None else ""
        w(f'  <td class="num">{node_seconds}</td>\n')
        w(f'  <td class="error">{e(node.error or "")}</td>\n')
        w("</tr>\n")
    w("</tbody>\n</table>\n</div>\n\n")
    for section in sections:
        _section(w, section)
    w(f'<p class="muted">Generated {e(when(generated, seconds=True))} by segloop. Tables were read from the warehouse '
      "when the report was written.</p>\n</main>\n</body>\n</html>")
    return "".join(out)


def _section(w: Any, section: Section) -> None:
    node = section.node
    w(f'<section class="node-section" id="node-{e(node.node)}" data-type="{e(node.type)}">\n')
    w(f'<h2>{e(node.node)} <span class="pill">{e(node.type)}</span>\n')
    w(f'  <span class="status status-{e(node.status)}">{e(node.status)}</span></h2>\n')
    if section.empty and not node.error:
        w('<p class="muted">Nothing more to show for this node.</p>')
    if node.error:
        w(f'<div class="card error">{e(node.error)}</div>')
    if section.charts:
        w('<div class="card charts">\n')
        for title, chart in section.charts:
            w(f"<figure><figcaption>{e(title)}</figcaption>{e(chart)}</figure>")
        w("</div>\n")
    for note in section.notes:
        w(f'<p class="muted">{e(note)}</p>')
    for title, columns, rows in section.tables:
        w(f'<div class="card"><h3>{e(title)}</h3>\n')
        w('<table class="data"><thead><tr>' + "".join(f"<th>{e(c)}</th>" for c in columns) + "</tr></thead>\n")
        w("<tbody>" + "".join("<tr>" + "".join(f"<td>{e(v)}</td>" for v in row) + "</tr>" for row in rows)
          + "</tbody></table>\n")
        w("</div>\n")
    if section.payloads:
        w('<div class="card"><h3>sample payloads</h3>\n')
        w("".join(f'<pre class="payload">{e(p)}</pre>' for p in section.payloads))
        w("</div>\n")
    if section.metrics:
        w('<div class="card"><h3>metrics</h3>\n<table class="metrics"><tbody>\n')
        w("".join(f'<tr><th>{e(key)}</th><td class="num">{e(fmt(value))}</td></tr>' for key, value in section.metrics))
        w("</tbody></table></div>\n")
    if section.query:
        w(f"<details><summary>query</summary><pre>{e(section.query)}</pre></details>")
    w("</section>\n")
