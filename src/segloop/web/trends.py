"""Trends over a pipeline's runs and the workspace's health, read from the run history.

Per pipeline: messages sent / failed / rejected by its Segment nodes, each model's quality
metric next to its baseline, the other figures of its quality card (propensity: top-decile
lift, ECE, Brier; clv: Gini; recommend: recall@10 and catalogue coverage next to
popularity; clusters: stability across seeds; a lift node's estimate with its 95% interval),
and how long the runs took, as inline SVG charts. For the
workspace overview, one verdict per pipeline (healthy, needs attention, failing, never
run, file error) with the reasons, so "is everything healthy?" is answered at a glance.

Everything here reads ``RunRecord``s (metrics as the nodes recorded them); nothing runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from markupsafe import Markup

from segloop.report import charts
from segloop.report.display import ago, parse_time, run_css, run_label, when
from segloop.store import NodeRunRecord, RunRecord

TREND_RUNS = 30  # runs drawn in a pipeline's trend charts
STRIP_RUNS = 12  # runs in the overview's status strip
QUALITY_DROP = 0.10  # a model metric this much (relative) below the previous run's is flagged
SCHEDULE_GRACE = timedelta(minutes=15)  # a scheduled run this late is flagged


@dataclass(frozen=True)
class Quality:
    """A model's quality metric (higher is better) and the baseline it should beat."""

    metric: str
    baseline: str | None
    label: str


# By node type; a node of another type that records one of these metrics is charted too.
QUALITY: dict[str, Quality] = {
    "propensity": Quality("auc", "baseline_auc", "AUC"),
    "clv": Quality("holdout_spearman", "holdout_baseline_spearman", "holdout Spearman"),
    "clusters": Quality("silhouette", None, "silhouette"),
    "recommend": Quality("ndcg_at_10", "popular_ndcg_at_10", "NDCG@10"),
}
DELIVERY = ("sent", "failed", "rejected")


@dataclass(frozen=True)
class CardMetric:
    """A figure of a model's quality card, charted across runs: its metric and, dashed in
    the same chart, companions on the same scale (a baseline, an interval's ends)."""

    label: str
    series: tuple[tuple[str, str], ...]  # (metric, legend); the first is the figure itself
    note: str
    lower_is_better: bool = False


# The card's figures besides the node type's QUALITY metric (which has its own chart).
CARDS: dict[str, tuple[CardMetric, ...]] = {
    "propensity": (
        CardMetric("top-decile lift", (("lift_top_decile", "top-decile lift"),),
                   "positive rate of the 10% highest scores over the overall rate; 1 is no better than chance"),
        CardMetric("ECE", (("ece", "ECE"),),
                   "expected calibration error: gap between predicted and actual rate, by probability bin", True),
        CardMetric("Brier score", (("brier", "Brier"),),
                   "mean squared error of the probabilities sent", True),
    ),
    "clv": (
        CardMetric("normalized Gini", (("holdout_gini", "Gini"),),
                   "how well the forecast orders customers by what they spent next; 1 is the best order"),
    ),
    "recommend": (
        CardMetric("recall@10", (("recall_at_10", "recall@10"), ("popular_recall_at_10", "popularity")),
                   "share of what customers went on to buy that was in their top 10; dashed: recommending the best sellers"),
        CardMetric("catalogue coverage", (("coverage_at_10", "coverage@10"), ("popular_coverage_at_10", "popularity")),
                   "share of the catalogue recommended to someone; dashed: the best sellers"),
    ),
    "clusters": (
        CardMetric("stability (ARI)", (("stability_ari", "ARI"),),
                   "agreement of the clusters with refits under other seeds; 1 is the same clusters"),
    ),
    "lift": (
        CardMetric("lift, treatment - holdout", (("lift", "lift"), ("lift_ci_low", "95% low"),
                                                 ("lift_ci_high", "95% high")),
                   "difference in conversion rate; the sends helped when the dashed 95% interval is above 0"),
    ),
}


