"""The run report: one self-contained HTML file per run, `.segloop/runs/<run_id>/report.html`.

People would rather look at an RFM grid than read a table. The report shows the pipeline
DAG, each node's rows / seconds / status / error, and a section per node type found in the
run: the RFM grid and segment sizes, cluster profiles, CLV and propensity distributions
with their quality metrics, recommendation metrics next to the baseline, and for each
Segment node what was sent, rejected, failed and left unchanged, with sample payloads.

Numbers come from the run history (``NodeRunRecord.metrics``) and from the nodes' output
tables in the warehouse, aggregated there (a histogram is one GROUP BY, never the rows).
Node types are written by several people: every section is optional and tolerant of
missing or unexpected metrics, and a section that cannot be built says why instead of
breaking the report. Charts are inline SVG and CSS is inline, so the file opens offline.
Secrets: every value that a ``${ENV}`` reference of the pipeline or workspace resolves to
is replaced by ``[secure]`` in the final HTML, and keys that name credentials are masked.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segloop.masking import REDACTED, SENSITIVE_KEY, Redactor  # noqa: F401 - re-exported

if TYPE_CHECKING:  # pragma: no cover
    from markupsafe import Markup

    from segloop.config import Workspace
    from segloop.pipeline import Pipeline
    from segloop.store import NodeRunRecord, RunRecord, RunStore
    from segloop.warehouses import Warehouse

log = logging.getLogger("segloop")

HISTOGRAM_BINS = 20
TABLE_ROWS = 50
SIZE_BARS = 30
"""Bars in a sizes chart: the largest groups, chosen in the warehouse."""
SAMPLE_PAYLOADS = 5
# In the order they are drawn (up to 3): the clv node's predicted_clv, expected_spend and
# p_alive (docs/ui.md); expected_purchases only when one of those is missing.
CLV_COLUMNS = ("clv", "ltv", "expected_spend", "p_alive", "prob_alive", "probability_alive", "expected_purchases")
PROPENSITY_COLUMNS = ("probability", "likelihood", "propensity", "churn", "score")
# precision_at_10, ndcg@10, baseline_recall_10, map, coverage_at_10 (share of the catalogue
# recommended; only "at k", so a CLV interval's `coverage` is not one): the measure ends the name.
RECOMMEND_MEASURE = re.compile(
    r"(?:^|_)(precision|recall|ndcg|map|hit_rate|mrr|coverage(?=(?:_at_|@)\d+$))(?:_at_|@|_)?(\d+)?$", re.I)
BASELINE_WORDS = ("baseline", "popular", "popularity")


# -- paths --------------------------------------------------------------------------------


def report_path(workspace: Workspace, run_id: str) -> Path:
    return workspace.state_dir / "runs" / run_id / "report.html"


# -- collecting what to show ----------------------------------------------------------------


def _flatten(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and all(isinstance(v, int | float | str | bool | None | dict) for v in value.values()):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _scalar_metrics(metrics: dict[str, Any], skip: Iterable[str] = ()) -> list[tuple[str, Any]]:
    skipped = set(skip)
    rows = []
    for key, value in _flatten(metrics).items():
        if key.split(".")[0] in skipped:
            continue
        if isinstance(value, int | float | str | bool) or value is None:
            rows.append((key, value))
    return rows


def _numeric(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


class Section:
    """What the report shows for one node; templates render whatever is filled in."""

    def __init__(self, node: NodeRunRecord):
        self.node = node
        self.charts: list[tuple[str, Markup]] = []
        self.tables: list[tuple[str, list[str], list[list[str]]]] = []
        self.payloads: list[str] = []
        self.notes: list[str] = []
        self.metrics: list[tuple[str, Any]] = []
        self.query: str | None = None

    @property
    def empty(self) -> bool:
        return not (self.charts or self.tables or self.payloads or self.notes or self.metrics or self.query)


class ReportBuilder:
    """Gathers one run's sections from the run history and the warehouse."""

    def __init__(self, run: RunRecord, pipeline: Pipeline | None, warehouse: Warehouse | None, redactor: Redactor,
                 run_connection: bool = False):
        self.run = run
        self.pipeline = pipeline
        self.warehouse = warehouse
        self.redact = redactor
        self.run_connection = run_connection  # ``warehouse`` is the one the run wrote with

    # -- warehouse helpers -----------------------------------------------------------------

    def _table(self, node: str, suffix: str | None = None) -> Any:
        if self.warehouse is None:
            return None
        name = f"{self.run.pipeline}__{node}" + (f"__{suffix}" if suffix else "")
        if self.run_connection:  # right after the run, on its connection
            return self.warehouse.output_of_run(name)
        return self.warehouse.table_if_exists(name)

    def _wh(self) -> Warehouse:
        if self.warehouse is None:
            raise RuntimeError("no warehouse")  # unreachable: tables only come from a warehouse
        return self.warehouse

    def _histogram(self, table: Any, column: str) -> list[tuple[float, float, int]]:
        import ibis

        value = table[column].cast("float64")
        valid = table.filter(value.notnull() & ~value.isnan() & ~value.isinf())
        col = valid[column].cast("float64")
        stats = self._wh().to_arrow(valid.aggregate(lo=col.min(), hi=col.max())).to_pylist()[0]
        lo, hi = stats["lo"], stats["hi"]
        if lo is None or hi is None:
            return []
        width = (hi - lo) / HISTOGRAM_BINS or 1.0
        index = ((col - lo) / width).floor().cast("int64")
        binned = valid.mutate(_bin=ibis.ifelse(index >= HISTOGRAM_BINS, HISTOGRAM_BINS - 1, index))
        counts = dict(
            (row["_bin"], row["n"])
            for row in self._wh().to_arrow(binned.group_by("_bin").aggregate(n=binned.count())).to_pylist()
        )
        return [(lo + i * width, lo + (i + 1) * width, int(counts.get(i, 0))) for i in range(HISTOGRAM_BINS)]

    def _rows(self, table: Any, limit: int) -> tuple[list[str], list[list[str]]]:
        from segloop.report.charts import fmt

        data = self._wh().to_arrow(table, limit=limit)
        columns = list(data.column_names)
        rows = []
        for record in data.to_pylist():
            rows.append([
                fmt(v) if isinstance(v, int | float) and not isinstance(v, bool)
                else self.redact.text(json.dumps(v, default=str) if isinstance(v, dict | list) else str(v if v is not None else ""))
                for v in record.values()
            ])
        return columns, rows

    # -- sections --------------------------------------------------------------------------

    def sections(self) -> list[Section]:
        out = []
        for node in self.run.nodes:
            section = Section(node)
            try:
                self._fill(section)
            except Exception as exc:  # one broken section must not cost the whole report
                log.debug("report section for node %s failed", node.node, exc_info=True)
                section.notes.append(f"this section could not be built: {type(exc).__name__}: {exc}")
            out.append(section)
        return out

    def _fill(self, section: Section) -> None:
        node = section.node
        metrics = self.redact.value(node.metrics or {})
        from segloop.operators import NODE_TYPES

        op = NODE_TYPES.get(node.type)
        kind = op.REPORT_SECTION if op is not None else None  # the node type says which section
        if isinstance(metrics.get("query"), str):
            section.query = metrics["query"]
        skip = ["query", "sample_payloads", "rejected_by_reason", "failed_by_reason", "warnings"]
        ok = node.status == "success"
        if kind == "segment" or "sample_payloads" in metrics or "rejected_by_reason" in metrics:
            self._segment(section, metrics)
        if kind == "lift":
            self._lift(section, metrics)
        if kind == "recommend" or any(RECOMMEND_MEASURE.search(k.split(".")[-1]) for k in _flatten(metrics)):
            self._recommend(section, metrics)
        table = self._table(node.node) if ok else None
        if table is not None:
            columns = set(table.columns)
            if {"r_score", "f_score"} <= columns:
                self._rfm(section, table)
            elif "segment" in columns and kind != "segment":
                self._sizes(section, table, "segment", "segment sizes")
            if kind == "clv":
                self._distributions(section, table, CLV_COLUMNS, "clv")
                self._bands(section, node.node, "holdout", ("predicted_spend", "actual_spend"), "clv-holdout",
                            "holdout: predicted vs actual spend by predicted-CLV decile (1 = top)")
                self._versus(section, metrics, "holdout_spearman", "holdout_baseline_spearman",
                             "holdout Spearman correlation with actual spend")
                coverage = _numeric(metrics.get("holdout_interval_coverage"))
                if coverage is not None:
                    section.notes.append(f"holdout: {coverage:.0%} of customers bought within the 10-90% range "
                                         "of their forecast (80% when the intervals are right)")
            elif kind == "propensity":
                self._distributions(section, table, PROPENSITY_COLUMNS, "propensity")
                self._bands(section, node.node, "validation", ("mean_score", "mean_outcome"), "propensity-deciles",
                            "validation: predicted vs actual rate by score decile (1 = top)")
                self._versus(section, metrics, "auc", "baseline_auc", "validation AUC")
                self._bands(section, node.node, "reliability", ("mean_probability", "actual_rate"),
                            "propensity-reliability", "calibration: mean probability vs actual rate by "
                            "probability bin (band 1 = 0-0.1, ..., band 10 = 0.9-1)")
        profiles = self._table(node.node, "profiles") if ok else None
        if profiles is not None:
            self._profiles(section, profiles)
        section.metrics = _scalar_metrics(metrics, skip)
        if isinstance(metrics.get("warnings"), list):
            section.notes.extend(str(w) for w in metrics["warnings"])

    def _rfm(self, section: Section, table: Any) -> None:
        from segloop.operators.rfm import segment_of
        from segloop.report import charts

        # One GROUP BY gives both charts: the grid's cells, and the segment sizes (their sums).
        keys = ["r_score", "f_score"] + (["segment"] if "segment" in table.columns else [])
        rows = self._wh().rows(table.group_by(keys).aggregate(n=table.count()))
        counts: dict[tuple[int, int], int] = {}
        for r in rows:
            if r["r_score"] is not None and r["f_score"] is not None:
                cell = (int(r["r_score"]), int(r["f_score"]))
                counts[cell] = counts.get(cell, 0) + int(r["n"])
        section.charts.append(("RFM grid: customers by recency (R) and frequency (F) score", charts.rfm_grid(counts, segment_of)))
        if "segment" in table.columns:
            sizes: dict[str, int] = {}
            for r in rows:
                sizes[str(r["segment"])] = sizes.get(str(r["segment"]), 0) + int(r["n"])
            self._size_chart(section, sizes, "segment sizes")

    def _sizes(self, section: Section, table: Any, column: str, title: str) -> None:
        # The largest groups only, chosen in the warehouse: a column with a million distinct
        # values must not come back whole to draw 30 bars.
        counts = table.group_by(column).aggregate(n=table.count())
        top = counts.order_by([counts.n.desc(), counts[column]]).limit(SIZE_BARS)
        rows = self._wh().rows(top)
        self._size_chart(section, {str(r[column]): int(r["n"]) for r in rows}, title)
        if len(rows) == SIZE_BARS:
            groups = int(self._wh().rows(counts.count().name("groups").as_table())[0]["groups"])
            if groups > SIZE_BARS:
                section.notes.append(f"{title}: the {SIZE_BARS} largest of {groups:,} groups are drawn")

    @staticmethod
    def _size_chart(section: Section, sizes: dict[str, int], title: str) -> None:
        from segloop.report import charts

        items = sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))[:SIZE_BARS]  # ties by name: the same file each run
        section.charts.append((title, charts.bars(items, "segment-sizes", title, charts.segment_color)))

    def _distributions(self, section: Section, table: Any, patterns: tuple[str, ...], kind: str) -> None:
        from segloop.report import charts

        numeric = [name for name, dtype in table.schema().items() if dtype.is_numeric()]
        chosen: list[str] = []
        for pattern in patterns:
            for name in numeric:
                lowered = name.lower()
                if pattern in lowered and name not in chosen and not any(w in lowered for w in ("percentile", "cohort", "rank")):
                    chosen.append(name)
        if not chosen:
            section.notes.append(f"no numeric column named like {', '.join(patterns)} to draw a distribution of")
        for column in chosen[:3]:
            bins = self._histogram(table, column)
            if bins:
                section.charts.append((f"distribution of `{column}`", charts.histogram(bins, f"{kind}-distribution", column)))

    def _bands(self, section: Section, node: str, suffix: str, columns: tuple[str, str], kind: str, title: str) -> None:
        """Decile table (`band` + predicted and actual columns) as grouped bars, when the node wrote one."""
        from segloop.report import charts

        table = self._table(node, suffix)
        if table is None or not {"band", *columns} <= set(table.columns):
            return
        rows = self._wh().to_arrow(table.order_by("band"), limit=50).to_pylist()
        groups = [(f"band {r['band']}", {c: float(r[c]) for c in columns if _numeric(r[c]) is not None}) for r in rows]
        section.charts.append((title, charts.grouped_bars(groups, list(columns), kind, title)))

    @staticmethod
    def _versus(section: Section, metrics: dict[str, Any], model: str, baseline: str, what: str) -> None:
        ours, base = _numeric(metrics.get(model)), _numeric(metrics.get(baseline))
        if ours is not None and base is not None:
            verdict = "better than" if ours > base else "NOT better than"
            section.notes.append(f"{what}: model {ours:.3f}, {verdict} the baseline {base:.3f}")

    def _profiles(self, section: Section, profiles: Any) -> None:
        from segloop.report import charts

        columns, rows = self._rows(profiles, TABLE_ROWS)
        section.tables.append(("cluster profiles", columns, rows))
        size_col = next((c for c in columns if c.lower() in ("size", "customers", "count", "n", "rows")), None)
        name_col = next((c for c in columns if c.lower() in ("name", "cluster_name", "label")), None) or next(
            (c for c in columns if "cluster" in c.lower()), None)
        if size_col and name_col:
            i, j = columns.index(name_col), columns.index(size_col)
            items = [(row[i], float(row[j].replace(",", "") or 0)) for row in rows]
            section.charts.append(("cluster sizes", charts.bars(items, "cluster-sizes", "cluster sizes")))

    def _recommend(self, section: Section, metrics: dict[str, Any]) -> None:
        from segloop.report import charts

        groups: dict[str, dict[str, float]] = {}
        for key, value in _flatten(metrics).items():
            number = _numeric(value)
            leaf = key.split(".")[-1].lower()
            if number is None:
                continue
            measure = RECOMMEND_MEASURE.search(leaf)
            if not measure:
                continue
            label = measure.group(1).lower() + (f"@{measure.group(2)}" if measure.group(2) else "")
            series = "baseline" if any(w in key.lower() for w in BASELINE_WORDS) else "model"
            groups.setdefault(label, {})[series] = number
        if not groups:
            return
        items = sorted(groups.items())
        section.charts.append(("recommendation quality vs popularity baseline",
                               charts.grouped_bars(items, ["model", "baseline"], "recommend-metrics", "model vs baseline")))
        for label, values in items:
            if values.get("baseline") and "model" in values:
                section.notes.append(f"{label}: model / baseline = {values['model'] / values['baseline']:.2f}x")

    def _lift(self, section: Section, metrics: dict[str, Any]) -> None:
        """Treatment vs holdout: the two rates, the difference and its interval, in a sentence and bars."""
        from segloop.report import charts

        rates = [(group, value) for group in ("treatment", "holdout")
                 if (value := _numeric(metrics.get(f"{group}_rate"))) is not None]
        if len(rates) == 2:
            section.charts.append(("conversion rate within the window, by group", charts.bars(
                rates, "lift-rates", "conversion rate", lambda k: "#2e7d32" if k == "treatment" else "#9e9e9e")))
        lift, low, high = (_numeric(metrics.get(k)) for k in ("lift", "lift_ci_low", "lift_ci_high"))
        if lift is None or low is None or high is None:
            section.notes.append("lift: not measured yet (no customer of one group has finished its window)")
            return
        verdict = ("the sends raised it" if low > 0 else "the sends lowered it" if high < 0
                   else "no difference shown at 95% (the interval includes 0)")
        section.notes.append(
            f"lift: {lift * 100:+.2f} points (treatment {rates[0][1]:.2%} vs holdout {rates[1][1]:.2%}), "
            f"95% interval {low * 100:+.2f} to {high * 100:+.2f} points ({metrics.get('ci_method')}): {verdict}")

    SEGMENT_COUNTS: tuple[str, ...] = (
        "rows", "new", "changed", "retried", "unchanged", "removed", "held_out", "unknown_skipped",
        "to_send", "sent", "rejected", "failed",
    )
    SEGMENT_COLORS: dict[str, str] = {"sent": "#2e7d32", "rejected": "#e53935", "failed": "#b71c1c",
                                      "unchanged": "#9e9e9e"}

    def _segment(self, section: Section, metrics: dict[str, Any]) -> None:
        """Sent / rejected / failed (and the sync's new / changed / unchanged ...), reasons, payloads."""
        from segloop.report import charts

        items = [(k, v) for k in self.SEGMENT_COUNTS if (v := _numeric(metrics.get(k))) is not None]
        if items:
            verb = " (dry run: nothing sent)" if self.run.dry_run or metrics.get("dry_run") else ""
            section.charts.append((f"messages{verb}", charts.bars(
                items, "segment-send", "messages", lambda k: self.SEGMENT_COLORS.get(k, "#3949ab"))))
        if _numeric(metrics.get("held_out")) is not None:
            section.notes.append(
                f"holdout: {charts.fmt(metrics['held_out'])} customers held out "
                f"({charts.fmt(metrics.get('holdout_percent'))}% by a hash of id and salt); never sent, "
                "not counted as failures")
        rate = _numeric(metrics.get("match_rate"))
        if rate is not None:
            unknown = charts.fmt(metrics.get("unknown_ids", 0))
            fate = ("skipped (`on_unknown: skip`)" if "unknown_skipped" in metrics
                    else f"sent: each creates a new profile, billed as an MTU ({charts.fmt(metrics.get('unknown_to_send', 0))} this run)")
            section.notes.append(
                f"match rate: {rate:.1%} of the ids are known to Segment ({', '.join(map(str, metrics.get('match_sources') or []))}); "
                f"{unknown} unknown ids {fate}")
        for key, title in (("rejected_by_reason", "rejected rows by reason"), ("failed_by_reason", "failed rows by reason")):
            reasons = metrics.get(key)
            if isinstance(reasons, dict) and reasons:
                rows = sorted(((str(k), _numeric(v) or 0.0) for k, v in reasons.items()), key=lambda kv: -kv[1])
                section.tables.append((title, ["reason", "rows"], [[r, charts.fmt(n)] for r, n in rows]))
        samples = metrics.get("sample_payloads")
        if isinstance(samples, list):
            for payload in samples[:SAMPLE_PAYLOADS]:
                section.payloads.append(self.redact.text(json.dumps(self.redact.value(payload), indent=2, default=str)))


