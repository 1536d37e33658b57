"""The overview's verdict per pipeline, from run histories shaped as the real nodes record them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from segloop.report.display import ago, duration, run_label, when
from segloop.schedule import ScheduleConfig
from segloop.store import NodeRunRecord, RunRecord
from segloop.web import trends

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def run(i: int, status: str = "success", dry: bool = False, error: str | None = None, auc: float = 0.8,
        baseline: float = 0.7, sent: int = 100, rejected: int = 0, failed: int = 0, warnings: list[str] | None = None,
        hours_ago: float | None = None) -> RunRecord:
    start = NOW - timedelta(hours=hours_ago if hours_ago is not None else 100 - i)
    model: dict[str, Any] = {"auc": auc, "baseline_auc": baseline, "log_loss": 0.5}
    if warnings:
        model["warnings"] = warnings
    send: dict[str, Any] = {"rows": 120, "to_send": 120, "sent": 0 if dry else sent}
    if dry:
        send["dry_run"] = True
    else:
        send.update(rejected=rejected, failed=failed)
    return RunRecord(
        id=f"run{i:02d}", pipeline="shop", file=None, warehouse="default", status=status, dry_run=dry,
        started_at=start.isoformat(), finished_at=(start + timedelta(seconds=30 + i)).isoformat(), error=error,
        nodes=[NodeRunRecord("likely_buyers", "propensity", "success", 200, 4.0, None, model),
               NodeRunRecord("to_segment", "segment", "failed" if failed else "success", 120, 1.0, None, send)],
    )


def test_good_runs_are_healthy() -> None:
    health = trends.pipeline_health([run(1), run(2), run(3)], now=NOW)
    assert health.state == "healthy" and health.reasons == []
    assert health.last is not None and health.last.id == "run03" and health.sent == 100


def test_a_failed_last_run_is_failing_with_its_error_and_streak() -> None:
    runs = [run(1), run(2, "failed", error="node `orders`: table nope does not exist\ndetails"),
            run(3, "failed", error="node `orders`: table nope does not exist\ndetails")]
    health = trends.pipeline_health(runs, now=NOW)
    assert health.state == "failing"
    assert health.reasons[0] == "the last 2 runs failed: node `orders`: table nope does not exist"
    assert health.last_success is not None and health.last_success.id == "run01"


def test_skipped_and_running_runs_do_not_hide_the_last_real_outcome() -> None:
    busy = run(4, "skipped", error="pipeline `shop` was already running")
    going = run(5, "running")
    health = trends.pipeline_health([run(1), run(2, "failed", error="boom"), busy, going], now=NOW)
    assert health.state == "failing" and health.last is not None and health.last.id == "run02"


def test_rejected_or_undelivered_messages_need_attention() -> None:
    health = trends.pipeline_health([run(1), run(2, rejected=7)], now=NOW)
    assert health.state == "needs attention"
    assert health.reasons == ["7 rows rejected (not sent) in the last run that sent; see the Segment node's rejected rows"]
    # A later dry run does not wipe out what the last real send did.
    assert trends.pipeline_health([run(1), run(2, rejected=7), run(3, dry=True)], now=NOW).state == "needs attention"


def test_a_model_no_better_than_its_baseline_or_much_worse_than_before_needs_attention() -> None:
    below = trends.pipeline_health([run(1), run(2, auc=0.69, baseline=0.7)], now=NOW)
    assert below.state == "needs attention"
    assert below.reasons == ["`likely_buyers`: AUC 0.690 is no better than its baseline (0.700)"]
    fell = trends.pipeline_health([run(1, auc=0.9, baseline=0.6), run(2, auc=0.75, baseline=0.6)], now=NOW)
    assert fell.reasons == ["`likely_buyers`: AUC fell from 0.900 to 0.750 since the run before"]
    small = trends.pipeline_health([run(1, auc=0.9, baseline=0.6), run(2, auc=0.85, baseline=0.6)], now=NOW)
    assert small.state == "healthy"  # 5.6% lower: noise between runs, not a drop


def test_warnings_of_the_last_run_need_attention() -> None:
    health = trends.pipeline_health([run(1, warnings=["only 71 positive customers", "second"])], now=NOW)
    assert health.reasons == ["warning in the last run: node `likely_buyers`: only 71 positive customers (and 1 more)"]


def test_an_overdue_schedule_needs_attention() -> None:
    daily = ScheduleConfig(cron="0 3 * * *")
    assert trends.pipeline_health([run(1, hours_ago=8)], daily, now=NOW).state == "healthy"
    late = trends.pipeline_health([run(1, hours_ago=40)], daily, now=NOW)
    assert late.state == "needs attention"
    assert late.reasons[0].startswith("no run since 2026-12-03 20:00 UTC although the schedule (0 3 * * * (UTC)) was due")


def test_never_run_and_the_headline() -> None:
    assert trends.pipeline_health([], now=NOW).state == "never run"
    assert trends.summary(["healthy", "healthy"]) == ("All 2 pipelines healthy.", "ok")
    assert trends.summary(["healthy"]) == ("The pipeline is healthy.", "ok")
    assert trends.summary(["failing", "needs attention", "needs attention", "healthy", "never run"]) == (
        "5 pipelines: 1 failing, 2 need attention, 1 never run; 1 healthy.", "bad")
    assert trends.summary(["file error", "healthy"])[1] == "bad"


def test_values_read_as_people_read_them() -> None:
    assert when("2026-12-05T12:52:36.123456+00:00") == "2026-12-05 12:52 UTC"
    assert when("2026-12-05T13:52:36+01:00", seconds=True) == "2026-12-05 12:52:36 UTC"
    assert ago("2026-12-05T11:55:00+00:00", NOW) == "5 min ago"
    assert ago("2026-12-03T12:00:00+00:00", NOW) == "2 days ago"
    assert ago("2026-12-05T15:00:00+00:00", NOW) == "in 3 h"
    assert [duration(s) for s in (0.42, 65, 3725)] == ["0.4 s", "1 min 05 s", "1 h 02 min"]
    assert run_label(run(1, dry=True)) == "dry run"
    assert run_label(run(1, "failed", dry=True)) == "failed (dry run)"
    assert run_label(run(1)) == "success"