@dataclass
class Chart:
    title: str
    svg: Markup
    note: str = ""


def quality_of(node: NodeRunRecord) -> Quality | None:
    """The quality metric a node's run recorded, if it is a model."""
    known = QUALITY.get(node.type)
    if known is not None and _number(node.metrics.get(known.metric)) is not None:
        return known
    for quality in QUALITY.values():
        if _number(node.metrics.get(quality.metric)) is not None:
            return quality
    return None


def is_delivery(node: NodeRunRecord) -> bool:
    return node.type == "segment" or "sent" in node.metrics


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def finished(runs: list[RunRecord]) -> list[RunRecord]:
    """Runs that did run and are over (not skipped for a busy pipeline, not running), oldest first."""
    return sorted((r for r in runs if r.status not in ("skipped", "running")), key=lambda r: r.started_at)


def _axis(runs: list[RunRecord]) -> list[tuple[str, str]]:
    return [(r.id, when(r.started_at)) for r in runs]


def pipeline_charts(runs: list[RunRecord]) -> list[Chart]:
    """The trend charts of one pipeline, from its runs (any order, newest ones are kept)."""
    done = finished(runs)[-TREND_RUNS:]
    out: list[Chart] = []
    if not done:
        return out
    real = [r for r in done if not r.dry_run]
    senders = sorted({n.node for r in done for n in r.nodes if is_delivery(n)})
    if senders:
        totals: dict[str, list[float | None]] = {k: [] for k in DELIVERY}
        for run in real:
            nodes = [n for n in run.nodes if n.node in senders and n.status != "skipped"]
            for key in DELIVERY:
                found = [_number(n.metrics.get(key)) for n in nodes]
                numbers = [v for v in found if v is not None]
                totals[key].append(sum(numbers) if numbers else None)
        axis = _axis(real)
        names = ", ".join(f"`{s}`" for s in senders)
        note = f"Segment nodes {names}; dry runs send nothing and are left out."
        if not real:
            note = f"Segment nodes {names}: no run has sent yet (only dry runs)."
        out.append(Chart("messages sent", charts.trend(
            [charts.Series("sent", totals["sent"], charts.STATUS_COLORS["success"])],
            axis, "messages-sent", "messages sent per run", from_zero=True), note))
        out.append(Chart("messages failed and rejected", charts.trend(
            [charts.Series("failed", totals["failed"], charts.STATUS_COLORS["failed"]),
             charts.Series("rejected", totals["rejected"], charts.STATUS_COLORS["skipped"])],
            axis, "messages-problems", "messages failed and rejected per run", from_zero=True),
            "failed: Segment refused them or did not answer; rejected: bad rows, kept in the rejects table."))
    models: dict[str, Quality] = {}
    cards: dict[str, tuple[CardMetric, ...]] = {}
    for run in done:
        for node in run.nodes:
            quality = quality_of(node) if node.status == "success" else None
            if quality is not None:
                models.setdefault(node.node, quality)
            card = CARDS.get(node.type, ())
            if any(_number(node.metrics.get(c.series[0][0])) is not None for c in card):
                cards.setdefault(node.node, card)
    hollow = [r.dry_run for r in done]
    for name in dict.fromkeys([*models, *cards]):
        by_run = [{n.node: n for n in r.nodes}.get(name) for r in done]
        if name in models:
            out.append(_quality_chart(name, models[name], by_run, done, hollow))
        for figure in cards.get(name, ()):
            chart = _card_chart(name, figure, by_run, done, hollow)
            if chart is not None:
                out.append(chart)
    timed = [r for r in done if r.seconds is not None]
    out.append(Chart("run duration", charts.run_bars(
        [(r.id, when(r.started_at), r.seconds or 0.0, run_css(r)) for r in timed], "durations",
        "how long each run took"), "one bar per run, coloured by its status"))
    return out