# -- rendering ----------------------------------------------------------------------------


def _dag(run: RunRecord, pipeline: Pipeline | None) -> Markup:
    from segloop.report import charts

    status = {n.node: n.status for n in run.nodes}
    types = {n.node: n.type for n in run.nodes}
    if pipeline is None:
        return charts.dag([(n.node, n.type, n.status) for n in run.nodes], [])
    config = pipeline.config
    nodes = [(name, types.get(name, config.nodes[name].type), status.get(name, "not run"))
             for name in config.topological_order()]
    edges = [(up, name) for name in config.nodes for up in config.upstream_of(name) if up in config.nodes]
    return charts.dag(nodes, edges)


def render(run: RunRecord, pipeline: Pipeline | None = None, warehouse: Warehouse | None = None,
           redactor: Redactor | None = None, run_connection: bool = False) -> str:
    """The report HTML of ``run`` (tables read from ``warehouse`` when given; ``run_connection``:
    the connection the run wrote them with, still open)."""
    from segloop.report.html import render_report

    redactor = redactor or Redactor.for_pipeline(pipeline)
    builder = ReportBuilder(run, pipeline, warehouse, redactor, run_connection)
    sections = builder.sections()
    html = render_report(
        run,
        dag=_dag(run, pipeline),
        sections=sections,
        schedule=getattr(pipeline.config, "schedule", None) if pipeline else None,
        generated=datetime.now(UTC).isoformat(timespec="seconds"),
        warehouse_note=None if warehouse else "the warehouse was not reachable: only run history is shown",
    )
    return redactor.text(html)


