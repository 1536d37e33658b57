"""Match rate of a Segment node: how many outgoing ids Segment already knows, and `on_unknown`.

Real parts: a Segment-shaped source schema (users, Profiles Sync's user_identifiers) in a
DuckDB file or the throwaway PostgreSQL, pipelines run through ``Pipeline``, and segloop's
own collector on a loopback port as the endpoint.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from segloop.cli import app
from segloop.pipeline import Pipeline
from segloop.segment.archive.files import read_all_messages
from segloop.segment.collector.app import serve_in_thread
from segloop.warehouses import Warehouse
from tests.operators.segment_fixtures import scores_to_segment

KEY = "wk-match-test"
WEB = """\
  web:
    type: segment_source
    schema: web
    since: 30d          # the window of downstream reads; known ids come from the whole tables
"""
OLD = datetime.now() - timedelta(days=400)
# u0-u59 are in `users` (identified long ago); u60-u74 are user ids in Profiles Sync's
# `user_identifiers`; u75-u79 appear there only as emails and u80 as an anonymous id, which
# are not user ids; u81-u99 are nowhere. Known: 75 of 100.
KNOWN = {f"u{i}" for i in range(75)}


@pytest.fixture(autouse=True)
def write_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGLOOP_MATCH_KEY", KEY)


@pytest.fixture(params=["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)])
def workspace_yml(request: pytest.FixtureRequest) -> str:
    if request.param == "duckdb":
        return "warehouses:\n  default:\n    type: duckdb\n    path: .segloop/warehouse.duckdb\n"
    cluster = request.getfixturevalue("pg_cluster")
    database = request.getfixturevalue("pg_database")
    return str(cluster.workspace_yml(database, "default"))


def crm(url: str, extra: str = "", source: str = WEB) -> str:
    """Pipeline `crm`: ``source`` (the `segment_source` `web`) and `to_segment` sending identify calls
    with the tier to ``url``; ``extra`` holds more keys of `to_segment`."""
    return scores_to_segment(name="crm", key_env="SEGLOOP_MATCH_KEY", before=source, endpoint=url, call="identify",
                             customer_id="user_id", traits="[tier]") + extra


def make(root: Path, yml: str, url: str, extra: str = "") -> Pipeline:
    (root / "pipelines").mkdir(parents=True, exist_ok=True)
    (root / "segloop.yml").write_text(yml)
    (root / "pipelines" / "crm.yml").write_text(crm(url, extra))
    pipeline = Pipeline.load(root / "pipelines" / "crm.yml")
    with pipeline.connect() as wh:
        write_source(wh)
    return pipeline


def write_source(wh: Warehouse, users: list[str] | None = None) -> None:
    ids = users if users is not None else [f"u{i}" for i in range(60)]
    wh.create_table("tracks", pa.table({"user_id": ["u1"], "event": ["signed_in"], "received_at": [OLD]}), schema="web")
    wh.create_table("users", pa.table({"id": ids, "email": [f"{u}@example.com" for u in ids],
                                       "received_at": [OLD] * len(ids)}), schema="web")
    identifiers = ([("user_id", f"u{i}") for i in range(60, 75)] + [("email", f"u{i}") for i in range(75, 80)]
                   + [("anonymous_id", "u80")])
    wh.create_table("user_identifiers", pa.table({
        "canonical_segment_id": [f"prof-{i}" for i in range(len(identifiers))],
        "type": [t for t, _ in identifiers], "value": [v for _, v in identifiers],
        "timestamp": [OLD] * len(identifiers),
    }), schema="web")
    wh.create_table("scores", pa.table({"user_id": [f"u{i}" for i in range(100)], "tier": [1] * 100}), schema="src")


def received(archive: Path) -> list[str]:
    return sorted(m["userId"] for m in read_all_messages(archive))


def test_match_rate_in_metrics_preview_and_report(tmp_path: Path, workspace_yml: str) -> None:
    with serve_in_thread({KEY: "crm"}, tmp_path / "collector") as collector:
        pipeline = make(tmp_path / "ws", workspace_yml, collector.url)
        dry = pipeline.run(dry_run=True)
        preview = pipeline.preview("to_segment")
        result = pipeline.run()
    archive = tmp_path / "collector"  # flushed when the collector stops
    node = result.node("to_segment")
    assert result.ok, node.error
    for metrics in (dry.node("to_segment").metrics, preview, node.metrics):
        assert metrics["known_ids"] == 75 and metrics["unknown_ids"] == 25, metrics
        assert metrics["match_rate"] == 0.75
        assert metrics["unknown_to_send"] == 25
        assert metrics["match_sources"] == ["web.users", "web.user_identifiers"]
    assert node.metrics["sent"] == 100  # `on_unknown: send` (the default) sends them all
    assert received(archive) == sorted(f"u{i}" for i in range(100))
    report = result.report.read_text() if result.report else ""
    assert "match rate: 75.0%" in report and "new profile" in report


def test_skip_unknown_sends_only_known_ids_until_segment_knows_them(tmp_path: Path, workspace_yml: str) -> None:
    from tests.segment.send.fake_segment import FakeSegment

    fake = FakeSegment()
    pipeline = make(tmp_path / "ws", workspace_yml, "http://127.0.0.1:9",
                    "    on_unknown: skip\n    on_removed: Left Audience\n")

    def run() -> dict[str, Any]:
        result = pipeline.run(options={"segment_transport": fake, "report": False})
        assert result.ok, result.node("to_segment").error
        return result.node("to_segment").metrics

    m = run()
    assert m["sent"] == 75 and m["unknown_skipped"] == 25 and m["failed"] == 0 and m["rejected"] == 0
    assert sorted(msg["userId"] for msg in fake.delivered()) == sorted(KNOWN)
    # Nothing changed: the unknown ids are still skipped, and never sent as "removed".
    m2 = run()
    assert m2["sent"] == 0 and m2["unknown_skipped"] == 25 and m2["removed"] == 0
    # Segment learns about everyone: the 25 are sent now, as new rows, and only they.
    with pipeline.connect() as wh:
        write_source(wh, users=[f"u{i}" for i in range(100)])
    m3 = run()
    assert m3["sent"] == 25 and m3["new"] == 25 and m3["unknown_ids"] == 0 and m3["match_rate"] == 1.0
    assert sorted(msg["userId"] for msg in fake.delivered()) == sorted(f"u{i}" for i in range(100))


def test_identifiers_materialized_by_the_source_node_count(make_workspace) -> None:
    """Profiles Sync with raw tables only: a `segment_source` may materialize
    `<pipeline>__<source>__user_identifiers` in the output schema; it is read too."""
    root = make_workspace({"crm": crm("http://127.0.0.1:9")})
    pipeline = Pipeline.load(root / "pipelines" / "crm.yml")
    with pipeline.connect() as wh:
        write_source(wh)
        wh.drop_table("user_identifiers", schema="web")
        wh.create_table("crm__web__user_identifiers", pa.table({
            "canonical_segment_id": ["p1", "p2"], "type": ["user_id", "user_id"], "value": ["u90", "u91"]}))
    assert pipeline.run(node="scores").ok  # the upstream table for the preview
    preview = pipeline.preview("to_segment")
    assert preview["known_ids"] == 62 and preview["unknown_ids"] == 38
    assert preview["match_sources"][-1].endswith("crm__web__user_identifiers")


def test_cli_preview_prints_the_match_rate(make_workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_workspace({"crm": crm("http://127.0.0.1:9")})
    pipeline = Pipeline.load(root / "pipelines" / "crm.yml")
    with pipeline.connect() as wh:
        write_source(wh)
    assert pipeline.run(dry_run=True).ok  # the upstream table for the preview
    monkeypatch.chdir(root)
    out = CliRunner().invoke(app, ["preview", "crm", "to_segment"])
    assert out.exit_code == 0, out.output
    assert "known_ids=75" in out.output and "unknown_ids=25" in out.output
    assert "match rate: 75.0%" in out.output and "new profiles" in out.output


def test_no_segment_source_no_match_figures(make_workspace) -> None:
    root = make_workspace({"crm": crm("http://127.0.0.1:9", source="")})
    pipeline = Pipeline.load(root / "pipelines" / "crm.yml")
    with pipeline.connect() as wh:
        write_source(wh)
    metrics: dict[str, Any] = pipeline.run(dry_run=True).node("to_segment").metrics
    assert "match_rate" not in metrics and metrics["to_send"] == 100