def _quality_chart(name: str, quality: Quality, by_run: list[NodeRunRecord | None],
                   done: list[RunRecord], hollow: list[bool]) -> Chart:
    values = [_number(n.metrics.get(quality.metric)) if n and n.status == "success" else None for n in by_run]
    series = [charts.Series(quality.label, values, charts.SERIES_COLORS[0])]
    if quality.baseline:
        base = [_number(n.metrics.get(quality.baseline)) if n and n.status == "success" else None for n in by_run]
        if any(v is not None for v in base):
            series.append(charts.Series("baseline", base, charts.SERIES_COLORS[1], dashed=True))
    return Chart(f"{name} · {quality.label}", charts.trend(
        series, _axis(done), "quality", f"{name}: {quality.label} per run", hollow=hollow),
        "higher is better" + ("; the dashed line is the baseline the model should beat" if len(series) > 1 else ""))


def _card_chart(name: str, card: CardMetric, by_run: list[NodeRunRecord | None],
                done: list[RunRecord], hollow: list[bool]) -> Chart | None:
    """One card figure across runs; a run whose gate failed still recorded it (and shows)."""
    series = []
    for j, (metric, legend) in enumerate(card.series):
        values = [_number(n.metrics.get(metric)) if n is not None else None for n in by_run]
        if j and not any(v is not None for v in values):
            continue
        color = charts.SERIES_COLORS[0] if j == 0 else charts.SERIES_COLORS[1]
        series.append(charts.Series(legend, values, color, dashed=j > 0))
    if not any(v is not None for v in series[0].values):
        return None
    better = "lower is better" if card.lower_is_better else "higher is better"
    return Chart(f"{name} · {card.label}", charts.trend(
        series, _axis(done), "card", f"{name}: {card.label} per run", hollow=hollow),
        f"{better}; {card.note}")


# -- workspace health ---------------------------------------------------------------------


HEALTHY, ATTENTION, FAILING, NEVER, INVALID = "healthy", "needs attention", "failing", "never run", "file error"
SEVERITY = {FAILING: 0, INVALID: 0, ATTENTION: 1, NEVER: 2, HEALTHY: 3}


@dataclass
class Health:
    """One pipeline's verdict for the overview, with the reasons behind it."""

    state: str
    reasons: list[str] = field(default_factory=list)
    last: RunRecord | None = None
    last_success: RunRecord | None = None
    strip: Markup | None = None
    sent: float | None = None  # messages sent by the last run that sent

    @property
    def css(self) -> str:
        return {HEALTHY: "ok", ATTENTION: "warn", FAILING: "bad", INVALID: "bad", NEVER: "none"}[self.state]


def pipeline_health(runs: list[RunRecord], schedule: Any = None, now: datetime | None = None) -> Health:
    """The verdict for one pipeline from its recent runs (newest first or any order)."""
    now = now or datetime.now(UTC)
    done = finished(runs)
    if not done:
        health = Health(NEVER, ["no run yet: press Run now on its page, or `segloop run`"])
        return health
    last = done[-1]
    health = Health(HEALTHY, last=last)
    health.last_success = next((r for r in reversed(done) if r.status == "success"), None)
    health.strip = charts.status_strip([(r.id, when(r.started_at), run_css(r)) for r in done[-STRIP_RUNS:]])
    if last.status == "failed":
        health.state = FAILING
        streak = 0
        for run in reversed(done):
            if run.status != "failed":
                break
            streak += 1
        first_line = (last.error or "a node failed").splitlines()[0]
        since = f"the last {streak} runs failed" if streak > 1 else "the last run failed"
        health.reasons.append(f"{since}: {first_line}")
    real = [r for r in done if not r.dry_run]
    if real:
        _delivery_reasons(real[-1], health)
    _quality_reasons(done, health)
    warnings = [f"node `{n.node}`: {w}" for n in last.nodes for w in n.metrics.get("warnings", []) if isinstance(w, str)]
    if warnings:
        more = f" (and {len(warnings) - 1} more)" if len(warnings) > 1 else ""
        health.reasons.append(f"warning in the last run: {warnings[0]}{more}")
    late = _late(last, schedule, now)
    if late:
        health.reasons.append(late)
    if health.state == HEALTHY and health.reasons:
        health.state = ATTENTION
    return health