def write_report(
    pipeline: Pipeline, run_id: str, warehouse: Warehouse | None = None, store: RunStore | None = None
) -> Path:
    """Build the report of ``run_id`` and write it under `.segloop/runs/<run_id>/`.

    ``warehouse`` and ``store``: connections the caller keeps open (the run's own), so
    the report does not open others (closing the history's SQLite file costs a checkpoint).
    """
    if store is not None:
        run = store.get_run(run_id)
    else:
        own = pipeline.store()
        try:
            run = own.get_run(run_id)
        finally:
            own.close()
    path = report_path(pipeline.workspace, run.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    if warehouse is not None:
        html = render(run, pipeline, warehouse, run_connection=True)
    else:
        html = _render_connected(run, pipeline)
    # A temporary file of this writer's own: two builds of one report at once (two tabs,
    # the UI and the run's own writer) each replace the file whole, neither loses its tmp.
    fd, tmp = tempfile.mkstemp(prefix=".report.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(html)
        os.chmod(tmp, 0o644)  # as write_text made it (mkstemp's file is private)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _render_connected(run: RunRecord, pipeline: Pipeline) -> str:
    run_id = run.id
    try:
        warehouse_cm = pipeline.connect()
    except Exception as exc:  # an unreachable warehouse still deserves a report
        log.warning("report of run %s: cannot open the warehouse (%s); writing the run history only", run_id, exc)
        html = render(run, pipeline, None)
    else:
        with warehouse_cm as warehouse:
            html = render(run, pipeline, warehouse)
    return html
