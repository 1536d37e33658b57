"""Holdout groups of the Segment node: who is never sent, on every run, removal included."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from segloop.pipeline import Pipeline
from segloop.segment.send.holdout import HOLDOUT, TREATMENT, group_of, threshold_hex
from segloop.warehouses import DuckDBConfig, Warehouse
from tests.operators.segment_fixtures import run_shop, to_segment_pipeline, write_key, write_source  # noqa: F401
from tests.segment.send.fake_segment import FakeSegment

PIPELINE = to_segment_pipeline("Sales Prediction", "[score]")
HOLDOUT_10 = "    holdout: {percent: 10, salt: spring-2026}\n"


def scores(ids: range | list[int], score: float = 0.5) -> pa.Table:
    ids = list(ids)
    return pa.table({"user_id": [f"u{i}" for i in ids], "score": [score] * len(ids)})


def write_pipeline(root: Path, text: str) -> None:
    (root / "pipelines" / "shop.yml").write_text(text)


def run(root: Path, fake: FakeSegment):
    return run_shop(root, fake, report=False)


def assignments(root: Path) -> dict[str, tuple[str, object]]:
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        rows = wh.rows(wh.table("shop__to_segment__holdout"))
    return {r["customer_id"]: (r["group_name"], r["first_assigned"]) for r in rows}


def delivered_users(fake: FakeSegment) -> list[str]:
    return [m["userId"] for m in fake.delivered()]


def test_threshold_is_the_documented_share_of_32_bits() -> None:
    assert threshold_hex(10) == "1999999a"  # round(0.1 * 2**32) = 429496730
    assert threshold_hex(50) == "80000000"
    # The documented rule, by hand, for one id: md5("spring-2026:u1")[:8] against the threshold.
    import hashlib

    digest = hashlib.md5(b"spring-2026:u1").hexdigest()[:8]
    assert group_of("u1", "spring-2026", 10) == (HOLDOUT if int(digest, 16) < 429496730 else TREATMENT)


def test_holdout_customers_are_never_sent_and_groups_follow_the_hash(make_workspace) -> None:
    root = make_workspace({"shop": PIPELINE + HOLDOUT_10})
    write_source(root, scores(range(3000)))
    fake = FakeSegment()
    result = run(root, fake)
    node = result.node("to_segment")
    assert result.ok, node.error
    expected = {f"u{i}": group_of(f"u{i}", "spring-2026", 10) for i in range(3000)}
    held = {k for k, g in expected.items() if g == HOLDOUT}
    assert 240 < len(held) < 360  # ~10% of 3,000
    sent = delivered_users(fake)
    assert sorted(sent) == sorted(k for k, g in expected.items() if g == TREATMENT)
    m = node.metrics
    assert m["held_out"] == len(held) and m["holdout_percent"] == 10
    assert m["sent"] == 3000 - len(held) and m["failed"] == 0 and m["rejected"] == 0
    assert m["holdout_assigned"] == 3000 and m["new"] == 3000 - len(held)
    table = assignments(root)
    assert {k: g for k, (g, _) in table.items()} == expected


def test_assignment_is_kept_and_later_runs_never_send_the_holdout(make_workspace) -> None:
    root = make_workspace({"shop": PIPELINE + HOLDOUT_10})
    write_source(root, scores(range(1000)))
    fake = FakeSegment()
    assert run(root, fake).ok
    first = assignments(root)
    held = {k for k, (g, _) in first.items() if g == HOLDOUT}
    # Every value changes and 500 customers join: the holdout still gets nothing.
    write_source(root, scores(range(1500), score=0.9))
    second_run = run(root, fake)
    assert second_run.ok
    m = second_run.node("to_segment").metrics
    assert m["holdout_assigned"] == 500 and m["changed"] == 1000 - len(held)
    second = assignments(root)
    assert len(second) == 1500
    assert all(second[k] == first[k] for k in first)  # group and first_assigned unchanged
    later = min(second[f"u{i}"][1] for i in range(1000, 1500))
    assert later > max(v[1] for v in first.values())
    held_now = {k for k, (g, _) in second.items() if g == HOLDOUT}
    assert not held_now & set(delivered_users(fake))
    assert m["held_out"] == len(held_now)


def test_holdout_added_to_a_node_that_sent_before_is_never_sent_again_nor_removed(make_workspace) -> None:
    """A customer sent before the holdout existed, then held out: no changed value and no
    `on_removed` message reaches it; a treatment customer who leaves gets the removal."""
    removal = "    on_removed: Left Audience\n"
    root = make_workspace({"shop": PIPELINE + removal})
    write_source(root, scores(range(400)))
    fake = FakeSegment()
    assert run(root, fake).ok and len(fake.delivered()) == 400
    write_pipeline(root, PIPELINE + removal + HOLDOUT_10)
    held = {f"u{i}" for i in range(400) if group_of(f"u{i}", "spring-2026", 10) == HOLDOUT}
    treated = [f"u{i}" for i in range(400) if f"u{i}" not in held]
    before = len(fake.requests)
    write_source(root, scores(range(400), score=0.7))  # every value changes
    second = run(root, fake)
    assert second.ok, second.node("to_segment").error
    later = [m for r in fake.requests[before:] for m in r.body["batch"]]
    assert not {m["userId"] for m in later} & held
    assert second.node("to_segment").metrics["removed"] == 0
    # Half of each group leaves the input: only the treatment half gets "Left Audience".
    staying = [i for i in range(400) if i % 2 == 0]
    write_source(root, scores(staying, score=0.7))
    before = len(fake.requests)
    third = run(root, fake)
    assert third.ok
    later = [m for r in fake.requests[before:] for m in r.body["batch"]]
    assert sorted(m["userId"] for m in later if m["event"] == "Left Audience") == sorted(
        k for k in treated if int(k[1:]) % 2 == 1)
    assert not {m["userId"] for m in later} & held


def test_changed_percent_is_refused_until_restored_or_ended(make_workspace) -> None:
    root = make_workspace({"shop": PIPELINE + HOLDOUT_10})
    write_source(root, scores(range(500)))
    fake = FakeSegment()
    assert run(root, fake).ok
    before = len(fake.requests)
    first = assignments(root)
    write_source(root, scores(range(500), score=0.8))
    write_pipeline(root, PIPELINE + "    holdout: {percent: 20, salt: spring-2026}\n")
    refused = run(root, fake)
    node = refused.node("to_segment")
    assert node.status == "failed"
    assert "percent 10 -> 20" in node.error and "restore `percent: 10`" in node.error
    assert "segloop reset shop to_segment --holdout" in node.error
    assert len(fake.requests) == before  # nothing sent
    assert assignments(root) == first
    # A new salt is refused the same way, with the preview too.
    write_pipeline(root, PIPELINE + "    holdout: {percent: 10, salt: autumn}\n")
    with pytest.raises(Exception, match="salt 'spring-2026' -> 'autumn'"):
        Pipeline.load(root / "pipelines" / "shop.yml").preview("to_segment")
    # Ending the experiment keeps the old groups and draws new ones on the next run.
    archive = Pipeline.load(root / "pipelines" / "shop.yml").end_holdout("to_segment")
    assert archive and archive.startswith("shop__to_segment__holdout_until_")
    again = run(root, fake)
    assert again.ok, again.node("to_segment").error
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        assert wh.count(wh.table(archive)) == 500
    new = assignments(root)
    assert {k: g for k, (g, _) in new.items()} == {f"u{i}": group_of(f"u{i}", "autumn", 10) for i in range(500)}


def test_preview_and_dry_run_count_the_holdout_and_write_nothing(make_workspace) -> None:
    root = make_workspace({"shop": PIPELINE + HOLDOUT_10})
    write_source(root, scores(range(1000)))
    held = sum(group_of(f"u{i}", "spring-2026", 10) == HOLDOUT for i in range(1000))
    # The upstream table must exist for a preview: a dry run materializes it.
    dry = Pipeline.load(root / "pipelines" / "shop.yml").run(dry_run=True, options={"report": False})
    assert dry.node("to_segment").metrics["held_out"] == held
    assert dry.node("to_segment").metrics["to_send"] == 1000 - held
    preview = Pipeline.load(root / "pipelines" / "shop.yml").preview("to_segment")
    assert preview["held_out"] == held and preview["to_send"] == 1000 - held
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        assert not wh.has_table("shop__to_segment__holdout")


@pytest.mark.parametrize("percent", [0, 100, -5])
def test_percent_out_of_range_is_a_config_error(make_workspace, percent: int) -> None:
    from segloop.errors import ConfigError

    root = make_workspace({"shop": PIPELINE + f"    holdout: {{percent: {percent}, salt: s}}\n"})
    with pytest.raises(ConfigError, match="percent"):
        Pipeline.load(root / "pipelines" / "shop.yml")


@pytest.fixture(params=["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)])
def workspace_yml(request: pytest.FixtureRequest) -> str:
    if request.param == "duckdb":
        return "warehouses:\n  default:\n    type: duckdb\n    path: .segloop/warehouse.duckdb\n"
    cluster = request.getfixturevalue("pg_cluster")
    return str(cluster.workspace_yml(request.getfixturevalue("pg_database"), "default"))


def test_groups_are_the_documented_hash_on_every_warehouse(tmp_path: Path, workspace_yml: str) -> None:
    """Integer ids too: the customer id is hashed as its text, so `123` is the same customer
    on DuckDB, PostgreSQL and in Python."""
    root = tmp_path / "ws"
    (root / "pipelines").mkdir(parents=True)
    (root / "segloop.yml").write_text(workspace_yml)
    (root / "pipelines" / "shop.yml").write_text(PIPELINE + "    holdout: {percent: 12.5, salt: 'x:y'}\n")
    pipeline = Pipeline.load(root / "pipelines" / "shop.yml")
    ids = list(range(100_000, 102_000))
    with pipeline.connect() as wh:
        wh.create_table("scores", pa.table({"user_id": pa.array(ids, pa.int64()), "score": [0.5] * len(ids)}),
                        schema="src")
    fake = FakeSegment()
    result = pipeline.run(options={"segment_transport": fake, "report": False})
    assert result.ok, result.node("to_segment").error
    expected = {str(i): group_of(str(i), "x:y", 12.5) for i in ids}
    with pipeline.connect() as wh:
        found = {r["customer_id"]: r["group_name"] for r in wh.rows(wh.table("shop__to_segment__holdout"))}
    assert found == expected
    assert sorted(delivered_users(fake)) == sorted(k for k, g in expected.items() if g == TREATMENT)
    assert result.node("to_segment").metrics["held_out"] == sum(g == HOLDOUT for g in expected.values())


def test_cli_reset_holdout_ends_the_experiment(make_workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from segloop.cli import app

    root = make_workspace({"shop": PIPELINE + HOLDOUT_10})
    write_source(root, scores(range(50)))
    assert run(root, FakeSegment()).ok
    monkeypatch.chdir(root)
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()
    declined = runner.invoke(app, ["reset", "shop", "to_segment", "--holdout"], input="n\n")
    assert declined.exit_code == 1 and "End the holdout experiment of `to_segment`?" in declined.output
    assert len(assignments(root)) == 50
    done = runner.invoke(app, ["reset", "shop", "to_segment", "--holdout", "-y"])
    assert done.exit_code == 0, done.output
    said = " ".join(done.output.split())  # the console wraps long lines at its width
    assert "Holdout of `to_segment` ended; its groups are kept in shop__to_segment__holdout_until_" in said
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        assert not wh.has_table("shop__to_segment__holdout")
    again = runner.invoke(app, ["reset", "shop", "to_segment", "--holdout", "-y"])
    assert again.exit_code == 0 and "has no holdout groups yet" in again.output


def test_run_summary_says_how_many_were_held_out(make_workspace, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The CLI's dry run, run summary and preview, with segloop's collector as the endpoint."""
    from typer.testing import CliRunner

    from segloop.cli import app
    from segloop.segment.collector.app import serve_in_thread

    held = sum(group_of(f"u{i}", "spring-2026", 10) == HOLDOUT for i in range(200))
    runner = CliRunner()
    monkeypatch.setenv("COLUMNS", "200")
    with serve_in_thread({"wk-test-123": "crm"}, tmp_path / "collector") as collector:
        root = make_workspace({"shop": PIPELINE + HOLDOUT_10 + f"    endpoint: {collector.url}\n"})
        write_source(root, scores(range(200)))
        monkeypatch.chdir(root)
        dry = runner.invoke(app, ["run", "shop", "--dry-run"])
        assert f"would send {200 - held:,}" in dry.output, dry.output
        preview = runner.invoke(app, ["preview", "shop", "to_segment"])
        assert f"held_out={held}" in preview.output and f"to_send={200 - held}" in preview.output, preview.output
        real = runner.invoke(app, ["run", "shop"])
        assert real.exit_code == 0, real.output
        assert f"sent={200 - held}, held_out={held}" in real.output, real.output