def _delivery_reasons(run: RunRecord, health: Health) -> None:
    sent = rejected = failed = 0.0
    any_sender = False
    for node in run.nodes:
        if not is_delivery(node):
            continue
        any_sender = True
        sent += _number(node.metrics.get("sent")) or 0
        rejected += _number(node.metrics.get("rejected")) or 0
        failed += _number(node.metrics.get("failed")) or 0
    if not any_sender:
        return
    health.sent = sent
    if failed:
        health.reasons.append(f"{charts.fmt(failed)} messages did not reach Segment in the last run that sent")
    if rejected:
        health.reasons.append(f"{charts.fmt(rejected)} rows rejected (not sent) in the last run that sent; "
                              "see the Segment node's rejected rows")


def _quality_reasons(done: list[RunRecord], health: Health) -> None:
    latest: dict[str, NodeRunRecord] = {}
    previous: dict[str, NodeRunRecord] = {}
    for run in reversed(done):
        for node in run.nodes:
            if node.status != "success" or quality_of(node) is None:
                continue
            if node.node not in latest:
                latest[node.node] = node
            elif node.node not in previous:
                previous[node.node] = node
    for name, node in latest.items():
        quality = quality_of(node)
        assert quality is not None  # filtered above
        value = _number(node.metrics.get(quality.metric))
        base = _number(node.metrics.get(quality.baseline)) if quality.baseline else None
        if value is None:
            continue
        if base is not None and value <= base:
            health.reasons.append(f"`{name}`: {quality.label} {charts.fmt(value)} is no better than its "
                                  f"baseline ({charts.fmt(base)})")
            continue
        before = previous.get(name)
        old = _number(before.metrics.get(quality.metric)) if before else None
        if old is not None and old > 0 and value < old * (1 - QUALITY_DROP):
            health.reasons.append(f"`{name}`: {quality.label} fell from {charts.fmt(old)} to {charts.fmt(value)} "
                                  "since the run before")


def _late(last: RunRecord, schedule: Any, now: datetime) -> str | None:
    """A scheduled pipeline whose next run is overdue (is `segloop serve` running?)."""
    started = parse_time(last.started_at)
    if schedule is None or started is None:
        return None
    due = schedule.next_after(started)
    if due is None or due + SCHEDULE_GRACE > now:
        return None
    return (f"no run since {when(started)} although the schedule ({schedule.describe()}) was due "
            f"{ago(due, now)}; is `segloop serve` running?")


def summary(states: list[str]) -> tuple[str, str]:
    """The overview's headline and its CSS class: ``All 3 pipelines are healthy.``"""
    if not states:
        return "No pipelines yet.", "none"
    bad = sum(1 for s in states if s in (FAILING, INVALID))
    warn = sum(1 for s in states if s == ATTENTION)
    never = sum(1 for s in states if s == NEVER)
    total = len(states)
    noun = "pipeline" if total == 1 else "pipelines"
    if not bad and not warn and not never:
        return (f"All {total} {noun} healthy." if total > 1 else "The pipeline is healthy."), "ok"
    parts = []
    if bad:
        parts.append(f"{bad} failing")
    if warn:
        parts.append(f"{warn} {'needs' if warn == 1 else 'need'} attention")
    if never:
        parts.append(f"{never} never run")
    healthy = total - bad - warn - never
    tail = f"; {healthy} healthy" if healthy else ""
    return f"{total} {noun}: {', '.join(parts)}{tail}.", ("bad" if bad else "warn" if warn else "none")


def label(run: RunRecord | None) -> str:
    return run_label(run) if run is not None else ""
