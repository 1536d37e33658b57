"""The Segment action in a pipeline: exact calls, rejects, diff sync, retries of failed batches."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pytest

from segloop.pipeline import Pipeline
from segloop.warehouses import DuckDBConfig, Warehouse
from tests.operators.segment_fixtures import run_shop as run
from tests.operators.segment_fixtures import to_segment_pipeline, write_key, write_source  # noqa: F401 - fixture
from tests.segment.send.fake_segment import FakeSegment

PIPELINE = to_segment_pipeline("Sales Prediction", "[iphone, apple_watch]")


def setup(make_workspace, table: pa.Table, pipeline: str = PIPELINE) -> Path:
    root = make_workspace({"shop": pipeline})
    write_source(root, table)
    return root


def scores(n: int, bump: frozenset[int] = frozenset()) -> pa.Table:
    return pa.table({
        "user_id": [str(162514333 + i) for i in range(n)],
        "iphone": [round(0.734 + (i in bump) * 0.1, 3) for i in range(n)],
        "apple_watch": [0.812] * n,
    })


def test_row_becomes_exactly_the_track_call(make_workspace) -> None:
    root = setup(make_workspace, scores(1))
    fake = FakeSegment()
    result = run(root, fake)
    assert result.ok, result.node("to_segment").error
    [msg] = fake.delivered()
    assert msg["type"] == "track" and msg["userId"] == "162514333" and msg["event"] == "Sales Prediction"
    assert msg["properties"] == {"iphone": 0.734, "apple_watch": 0.812}
    assert msg["context"]["library"]["name"] == "segloop"
    assert len(msg["messageId"]) < 100
    assert fake.requests[0].body["writeKey"] == "wk-test-123"
    metrics = result.node("to_segment").metrics
    assert metrics["sent"] == 1 and metrics["new"] == 1 and metrics["rejected"] == 0


@pytest.mark.parametrize("n", [1, 99, 100, 101, 2501])
def test_every_row_once_then_nothing_on_rerun(make_workspace, n: int) -> None:
    root = setup(make_workspace, scores(n))
    fake = FakeSegment()
    first = run(root, fake)
    assert first.node("to_segment").metrics["sent"] == n
    ids = fake.delivered_ids()
    assert len(ids) == n and max(ids.values()) == 1
    assert all(len(r.body["batch"]) <= 100 for r in fake.requests)
    second = run(root, fake)
    m = second.node("to_segment").metrics
    assert m["sent"] == 0 and m["unchanged"] == n and "skipped" not in m  # one word for one count
    assert len(fake.delivered()) == n


def test_a_rerun_says_unchanged_once_in_the_cli_show_and_report(make_workspace, tmp_path: Path, monkeypatch) -> None:
    """One word per count: a re-run's rows are `unchanged` everywhere, never also `skipped`."""
    from typer.testing import CliRunner

    from segloop.cli import app
    from segloop.segment.collector.app import serve_in_thread

    with serve_in_thread({"wk-test-123": "crm"}, tmp_path / "collector") as collector:
        root = setup(make_workspace, scores(300), PIPELINE + f"    endpoint: {collector.url}\n")
        monkeypatch.chdir(root)
        monkeypatch.setenv("COLUMNS", "200")
        runner = CliRunner()
        first = runner.invoke(app, ["run", "shop"])
        assert first.exit_code == 0 and "sent=300" in first.output, first.output
        again = runner.invoke(app, ["run", "shop"])
    assert again.exit_code == 0 and "sent=0, unchanged=300" in again.output, again.output
    shown = runner.invoke(app, ["show", "latest"]).output
    assert "unchanged" in shown
    [report] = sorted((root / ".segloop" / "runs").glob("*/report.html"))[-1:]
    html = re.sub(r"<style.*?</style>", "", report.read_text(), flags=re.S)  # not its CSS classes
    assert "unchanged" in html
    for text in (again.output, shown, html):
        assert "skipped" not in text


def test_changed_rows_only_with_new_message_ids(make_workspace) -> None:
    root = setup(make_workspace, scores(300))
    fake = FakeSegment()
    run(root, fake)
    before = set(fake.delivered_ids())
    write_source(root, scores(300, bump=frozenset({5, 50, 250})))
    result = run(root, fake)
    m = result.node("to_segment").metrics
    assert (m["sent"], m["changed"], m["unchanged"]) == (3, 3, 297)
    new = [msg for msg in fake.delivered() if msg["messageId"] not in before]
    assert sorted(msg["userId"] for msg in new) == ["162514338", "162514383", "162514583"]


