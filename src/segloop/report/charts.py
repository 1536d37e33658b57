"""Charts drawn as inline SVG strings: the pipeline DAG, bars, histograms and the RFM grid.

Reports must open offline, years later, from an e-mail attachment: no JavaScript library,
no CDN, no fonts to fetch. A few hundred lines of SVG cover what we draw, and every chart
carries ``data-chart="<kind>"`` so tests (and people with devtools) can find it. Every
piece of text is escaped here; callers pass plain strings.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape
from itertools import count

from markupsafe import Markup

STATUS_COLORS = {
    "success": "#2e7d32",
    "failed": "#c62828",
    "skipped": "#b28704",
    "running": "#1565c0",
    "interrupted": "#c2185b",
    "dry": "#6a1b9a",  # a dry run (nothing sent): the same purple as `.status-dry` in _style.html
    "pending": "#78909c",
}
SERIES_COLORS = ("#3949ab", "#9e9e9e", "#00897b", "#f4511e", "#8e24aa", "#6d4c41")
SEGMENT_COLORS = {
    "champions": "#1b5e20",
    "loyal_customers": "#43a047",
    "potential_loyalists": "#7cb342",
    "new_customers": "#00acc1",
    "promising": "#4fc3f7",
    "need_attention": "#fdd835",
    "about_to_sleep": "#fb8c00",
    "at_risk": "#e53935",
    "cant_lose": "#8e24aa",
    "hibernating": "#757575",
}
FONT = "font-family=\"system-ui, sans-serif\""
_ids = count(1)


def _svg(width: float, height: float, kind: str, body: str, title: str) -> Markup:
    return Markup(
        f'<svg class="chart" data-chart="{escape(kind)}" '
        f'role="img" viewBox="0 0 {width:.0f} {height:.0f}" width="{width:.0f}" height="{height:.0f}" {FONT} font-size="12">'
        f"<title>{escape(title)}</title>{body}</svg>"
    )


def fmt(value: float | int | None) -> str:
    """Numbers as people read them: 12,345 / 0.734 / 1.2e-05."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 1e15):
        return f"{int(value):,}"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e7):
            return f"{value:.3g}"
        return f"{value:,.3f}" if abs(value) < 1000 else f"{value:,.1f}"
    return str(value)


# -- the pipeline DAG ---------------------------------------------------------------------


def dag(nodes: Sequence[tuple[str, str, str]], edges: Sequence[tuple[str, str]]) -> Markup:
    """Left-to-right layered drawing: (name, type, status) boxes, arrows from input to node."""
    names = [n for n, _, _ in nodes]
    ups: dict[str, list[str]] = {n: [] for n in names}
    for up, down in edges:
        if up in ups and down in ups:
            ups[down].append(up)
    depth: dict[str, int] = {}

    def layer(name: str, seen: tuple[str, ...] = ()) -> int:
        if name not in depth:
            parents = [p for p in ups[name] if p not in seen]
            depth[name] = 1 + max((layer(p, (*seen, name)) for p in parents), default=-1)
        return depth[name]

    for name in names:
        layer(name)
    layers: dict[int, list[str]] = {}
    for name in names:
        layers.setdefault(depth[name], []).append(name)
    box_w, box_h, gap_x, gap_y, pad = 160, 46, 56, 18, 12
    width = pad * 2 + len(layers) * box_w + max(len(layers) - 1, 0) * gap_x
    tallest = max((len(v) for v in layers.values()), default=1)
    height = pad * 2 + tallest * box_h + (tallest - 1) * gap_y
    pos: dict[str, tuple[float, float]] = {}
    for d, members in layers.items():
        column_h = len(members) * box_h + (len(members) - 1) * gap_y
        top = (height - column_h) / 2
        for i, name in enumerate(members):
            pos[name] = (pad + d * (box_w + gap_x), top + i * (box_h + gap_y))
    marker = f"arrow{next(_ids)}"
    parts = [
        f'<defs><marker id="{marker}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        f'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#607d8b"/></marker></defs>'
    ]
    for down, parents in ups.items():
        for up in parents:
            (x1, y1), (x2, y2) = pos[up], pos[down]
            x1, y1, y2 = x1 + box_w, y1 + box_h / 2, y2 + box_h / 2
            mid = (x1 + x2) / 2
            parts.append(
                f'<path class="edge" d="M{x1:.0f},{y1:.0f} C{mid:.0f},{y1:.0f} {mid:.0f},{y2:.0f} {x2 - 2:.0f},{y2:.0f}" '
                f'fill="none" stroke="#607d8b" stroke-width="1.5" marker-end="url(#{marker})"/>'
            )
    for name, node_type, status in nodes:
        x, y = pos[name]
        color = STATUS_COLORS.get(status, STATUS_COLORS["pending"])
        parts.append(
            f'<g class="node" data-node="{escape(name)}" data-status="{escape(status)}">'
            f'<rect x="{x:.0f}" y="{y:.0f}" width="{box_w}" height="{box_h}" rx="8" fill="#fff" '
            f'stroke="{color}" stroke-width="2.5"/>'
            f'<text x="{x + 10:.0f}" y="{y + 19:.0f}" font-weight="600">{escape(_clip(name, 20))}</text>'
            f'<text x="{x + 10:.0f}" y="{y + 36:.0f}" fill="#555">{escape(_clip(node_type, 12))}'
            f'<tspan fill="{color}"> · {escape(status)}</tspan></text></g>'
        )
    return _svg(width, height, "dag", "".join(parts), "pipeline DAG")


