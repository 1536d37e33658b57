"""The run report: written after every run, self-contained, every chart present, no secret."""

from __future__ import annotations

import re
from base64 import b64encode
from pathlib import Path

import duckdb
import pytest

from segloop.config import Workspace
from segloop.pipeline import Pipeline
from segloop.report import Redactor, render
from segloop.store import RunStore
from segloop.workspace import ensure_report
from tests.web.helpers import (
    DEMO_PIPELINE,
    RFM_PIPELINE,
    WRITE_KEY,
    copy_workspace,
    demo_template,  # noqa: F401 - fixture
    fakes,  # noqa: F401 - fixture
)

CHARTS = ("dag", "rfm-grid", "segment-sizes", "cluster-sizes", "clv-distribution",
          "propensity-distribution", "recommend-metrics", "segment-send")


def _attr(html: str, pattern: str) -> list[str]:
    return re.findall(pattern, html)


@pytest.fixture
def demo_run(demo_template: Path, tmp_path: Path, fakes: None) -> tuple[Pipeline, str, str]:  # noqa: F811
    root = copy_workspace(demo_template, tmp_path / "ws", {"demo": DEMO_PIPELINE})
    pipeline = Pipeline.load("demo", Workspace.load(root))
    result = pipeline.run()
    assert result.ok, [n.error for n in result.nodes]
    assert result.report is not None
    return pipeline, result.run_id, result.report.read_text()


def test_every_run_writes_its_report_under_the_run_folder(demo_run: tuple[Pipeline, str, str]) -> None:
    pipeline, run_id, html = demo_run
    path = pipeline.workspace.state_dir / "runs" / run_id / "report.html"
    assert path.exists()
    assert f'data-run-id="{run_id}"' in html
    # every node has a row with its status and rows
    for name in pipeline.config.nodes:
        assert f'<tr data-node="{name}">' in html


def test_demo_report_has_the_rfm_grid_and_every_chart(demo_run: tuple[Pipeline, str, str]) -> None:
    pipeline, _, html = demo_run
    for kind in CHARTS:
        assert f'data-chart="{kind}"' in html, f"chart {kind} missing"
    # The grid shows 25 cells whose counts are the warehouse's R x F counts.
    cells = {(int(r), int(f)): int(n) for r, f, n in
             _attr(html, r'class="cell" data-r="(\d)" data-f="(\d)" data-count="(\d+)"')}
    assert len(cells) == 25
    con = duckdb.connect(str(pipeline.workspace.state_dir / "warehouse.duckdb"), read_only=True)
    try:
        truth = dict(((r, f), n) for r, f, n in con.execute(
            "select r_score, f_score, count(*) from main.demo__rfm group by all").fetchall())
        customers = con.execute("select count(*) from main.demo__rfm").fetchone()[0]
    finally:
        con.close()
    assert {k: v for k, v in cells.items() if v} == truth
    assert sum(cells.values()) == customers
    # the DAG draws every node and every edge
    assert len(_attr(html, r'<g class="node" data-node=')) == len(pipeline.config.nodes)
    config = pipeline.config
    edges = sum(len([u for u in config.upstream_of(name) if u in config.nodes]) for name in config.nodes)
    assert edges >= 9 and len(_attr(html, r'<path class="edge"')) == edges


def test_report_sections_show_each_node_types_numbers(demo_run: tuple[Pipeline, str, str]) -> None:
    pipeline, run_id, html = demo_run
    store = RunStore(pipeline.workspace.state_dir / "state.db")
    try:
        nodes = {n.node: n.metrics for n in store.get_run(run_id).nodes}
    finally:
        store.close()

    def section(node: str) -> str:
        return html.split(f'id="node-{node}"', 1)[1].split('id="node-', 1)[0]

    clusters = section("clusters")  # the profiles table and every name the real node gave
    assert "cluster profiles" in clusters and 'data-chart="cluster-sizes"' in clusters
    assert nodes["clusters"]["cluster_names"] and all(name in clusters for name in nodes["clusters"]["cluster_names"])
    recommend = section("recommend")  # the model next to the popularity baseline (popular_*)
    ratio = nodes["recommend"]["ndcg_at_10"] / nodes["recommend"]["popular_ndcg_at_10"]
    assert f"ndcg@10: model / baseline = {ratio:.2f}x" in recommend
    assert 'data-chart="recommend-metrics"' in recommend
    propensity = section("propensity")
    auc, baseline = nodes["propensity"]["auc"], nodes["propensity"]["baseline_auc"]
    assert f"validation AUC: model {auc:.3f}" in propensity and f"the baseline {baseline:.3f}" in propensity
    clv = section("clv")
    assert "bgnbd_log_likelihood" in clv and 'data-chart="clv-distribution"' in clv
    drawn = re.findall(r"distribution of `(\w+)`", clv)
    assert drawn == ["predicted_clv", "expected_spend", "p_alive"]  # docs/ui.md's CLV histograms
    assert "holdout Spearman correlation with actual spend" in clv
    to_segment = section("to_segment")
    rejected = nodes["to_segment"]["rejected_by_reason"]
    assert rejected == {"too_large": nodes["to_segment"]["rejected"]} and rejected["too_large"] > 0
    assert "rejected rows by reason" in to_segment and "too_large" in to_segment
    assert to_segment.count('<pre class="payload">') >= 1