def test_terminal_failures_are_sent_next_run(make_workspace) -> None:
    root = setup(make_workspace, scores(250))
    fake = FakeSegment(script=[403] * 40)  # the endpoint refuses everything for a while
    first = run(root, fake)
    m = first.node("to_segment").metrics
    assert m["failed"] > 0 and m["sent"] + m["failed"] == 250
    # Nothing is lost, but the run did not do its job: the node (and the run) failed, saying so.
    node = first.node("to_segment")
    assert node.status == "failed" and not first.ok
    assert f"{m['failed']:,} of 250 messages did not reach Segment" in node.error
    assert "http_403" in node.error and "write_key" in node.error and "next run" in node.error
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        rejects = wh.table("shop__to_segment__rejects").to_pyarrow().to_pylist()
    assert len(rejects) == m["failed"] and all(r["status"] == "failed" and r["http_status"] == 403 for r in rejects)
    assert all("wk-test-123" not in (r["payload"] or "") for r in rejects)
    fake.script.clear()
    second = run(root, fake)
    m2 = second.node("to_segment").metrics
    assert m2["retried"] == m["failed"] and m2["sent"] == m["failed"]
    assert second.ok and second.node("to_segment").error is None
    assert set(fake.delivered_ids()) == {msg["messageId"] for msg in fake.delivered()}
    assert len(fake.delivered_ids()) == 250


def test_rows_without_customer_id_are_rejected_not_sent(make_workspace) -> None:
    table = pa.table({"user_id": ["1", None, "", "4"], "iphone": [0.1, 0.2, 0.3, 0.4], "apple_watch": [1.0] * 4})
    root = setup(make_workspace, table)
    fake = FakeSegment()
    result = run(root, fake)
    m = result.node("to_segment").metrics
    assert m["sent"] == 2 and m["rejected"] == 2
    assert sorted(msg["userId"] for msg in fake.delivered()) == ["1", "4"]
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        rejects = wh.table("shop__to_segment__rejects").to_pyarrow().to_pylist()
    assert {r["reason"] for r in rejects} == {"missing_customer_id"} and len(rejects) == 2
    assert "shop__to_segment__rejects" in result.node("to_segment").warnings[0]


def test_identical_rows_without_customer_id_are_each_rejected(make_workspace) -> None:
    """Five rows without an id, four of them identical: five rejects, none counted as duplicates."""
    table = pa.table({"user_id": ["1", None, None, None, None, None],
                      "iphone": [0.1, 0.2, 0.2, 0.2, 0.2, 0.9], "apple_watch": [1.0] * 6})
    root = setup(make_workspace, table)
    result = run(root, FakeSegment())
    m = result.node("to_segment").metrics
    assert (m["sent"], m["missing_key"], m["duplicate_keys"], m["rejected"]) == (1, 5, 0, 5)
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        rejects = wh.table("shop__to_segment__rejects").to_pyarrow().to_pylist()
    assert len(rejects) == 5 and {r["reason"] for r in rejects} == {"missing_customer_id"}


def test_dry_run_sends_nothing_and_shows_payloads(make_workspace) -> None:
    root = setup(make_workspace, scores(10))
    fake = FakeSegment()
    result = run(root, fake, dry_run=True)
    m = result.node("to_segment").metrics
    assert fake.requests == [] and m["to_send"] == 10 and m["sent"] == 0
    assert m["sample_payloads"][0]["properties"] == {"iphone": 0.734, "apple_watch": 0.812}
    preview = Pipeline.load(root / "pipelines" / "shop.yml").preview("to_segment", rows=2)
    assert preview["new"] == 10 and len(preview["payloads"]) == 2
    assert run(root, fake).node("to_segment").metrics["sent"] == 10


def test_identify_with_traits_mapping_and_reset(make_workspace) -> None:
    pipeline = PIPELINE.replace("call: track\n    event: Sales Prediction\n", "call: identify\n").replace(
        "properties: [iphone, apple_watch]", "traits: {iphone: likelihood_iphone}")
    root = setup(make_workspace, scores(3), pipeline)
    fake = FakeSegment()
    run(root, fake)
    assert [m["traits"] for m in fake.delivered()] == [{"likelihood_iphone": 0.734}] * 3
    assert all(m["type"] == "identify" for m in fake.delivered())
    Pipeline.load(root / "pipelines" / "shop.yml").reset("to_segment")
    assert run(root, fake).node("to_segment").metrics["sent"] == 3