def _num(value: float) -> str:
    """A number for a data attribute: 282, not 282.0."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _clip(text: str, size: int) -> str:
    return text if len(text) <= size else text[: size - 1] + "…"


# -- bars and histograms -----------------------------------------------------------------


def bars(
    items: Sequence[tuple[str, float]],
    kind: str,
    title: str,
    colors: Callable[[str], str] | None = None,
) -> Markup:
    """Horizontal bars, one per (label, value), with the value written at the end."""
    label_w, bar_w, row_h, pad = 170, 360, 22, 8
    top = max((v for _, v in items), default=0) or 1
    parts = []
    for i, (label, value) in enumerate(items):
        y = pad + i * row_h
        w = max(bar_w * (value / top), 0 if value <= 0 else 1)
        color = colors(label) if colors else SERIES_COLORS[0]
        parts.append(
            f'<g class="bar" data-label="{escape(label)}" data-value="{_num(value)}">'
            f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">{escape(_clip(label, 26))}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 6}" fill="{color}" rx="2"/>'
            f'<text x="{label_w + w + 6:.1f}" y="{y + 15}" fill="#333">{escape(fmt(value))}</text></g>'
        )
    height = pad * 2 + max(len(items), 1) * row_h
    return _svg(label_w + bar_w + 90, height, kind, "".join(parts), title)


def is_numeric_type(arrow_type: object) -> bool:
    """Whether a column of this Arrow type holds numbers (right-aligned in tables)."""
    import pyarrow as pa

    return bool(pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type))


def compact(value: float) -> str:
    """Short labels for crowded charts: 171.6k, 2.3M, 0.27."""
    size = abs(value)
    if size >= 1e6:
        return f"{value / 1e6:.1f}M"
    if size >= 1e4:
        return f"{value / 1e3:.0f}k"
    if size >= 1e3:
        return f"{value / 1e3:.1f}k"
    return fmt(round(value, 3) if isinstance(value, float) else value)


def grouped_bars(groups: Sequence[tuple[str, dict[str, float]]], series: Sequence[str], kind: str, title: str) -> Markup:
    """Vertical bars per group (e.g. NDCG@10: model vs baseline) with a legend."""
    bar_w, gap, plot_h, pad, legend_h, label_room = 34, 4, 170, 30, 24, 16
    group_w = 18 + (bar_w + gap) * len(series)
    top = max((v for _, vals in groups for v in vals.values()), default=0) or 1
    parts = []
    x = pad
    for j, name in enumerate(series):
        parts.append(
            f'<rect x="{x}" y="4" width="12" height="12" fill="{SERIES_COLORS[j % len(SERIES_COLORS)]}"/>'
            f'<text x="{x + 16}" y="15">{escape(name)}</text>'
        )
        x += 30 + 7 * len(name)
    base_y = legend_h + label_room + plot_h
    for i, (label, values) in enumerate(groups):
        x0 = pad + i * group_w
        for j, name in enumerate(series):
            if name not in values:
                continue
            value = values[name]
            h = plot_h * max(value, 0) / top
            x = x0 + j * (bar_w + gap)
            parts.append(
                f'<g class="bar" data-label="{escape(label)}" data-series="{escape(name)}" data-value="{_num(value)}">'
                f'<rect x="{x}" y="{base_y - h:.1f}" width="{bar_w}" height="{h:.1f}" '
                f'fill="{SERIES_COLORS[j % len(SERIES_COLORS)]}"><title>{escape(name)}: {escape(fmt(value))}</title></rect>'
                f'<text x="{x + bar_w / 2}" y="{base_y - h - 3:.1f}" text-anchor="middle" font-size="10">{escape(compact(value))}</text></g>'
            )
        width = len(series) * (bar_w + gap) - gap
        parts.append(f'<text x="{x0 + width / 2}" y="{base_y + 16}" text-anchor="middle">{escape(_clip(label, 18))}</text>')
    parts.append(f'<line x1="{pad - 4}" y1="{base_y}" x2="{pad + len(groups) * group_w}" y2="{base_y}" stroke="#999"/>')
    return _svg(pad * 2 + max(len(groups), 1) * group_w, base_y + 28, kind, "".join(parts), title)


def histogram(bins: Sequence[tuple[float, float, int]], kind: str, title: str) -> Markup:
    """Bars over (low, high, count) bins, with the axis range and the largest count."""
    plot_w, plot_h, left, pad = 440, 150, 50, 22
    top = max((c for _, _, c in bins), default=0) or 1
    n = max(len(bins), 1)
    width = plot_w / n
    parts = [f'<text x="{left}" y="14" font-weight="600">{escape(title)}</text>']
    for i, (low, high, c) in enumerate(bins):
        h = plot_h * c / top
        parts.append(
            f'<rect class="bin" data-low="{low}" data-high="{high}" data-count="{c}" x="{left + i * width:.1f}" '
            f'y="{pad + plot_h - h:.1f}" width="{max(width - 1, 1):.1f}" height="{h:.1f}" fill="{SERIES_COLORS[2]}">'
            f"<title>{escape(fmt(low))} to {escape(fmt(high))}: {c:,}</title></rect>"
        )
    y_axis = pad + plot_h
    low = bins[0][0] if bins else 0
    high = bins[-1][1] if bins else 0
    parts.append(
        f'<line x1="{left}" y1="{y_axis}" x2="{left + plot_w}" y2="{y_axis}" stroke="#999"/>'
        f'<text x="{left}" y="{y_axis + 15}">{escape(fmt(low))}</text>'
        f'<text x="{left + plot_w}" y="{y_axis + 15}" text-anchor="end">{escape(fmt(high))}</text>'
        f'<text x="{left - 4}" y="{pad + 10}" text-anchor="end">{top:,}</text>'
        f'<text x="{left - 4}" y="{y_axis}" text-anchor="end">0</text>'
    )
    return _svg(left + plot_w + 10, y_axis + 22, kind, "".join(parts), title)


# -- the RFM grid -------------------------------------------------------------------------


def rfm_grid(counts: dict[tuple[int, int], int], segment_of: Callable[[int, int], str]) -> Markup:
    """5x5 recency-by-frequency grid: count per cell, coloured by its segment, darker = more."""
    cell, left, top = 74, 64, 28
    most = max(counts.values(), default=0) or 1
    parts = [
        f'<text x="{left + cell * 2.5}" y="16" text-anchor="middle" font-weight="600">frequency score (F) →</text>',
        f'<text x="16" y="{top + cell * 2.5}" text-anchor="middle" font-weight="600" '
        f'transform="rotate(-90 16 {top + cell * 2.5})">recency score (R) →</text>',
    ]
    for row, r in enumerate(range(5, 0, -1)):
        parts.append(f'<text x="{left - 8}" y="{top + row * cell + cell / 2 + 4}" text-anchor="end">R{r}</text>')
        for col, f in enumerate(range(1, 6)):
            n = counts.get((r, f), 0)
            segment = segment_of(r, f)
            opacity = 0.25 + 0.75 * (n / most)
            x, y = left + col * cell, top + row * cell
            parts.append(
                f'<g class="cell" data-r="{r}" data-f="{f}" data-count="{n}" data-segment="{escape(segment)}">'
                f'<rect x="{x}" y="{y}" width="{cell - 2}" height="{cell - 2}" fill="{SEGMENT_COLORS.get(segment, "#90a4ae")}" '
                f'fill-opacity="{opacity:.2f}"><title>R{r} F{f}: {n:,} customers ({escape(segment)})</title></rect>'
                f'<text x="{x + cell / 2 - 1}" y="{y + cell / 2 - 6}" text-anchor="middle" font-weight="600" stroke="#fff" stroke-width="3" paint-order="stroke">{n:,}</text>'
                + _label_lines(segment.replace("_", " "), x + cell / 2 - 1, y + cell / 2 + 9, 12)
                + "</g>"
            )
    for col, f in enumerate(range(1, 6)):
        parts.append(f'<text x="{left + col * cell + cell / 2}" y="{top + 5 * cell + 14}" text-anchor="middle">F{f}</text>')
    return _svg(left + 5 * cell + 10, top + 5 * cell + 24, "rfm-grid", "".join(parts), "RFM grid (R by F)")


def _wrap(text: str, width: int, lines: int = 2) -> list[str]:
    """Words on up to ``lines`` lines of ``width`` characters; only an over-long word is clipped."""
    out: list[str] = []
    for word in text.split():
        if out and len(out[-1]) + 1 + len(word) <= width:
            out[-1] += " " + word
        else:
            out.append(word)
    if len(out) > lines:
        out = [*out[: lines - 1], " ".join(out[lines - 1:])]
    return [_clip(line, width) for line in out]


def _label_lines(text: str, x: float, y: float, width: int) -> str:
    """A small label under a cell's count, wrapped on words (``potential`` / ``loyalists``)."""
    spans = "".join(
        f'<tspan x="{x:.0f}" dy="{0 if i == 0 else 11}">{escape(line)}</tspan>'
        for i, line in enumerate(_wrap(text, width))
    )
    return (f'<text class="label" x="{x:.0f}" y="{y:.0f}" text-anchor="middle" font-size="9.5" stroke="#fff" '
            f'stroke-width="2.5" paint-order="stroke">{spans}</text>')