def test_report_holds_no_secret(demo_run: tuple[Pipeline, str, str]) -> None:
    pipeline, run_id, html = demo_run
    basic = b64encode(f"{WRITE_KEY}:".encode()).decode()
    assert WRITE_KEY not in html and basic not in html
    # also when rebuilt later from the run history
    rebuilt = ensure_report(pipeline.workspace, run_id, rebuild=True).read_text()
    assert WRITE_KEY not in rebuilt


def test_report_is_self_contained(demo_run: tuple[Pipeline, str, str]) -> None:
    _, _, html = demo_run
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "<script" not in html and "<link" not in html
    assert "@import" not in html and "url(http" not in html


def test_report_survives_missing_and_odd_metrics(demo_template: Path, tmp_path: Path) -> None:  # noqa: F811
    root = copy_workspace(demo_template, tmp_path / "ws", {"shop": RFM_PIPELINE})
    pipeline = Pipeline.load("shop", Workspace.load(root))
    run_id = pipeline.run().run_id
    store = pipeline.store()
    run = store.get_run(run_id)
    store.close()
    # nodes of types nobody told the report about, with strange metrics
    run.nodes[0].type = "mystery"
    run.nodes[0].metrics = {"nested": {"deep": [1, 2]}, "sample_payloads": "not a list",
                            "rejected_by_reason": ["oops"], "ndcg_at_10": "n/a"}
    run.nodes[1].metrics = {}
    html = render(run, pipeline, None)
    assert 'data-chart="dag"' in html and "mystery" in html


def test_failed_node_error_is_in_the_report(demo_template: Path, tmp_path: Path) -> None:  # noqa: F811
    broken = RFM_PIPELINE.replace("from demo_shop.order_completed", "from demo_shop.no_such_table")
    root = copy_workspace(demo_template, tmp_path / "ws", {"shop": broken})
    result = Pipeline.load("shop", Workspace.load(root)).run()
    assert not result.ok and result.report is not None
    html = result.report.read_text()
    assert 'data-status="failed"' in html
    assert "no_such_table" in html
    assert "skipped because upstream node `orders` did not succeed" in html


def test_redactor_masks_values_and_credential_keys() -> None:
    redact = Redactor(["s3cr3t-value"])
    out = redact.value({"password": "x", "note": "key=s3cr3t-value", "items": ["s3cr3t-value"], "n": 3})
    assert out == {"password": "[secure]", "note": "key=[secure]", "items": ["[secure]"], "n": 3}