def test_missing_write_key_is_a_clear_error(make_workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    root = setup(make_workspace, scores(3))
    monkeypatch.delenv("SEGLOOP_TEST_WRITE_KEY")
    result = run(root, FakeSegment())
    assert "SEGLOOP_TEST_WRITE_KEY is not set" in result.node("to_segment").error


def test_track_without_event_is_a_config_error() -> None:
    from segloop.config import parse_pipeline
    from segloop.errors import ConfigError

    with pytest.raises(ConfigError, match="a track call needs `event:`"):
        parse_pipeline(PIPELINE.replace("    event: Sales Prediction\n", ""), "p.yml")


def test_on_removed_sends_an_event_for_customers_gone(make_workspace) -> None:
    pipeline = PIPELINE + "    on_removed: Left Prediction Audience\n"
    root = setup(make_workspace, scores(5), pipeline)
    fake = FakeSegment()
    run(root, fake)
    write_source(root, scores(5).slice(0, 3))
    result = run(root, fake)
    m = result.node("to_segment").metrics
    assert m["removed"] == 2 and m["removed_sent"] == 2 and m["unchanged"] == 3
    gone = [msg for msg in fake.delivered() if msg["event"] == "Left Prediction Audience"]
    assert sorted(msg["userId"] for msg in gone) == ["162514336", "162514337"]
    assert run(root, fake).node("to_segment").metrics["removed"] == 0


def test_a_failed_change_is_retried_with_the_id_of_the_failed_send(make_workspace) -> None:
    """Segment may have kept a batch whose answer was an error: the retry must dedupe with it."""
    root = setup(make_workspace, scores(300))
    fake = FakeSegment()
    run(root, fake)
    first_ids = set(fake.delivered_ids())
    write_source(root, scores(300, bump=frozenset(range(0, 300, 2))))
    fake.script[:] = [403] * 10  # Segment refuses this run's batches
    failing = run(root, fake)
    assert failing.node("to_segment").metrics["failed"] == 150
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        failed_ids = {r["message_id"] for r in wh.table("shop__to_segment__rejects").to_pyarrow().to_pylist()}
    assert len(failed_ids) == 150 and failed_ids.isdisjoint(first_ids)  # a change is a new message
    fake.script.clear()
    retry = run(root, fake)
    m = retry.node("to_segment").metrics
    assert (m["retried"], m["sent"]) == (150, 150)
    retried = {msg["messageId"]: msg for msg in fake.delivered() if msg["messageId"] not in first_ids}
    assert set(retried) == failed_ids
    assert {msg["properties"]["iphone"] for msg in retried.values()} == {0.834}


def test_a_removal_that_failed_is_sent_next_run(make_workspace) -> None:
    pipeline = PIPELINE + "    on_removed: Left Prediction Audience\n"
    root = setup(make_workspace, scores(3), pipeline)
    fake = FakeSegment()
    run(root, fake)
    write_source(root, scores(3).slice(0, 2))
    fake.script[:] = [403]
    failing = run(root, fake)
    assert failing.node("to_segment").metrics["failed"] == 1
    fake.script.clear()
    again = run(root, fake).node("to_segment").metrics
    assert (again["removed"], again["removed_sent"]) == (1, 1)
    gone = [msg for msg in fake.delivered() if msg["event"] == "Left Prediction Audience"]
    assert [msg["userId"] for msg in gone] == ["162514335"]
    assert gone[0]["messageId"] == fake.requests[-2].body["batch"][0]["messageId"]  # the failed try's id
    assert run(root, fake).node("to_segment").metrics["removed"] == 0


def test_a_run_whose_messages_do_not_arrive_exits_non_zero(make_workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cron job or CI step must not stay green while nothing reaches Segment."""
    from typer.testing import CliRunner

    from segloop.cli import app

    root = setup(make_workspace, scores(20))
    text = PIPELINE + "    endpoint: http://127.0.0.1:9\n    max_retries: 1\n    max_retry_time: 2\n"
    (root / "pipelines" / "shop.yml").write_text(text)  # nothing listens on port 9
    monkeypatch.chdir(root)
    result = CliRunner().invoke(app, ["run", "shop"])
    assert result.exit_code == 1, result.output
    assert "did not reach Segment" in result.output and "endpoint" in result.output


def test_a_wrong_column_names_the_key_that_names_it(make_workspace) -> None:
    text = PIPELINE.replace("customer_id: user_id", "customer_id: userid").replace(
        "properties: [iphone, apple_watch]", "properties: [iphone, apple_wach]")
    root = setup(make_workspace, scores(3), text)
    result = run(root, FakeSegment())
    error = result.node("to_segment").error or ""
    assert "`customer_id: userid`, `properties: apple_wach` not found in input `scores`" in error
    assert "user_id" in error  # the columns there are, to pick from


def test_a_dry_run_says_what_it_would_send_and_is_marked_in_the_run_list(make_workspace, monkeypatch) -> None:
    from typer.testing import CliRunner

    from segloop.cli import app

    root = setup(make_workspace, scores(7))
    monkeypatch.chdir(root)
    monkeypatch.setenv("COLUMNS", "80")
    runner = CliRunner()
    out = runner.invoke(app, ["run", "shop", "--dry-run"])
    assert out.exit_code == 0 and "dry run: would send 7" in out.output, out.output
    listed = runner.invoke(app, ["runs"]).output
    run_ids = [line.split()[1] for line in listed.splitlines() if line.startswith("│ 2")]
    assert len(run_ids) == 1 and len(run_ids[0]) == 29  # the whole id on one line, at 80 columns
    assert "dry run" in listed