def segment_color(name: str) -> str:
    return SEGMENT_COLORS.get(name, SERIES_COLORS[0])


# -- trends over runs ---------------------------------------------------------------------


class Series:
    """One line of a trend chart: a value per run (None where the run has none)."""

    def __init__(self, name: str, values: Sequence[float | None], color: str | None = None, dashed: bool = False):
        self.name, self.values, self.color, self.dashed = name, list(values), color, dashed


def trend(
    series: Sequence[Series],
    runs: Sequence[tuple[str, str]],
    kind: str,
    title: str,
    from_zero: bool = False,
    hollow: Sequence[bool] = (),
) -> Markup:
    """Lines over the runs (oldest left): ``runs`` are (run id, short label) pairs.

    A point per run with a value (hollow for ``hollow[i]``, e.g. dry runs), a legend, the
    axis range and the first and last run's labels. Each point carries ``data-series``,
    ``data-run`` and ``data-value``; its tooltip says the run and the value.
    """
    left, right, top, plot_h, legend_h = 54, 14, 8, 120, 20
    plot_w = 380
    n = len(runs)
    values = [v for s in series for v in s.values if v is not None]
    low = min(values, default=0.0)
    high = max(values, default=1.0)
    if from_zero:
        low = min(low, 0.0)
    if high == low:
        pad = abs(high) * 0.1 or 1.0
        high, low = high + pad, (low - pad if not from_zero or low - pad >= 0 else 0.0)
    elif not from_zero:  # room above and below, so no point sits on the frame
        pad = (high - low) * 0.12
        high, low = high + pad, low - pad
    y0 = top + legend_h

    def x_at(i: int) -> float:
        return left + (plot_w * (i + 0.5) / n if n else plot_w / 2)

    def y_at(value: float) -> float:
        return y0 + plot_h - plot_h * (value - low) / (high - low)

    parts: list[str] = []
    lx: float = left
    for j, s in enumerate(series):
        color = s.color or SERIES_COLORS[j % len(SERIES_COLORS)]
        dash = ' stroke-dasharray="4 3"' if s.dashed else ""
        parts.append(f'<line x1="{lx}" y1="{top + 6}" x2="{lx + 16}" y2="{top + 6}" stroke="{color}" stroke-width="2"{dash}/>'
                     f'<text x="{lx + 20}" y="{top + 10}">{escape(s.name)}</text>')
        lx += 40 + 7.5 * len(s.name)
    base = y0 + plot_h
    parts.append(
        f'<line x1="{left}" y1="{base}" x2="{left + plot_w}" y2="{base}" stroke="#bbb"/>'
        f'<line x1="{left}" y1="{y0}" x2="{left}" y2="{base}" stroke="#bbb"/>'
        f'<text x="{left - 4}" y="{y0 + 9}" text-anchor="end" class="y-max">{escape(compact(high))}</text>'
        f'<text x="{left - 4}" y="{base}" text-anchor="end" class="y-min">{escape(compact(low))}</text>'
    )
    if n:
        parts.append(f'<text x="{left}" y="{base + 15}" fill="#555">{escape(runs[0][1])}</text>')
        if n > 1:
            parts.append(f'<text x="{left + plot_w}" y="{base + 15}" text-anchor="end" fill="#555">{escape(runs[-1][1])}</text>')
    for j, s in enumerate(series):
        color = s.color or SERIES_COLORS[j % len(SERIES_COLORS)]
        dash = ' stroke-dasharray="4 3"' if s.dashed else ""
        path: list[str] = []
        for i, value in enumerate(s.values[:n]):
            if value is None:
                if len(path) > 1:
                    parts.append(f'<polyline points="{" ".join(path)}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
                path = []
                continue
            path.append(f"{x_at(i):.1f},{y_at(value):.1f}")
        if len(path) > 1:
            parts.append(f'<polyline points="{" ".join(path)}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
        for i, value in enumerate(s.values[:n]):
            if value is None:
                continue
            empty = i < len(hollow) and hollow[i]
            fill = "#fff" if empty else color
            parts.append(
                f'<circle class="point" data-series="{escape(s.name)}" data-run="{escape(runs[i][0])}" '
                f'data-value="{_num(value)}" cx="{x_at(i):.1f}" cy="{y_at(value):.1f}" r="3.2" fill="{fill}" '
                f'stroke="{color}" stroke-width="1.5"><title>{escape(runs[i][1])}{" (dry run)" if empty else ""}: '
                f'{escape(s.name)} {escape(fmt(value))}</title></circle>'
            )
    if not n:
        parts.append(f'<text x="{left + plot_w / 2}" y="{y0 + plot_h / 2}" text-anchor="middle" fill="#777">no runs yet</text>')
    return _svg(left + plot_w + right, base + 22, kind, "".join(parts), title)


def run_bars(runs: Sequence[tuple[str, str, float, str]], kind: str, title: str) -> Markup:
    """Vertical bars, one per run (oldest left): (run id, label, seconds, status colour key)."""
    left, plot_w, plot_h, top = 54, 380, 120, 10
    n = len(runs)
    high = max((s for _, _, s, _ in runs), default=0) or 1
    step = plot_w / max(n, 1)
    width = max(min(step - 2, 28), 1)
    parts: list[str] = []
    base = top + plot_h
    for i, (run_id, label, seconds, status) in enumerate(runs):
        h = max(plot_h * seconds / high, 1)
        color = STATUS_COLORS.get(status, STATUS_COLORS["pending"])
        x = left + i * step + (step - width) / 2
        parts.append(
            f'<rect class="run-bar" data-run="{escape(run_id)}" data-seconds="{_num(round(seconds, 3))}" '
            f'data-status="{escape(status)}" x="{x:.1f}" y="{base - h:.1f}" width="{width:.1f}" height="{h:.1f}" '
            f'fill="{color}" rx="2"><title>{escape(label)}: {seconds:,.1f} s ({escape(status)})</title></rect>'
        )
    parts.append(
        f'<line x1="{left}" y1="{base}" x2="{left + plot_w}" y2="{base}" stroke="#bbb"/>'
        f'<text x="{left - 4}" y="{top + 9}" text-anchor="end" class="y-max">{escape(_seconds(high))}</text>'
        f'<text x="{left - 4}" y="{base}" text-anchor="end">0</text>'
    )
    if n:
        parts.append(f'<text x="{left}" y="{base + 15}" fill="#555">{escape(runs[0][1])}</text>')
        if n > 1:
            parts.append(f'<text x="{left + plot_w}" y="{base + 15}" text-anchor="end" fill="#555">{escape(runs[-1][1])}</text>')
    return _svg(left + plot_w + 14, base + 22, kind, "".join(parts), title)


def _seconds(value: float) -> str:
    return f"{value:,.1f} s" if value < 120 else f"{value / 60:,.1f} min"


def status_strip(runs: Sequence[tuple[str, str, str]], kind: str = "recent-runs") -> Markup:
    """A row of small squares, one per run (oldest left), coloured by status: (run id, label, status)."""
    size, gap = 12, 3
    parts = []
    for i, (run_id, label, status) in enumerate(runs):
        color = STATUS_COLORS.get(status, STATUS_COLORS["pending"])
        parts.append(
            f'<rect class="run" data-run="{escape(run_id)}" data-status="{escape(status)}" x="{i * (size + gap)}" y="1" '
            f'width="{size}" height="{size}" rx="2" fill="{color}"><title>{escape(label)}: {escape(status)}</title></rect>'
        )
    width = max(len(runs) * (size + gap) - gap, size)
    return _svg(width, size + 2, kind, "".join(parts), "recent runs, oldest first")