def test_report_command_prints_the_path(demo_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    from typer.testing import CliRunner

    from segloop.cli import app

    root = copy_workspace(demo_template, tmp_path / "ws", {"shop": RFM_PIPELINE})
    run_id = Pipeline.load("shop", Workspace.load(root)).run(options={"report": False}).run_id
    path = root / ".segloop" / "runs" / run_id / "report.html"
    assert not path.exists()
    monkeypatch.chdir(root)
    result = CliRunner().invoke(app, ["report", run_id[:12]])
    assert result.exit_code == 0, result.output
    assert path.exists() and str(path) in result.output.replace("\n", "")
    missing = CliRunner().invoke(app, ["report", "nope"])
    assert missing.exit_code == 1 and "no run `nope`" in missing.output
    store = RunStore(root / ".segloop" / "state.db")
    assert store.get_run(run_id).status == "success"
    store.close()


@pytest.mark.parametrize(
    ("metrics", "expected"),
    [
        ({"precision_at_10": 0.2, "popularity_precision_at_10": 0.1}, {"precision@10": {"model": 0.2, "baseline": 0.1}}),
        ({"model": {"ndcg@10": 0.3}, "baseline": {"ndcg@10": 0.1}}, {"ndcg@10": {"model": 0.3, "baseline": 0.1}}),
        ({"coverage_at_10": 0.9, "popular_coverage_at_10": 0.05}, {"coverage@10": {"model": 0.9, "baseline": 0.05}}),
        ({"mapping_rows": 5, "messages_per_second": 900.0}, {}),  # not recommendation measures
        ({"interval_coverage": 0.8, "catalogue_coverage": 0.9}, {}),  # a coverage not "at k" is not one
    ],
)
def test_recommendation_metrics_are_paired_with_their_baseline(metrics: dict, expected: dict) -> None:
    from segloop.report import ReportBuilder, Section
    from segloop.store import NodeRunRecord, RunRecord

    node = NodeRunRecord("rec", "mystery", "success", 1, 0.1, None, metrics)
    run = RunRecord("r1", "p", None, None, "success", False, "2026-01-01T00:00:00+00:00", None, None)
    section = Section(node)
    ReportBuilder(run, None, None, Redactor())._recommend(section, metrics)
    bars = re.findall(r'data-label="([^"]+)" data-series="(\w+)" data-value="([\d.]+)"', str(section.charts[0][1])) if section.charts else []
    found: dict[str, dict[str, float]] = {}
    for label, series, value in bars:
        found.setdefault(label, {})[series] = float(value)
    assert found == expected


def test_the_node_type_says_which_section_the_report_draws(monkeypatch: pytest.MonkeyPatch) -> None:
    """A node type declares its report section; the report does not guess it from the type's name."""
    from segloop.operators import NODE_TYPES
    from segloop.operators.segment import SegmentOperator
    from segloop.report import ReportBuilder, Section
    from segloop.store import NodeRunRecord, RunRecord

    class NotifyOperator(SegmentOperator):  # a Segment-sending type not named `segment`
        type_name = "notify"

    monkeypatch.setitem(NODE_TYPES, "notify", NotifyOperator)
    run = RunRecord("r1", "p", None, None, "success", False, "2026-01-01T00:00:00+00:00", None, None)
    sections = {}
    for node_type in ("notify", "segment_like"):  # the second is not registered: generic section only
        section = Section(NodeRunRecord("send", node_type, "success", 3, 0.1, None, {"sent": 3, "rejected": 0}))
        ReportBuilder(run, None, None, Redactor())._fill(section)
        sections[node_type] = section
    assert [title for title, _ in sections["notify"].charts] == ["messages"]
    assert 'data-label="sent"' in str(sections["notify"].charts[0][1])
    assert sections["segment_like"].charts == []


def test_sizes_of_many_groups_come_from_the_warehouse_top_30(demo_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """A `segment` column with thousands of values: 30 bars, the largest, and a note; the
    report pulls 30 rows of counts, not one per group."""
    pipeline_yml = (
        "name: many\nnodes:\n  groups:\n    type: sql\n    materialize: table\n"
        "    sql: select range as id, 'g' || lpad(cast(range % 4000 as varchar), 4, '0') as segment"
        " from range(20000) union all select -range, 'big' from range(50)\n"
    )
    root = copy_workspace(demo_template, tmp_path / "ws", {"many": pipeline_yml})
    from segloop.warehouses.duckdb import DuckDBWarehouse

    fetched: list[int] = []
    rows = DuckDBWarehouse.rows

    def counting(self: DuckDBWarehouse, expr: object) -> list[dict]:
        result = rows(self, expr)  # type: ignore[arg-type]
        fetched.append(len(result))
        return result

    monkeypatch.setattr(DuckDBWarehouse, "rows", counting)
    result = Pipeline.load("many", Workspace.load(root)).run()
    assert result.ok and result.report is not None
    html = result.report.read_text()
    chart = html[html.index('data-chart="segment-sizes"'):]
    chart = chart[: chart.index("</svg>")]
    labels = re.findall(r'data-label="([^"]*)"', chart)
    assert len(labels) == 30 and labels[0] == "big"
    assert "the 30 largest of 4,001 groups are drawn" in html
    assert max(fetched) < 4000
