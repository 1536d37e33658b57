"""The workspace overview, a pipeline's trends and how runs read, over real runs of real nodes."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from segloop.config import Workspace
from segloop.pipeline import Pipeline
from segloop.report.display import when
from segloop.scheduler import BackgroundRuns
from segloop.store import RunRecord, RunStore
from segloop.web.app import create_app
from tests.web.real import copy_history, history  # noqa: F401 - fixture

pytestmark = pytest.mark.slow
LOCAL = "http://127.0.0.1:8765"


@pytest.fixture
def workspace(history: Path, tmp_path: Path) -> Workspace:  # noqa: F811
    return copy_history(history, tmp_path / "ws")


def client_for(workspace: Workspace) -> TestClient:
    return TestClient(create_app(workspace, runs=BackgroundRuns(workspace)), base_url=LOCAL)


def runs_of(workspace: Workspace, pipeline: str) -> list[RunRecord]:
    store = RunStore(workspace.state_dir / "state.db")
    try:
        return sorted(store.list_runs(pipeline, 50), key=lambda r: r.started_at)
    finally:
        store.close()


def points(page: str, kind: str, series: str) -> list[tuple[str, float]]:
    """(run id, value) of every point of a series in the charts of one kind, in drawing order."""
    found = []
    for svg in re.findall(rf'<svg class="chart" data-chart="{kind}".*?</svg>', page, re.S):
        found += [(run, float(value)) for run, value in re.findall(
            rf'<circle class="point" data-series="{re.escape(series)}" data-run="([^"]+)" data-value="([^"]+)"', svg)]
    return found


def visible_text(page: str) -> str:
    """The page's text without tags and attributes (what a reader sees)."""
    body = re.sub(r"<(script|style|title)\b.*?</\1>", " ", page, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", body))


def test_pipeline_trends_chart_what_the_runs_recorded(workspace: Workspace) -> None:
    page = client_for(workspace).get("/pipelines/shop").text
    runs = runs_of(workspace, "shop")
    assert [r.dry_run for r in runs] == [True, False, False]
    sent = [(r.id, float(next(n for n in r.nodes if n.node == "rfm_to_segment").metrics["sent"]))
            for r in runs if not r.dry_run]
    assert points(page, "messages-sent", "sent") == sent  # dry runs are left out: they send nothing
    assert sent[0][1] > 100 and sent[1][1] == 0  # diff sync: the second run had nothing new to send
    assert len(points(page, "messages-problems", "rejected")) == 2
    for node, metric, label in (("likely_buyers", "auc", "AUC"), ("clusters", "silhouette", "silhouette"),
                                ("ltv", "holdout_spearman", "holdout Spearman"),
                                ("recommend", "ndcg_at_10", "NDCG@10")):
        recorded = [(r.id, round(float(next(n for n in r.nodes if n.node == node).metrics[metric]), 6)) for r in runs]
        drawn = [(run, round(v, 6)) for run, v in points(page, "quality", label)]
        assert drawn == recorded, node  # every run, the dry run included (its models are real)
    assert f"{'likely_buyers'} · AUC" in html.unescape(page)
    baseline = [v for _, v in points(page, "quality", "baseline")]
    assert baseline and all(0 < v < 1 for v in baseline)
    bars = re.findall(r'<rect class="run-bar" data-run="([^"]+)" data-seconds="[^"]+" data-status="(\w+)"', page)
    assert bars == [(r.id, "dry" if r.dry_run else "success") for r in runs]


def test_a_dry_run_reads_dry_run_everywhere_and_times_are_readable(workspace: Workspace) -> None:
    client = client_for(workspace)
    dry = runs_of(workspace, "shop")[0]
    assert dry.dry_run and dry.status == "success"
    page = client.get("/pipelines/shop").text
    row = re.search(rf'<tr data-run-id="{dry.id}" data-status="success">.*?</tr>', page, re.S)
    assert row is not None
    cells = [visible_text(c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row.group(0), re.S)]
    assert cells[2] == "dry run"  # the status column, as `segloop runs` says it
    assert cells[3].startswith(when(dry.started_at))
    assert re.search(r"(just now|\d+ (min|h) ago|\d+ days? ago)$", cells[3])
    run_page = client.get(f"/runs/{dry.id}").text
    assert re.search(r'id="run-status"[^>]*>dry run<', run_page)
    report = client.get(f"/runs/{dry.id}/report?rebuild=1").text
    assert re.search(r'id="run-status"[^>]*>dry run<', report)
    header = re.search(r'<p class="muted">\s*run <code>.*?</p>', report, re.S).group(0)  # type: ignore[union-attr]
    footer = re.search(r"<p class=\"muted\">Generated .*?</p>", report, re.S).group(0)  # type: ignore[union-attr]
    for text in (page, run_page, header, footer, client.get("/").text):  # (model metrics may hold ISO dates)
        seen = visible_text(text)
        assert not re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d", seen), "a raw ISO timestamp is shown"
    assert when(dry.started_at, seconds=True) in visible_text(run_page)


def test_rfm_grid_labels_are_whole_words(workspace: Workspace) -> None:
    run = runs_of(workspace, "segments")[-1]
    report = client_for(workspace).get(f"/runs/{run.id}/report").text
    cells = re.findall(r'<g class="cell" data-r="\d" data-f="\d" data-count="\d+" data-segment="(\w+)">(.*?)</g>', report, re.S)
    assert len(cells) == 25
    for segment, body in cells:
        label = re.search(r'<text class="label".*?</text>', body, re.S)
        assert label is not None
        words = re.findall(r"<tspan[^>]*>([^<]*)</tspan>", label.group(0))
        assert " ".join(words) == segment.replace("_", " ")  # "potential loyalists", not "potential loy…"
    assert any(segment == "potential_loyalists" for segment, _ in cells)


def test_overview_says_at_a_glance_whether_everything_is_healthy(workspace: Workspace) -> None:
    client = client_for(workspace)
    (workspace.pipelines_dir / "broken.yml").write_text("name: broken\nnodes:\n  a:\n    type: nope\n")
    (workspace.pipelines_dir / "fresh.yml").write_text(
        "name: fresh\nnodes:\n  orders:\n    type: sql\n    sql: select 1 as user_id\n")
    page = client.get("/").text
    health = dict(re.findall(r'<tr data-pipeline="(\w+)" data-health="([^"]+)"', page))
    assert health["segments"] == "healthy"
    assert health["broken"] == "file error" and health["fresh"] == "never run"
    assert 'href="/pipelines/broken/edit">fix it in the editor' in page
    assert "unknown node type `nope`" in client.get("/pipelines/broken/edit").text
    assert health["shop"] in ("healthy", "needs attention")
    banner = visible_text(re.search(r'<p class="health-banner.*?</p>', page, re.S).group(0)).strip()  # type: ignore[union-attr]
    assert banner.startswith("4 pipelines: 1 failing") and "1 never run" in banner

    # A run that fails turns the pipeline red, with the reason, and it moves to the top.
    segments = workspace.pipelines_dir / "segments.yml"
    segments.write_text(segments.read_text().replace("select user_id,", "select no_such_column, user_id,"))
    result = Pipeline.load("segments", workspace).run()
    assert not result.ok
    page = client.get("/").text
    rows = re.findall(r'<tr data-pipeline="(\w+)" data-health="([^"]+)">(.*?)</tr>', page, re.S)
    states = {name: state for name, state, _ in rows}
    assert states["segments"] == "failing"
    failing_row = next(body for name, _, body in rows if name == "segments")
    assert "the last run failed: node `orders`" in html.unescape(failing_row) and "no_such_column" in failing_row
    assert [name for name, _, _ in rows][:2] in (["broken", "segments"], ["segments", "broken"])
    assert "2 failing" in visible_text(page)


def chart_points(page: str, title: str, series: str) -> list[tuple[str, float]]:
    """(run id, value) of a series in the one chart with this title."""
    figures = re.findall(r'<figure class="trend"><figcaption><strong>(.*?)</strong>.*?(<svg.*?</svg>)', page, re.S)
    (svg,) = [svg for caption, svg in figures if html.unescape(caption) == title]
    return [(run, float(value)) for run, value in re.findall(
        rf'<circle class="point" data-series="{re.escape(series)}" data-run="([^"]+)" data-value="([^"]+)"', svg)]


def test_every_figure_of_the_quality_cards_is_charted_across_runs(workspace: Workspace) -> None:
    page = client_for(workspace).get("/pipelines/shop").text
    runs = runs_of(workspace, "shop")
    charted = {
        ("likely_buyers", "top-decile lift"): [("top-decile lift", "lift_top_decile")],
        ("likely_buyers", "ECE"): [("ECE", "ece")],
        ("likely_buyers", "Brier score"): [("Brier", "brier")],
        ("ltv", "normalized Gini"): [("Gini", "holdout_gini")],
        ("recommend", "recall@10"): [("recall@10", "recall_at_10"), ("popularity", "popular_recall_at_10")],
        ("recommend", "catalogue coverage"): [("coverage@10", "coverage_at_10"),
                                              ("popularity", "popular_coverage_at_10")],
        ("clusters", "stability (ARI)"): [("ARI", "stability_ari")],
    }
    for (node, label), series in charted.items():
        for legend, metric in series:
            recorded = [(r.id, round(float(next(n for n in r.nodes if n.node == node).metrics[metric]), 6))
                        for r in runs]
            drawn = [(run, round(v, 6)) for run, v in chart_points(page, f"{node} · {label}", legend)]
            assert drawn == recorded, (node, metric)
    text = visible_text(page)
    assert "lower is better; expected calibration error" in text
    section = page.split('id="trends"')[1].split("<h2>Nodes")[0]
    assert 'data-chart="card"' in section  # static SVG: no script, no event handler
    assert not re.search(r"<script|\son\w+=|javascript:", section, re.I)


def test_a_lift_node_charts_its_estimate_and_interval(make_workspace) -> None:
    from segloop.operators.lift import LiftConfig  # noqa: F401 - the node under test
    from segloop.warehouses import DuckDBConfig, Warehouse
    from tests.operators.test_lift import assign_in_the_past, pipeline_text, synthetic
    from tests.segment.send.fake_segment import FakeSegment

    salt = "trend"
    root = make_workspace({"shop": pipeline_text(salt)})
    scores, tracks = synthetic(5_000, seed=3, salt=salt)
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        wh.create_table("scores", scores, schema="src")
        wh.create_table("tracks", tracks.slice(0, 0), schema="src")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SEGLOOP_TEST_WRITE_KEY", "wk-test-123")
        first = Pipeline.load(root / "pipelines" / "shop.yml").run(options={"segment_transport": FakeSegment()})
        assign_in_the_past(root)
        with Warehouse.connect(DuckDBConfig(), root) as wh:
            wh.create_table("tracks", tracks, schema="src")
        second = Pipeline.load(root / "pipelines" / "shop.yml").run(options={"segment_transport": FakeSegment()})
    assert first.ok and second.ok
    m = second.node("lift").metrics
    page = client_for(Workspace.load(root)).get("/pipelines/shop").text
    title = "lift · lift, treatment - holdout"
    # The first run measured nothing (every window open): no point; the second, its figures.
    assert chart_points(page, title, "lift") == [(second.run_id, pytest.approx(m["lift"]))]
    assert chart_points(page, title, "95% low") == [(second.run_id, pytest.approx(m["lift_ci_low"]))]
    assert chart_points(page, title, "95% high") == [(second.run_id, pytest.approx(m["lift_ci_high"]))]
    assert m["lift_ci_low"] < m["lift"] < m["lift_ci_high"]
    assert "the sends helped when the dashed 95% interval is above 0" in visible_text(page)
