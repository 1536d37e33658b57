"""Cron schedules with timezones, the scheduler on a fake clock, and one run at a time."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from segloop.config import Workspace, parse_pipeline
from segloop.errors import ConfigErrors
from segloop.locks import PipelineBusy, PipelineLock
from segloop.pipeline import Pipeline
from segloop.schedule import Cron, CronError, ScheduleConfig
from segloop.scheduler import BackgroundRuns, Scheduler
from segloop.store import RunStore
from tests.web.helpers import RFM_PIPELINE, copy_workspace, demo_template  # noqa: F401

PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def nexts(expr: str, start: datetime, tz: ZoneInfo | None = None, n: int = 4) -> list[datetime]:
    cron, out, t = Cron.parse(expr), [], start
    for _ in range(n):
        t = cron.next_after(t, tz or ZoneInfo("UTC"))
        out.append(t)
    return out


# -- parsing and next times ------------------------------------------------------------------


def test_daily_at_three_in_paris_follows_daylight_saving() -> None:
    winter = ScheduleConfig.model_validate({"cron": "0 3 * * *", "timezone": "Europe/Paris"})
    assert winter.next_after(utc(2026, 1, 10, 12, 0)) == utc(2026, 1, 11, 2, 0)  # CET = UTC+1
    assert winter.next_after(utc(2026, 7, 10, 12, 0)) == utc(2026, 7, 11, 1, 0)  # CEST = UTC+2
    # the short string form is UTC
    assert ScheduleConfig.model_validate("0 3 * * *").next_after(utc(2026, 1, 10, 12, 0)) == utc(2026, 1, 11, 3, 0)


def test_time_in_the_spring_gap_is_skipped_and_autumn_repeat_runs_once() -> None:
    # 2026-03-08: New York clocks jump 02:00 -> 03:00; 02:30 does not exist that day.
    runs = nexts("30 2 * * *", utc(2026, 3, 7, 12, 0), NEW_YORK, 2)
    assert [r.astimezone(NEW_YORK).day for r in runs] == [9, 10]
    # 2026-11-01: 01:30 happens twice; one run, at the first (EDT, UTC-4).
    runs = nexts("30 1 * * *", utc(2026, 10, 31, 12, 0), NEW_YORK, 2)
    assert runs[0] == utc(2026, 11, 1, 5, 30)
    assert runs[1].astimezone(NEW_YORK).day == 2


@pytest.mark.parametrize(
    ("expr", "start", "expected"),
    [
        ("*/15 * * * *", utc(2026, 1, 1, 10, 7), [utc(2026, 1, 1, 10, 15), utc(2026, 1, 1, 10, 30),
                                                  utc(2026, 1, 1, 10, 45), utc(2026, 1, 1, 11, 0)]),
        ("0 9 * * mon-fri", utc(2026, 1, 2, 10, 0), [utc(2026, 1, 5, 9), utc(2026, 1, 6, 9),
                                                     utc(2026, 1, 7, 9), utc(2026, 1, 8, 9)]),  # Fri -> Mon
        ("0 0 1,15 * *", utc(2026, 1, 1, 0, 0), [utc(2026, 1, 15), utc(2026, 2, 1), utc(2026, 2, 15), utc(2026, 3, 1)]),
        ("@hourly", utc(2026, 1, 1, 23, 59), [utc(2026, 1, 2, 0), utc(2026, 1, 2, 1), utc(2026, 1, 2, 2), utc(2026, 1, 2, 3)]),
        ("0 12 29 feb *", utc(2026, 1, 1), [utc(2028, 2, 29, 12), utc(2032, 2, 29, 12), utc(2036, 2, 29, 12),
                                           utc(2040, 2, 29, 12)]),
        # day of month OR day of week when both are restricted (Vixie cron): the 13th or Fridays
        ("0 0 13 * 5", utc(2026, 2, 1), [utc(2026, 2, 6), utc(2026, 2, 13), utc(2026, 2, 20), utc(2026, 2, 27)]),
        ("0 0 * * 7", utc(2026, 1, 1), [utc(2026, 1, 4), utc(2026, 1, 11), utc(2026, 1, 18), utc(2026, 1, 25)]),
    ],
)
def test_next_times(expr: str, start: datetime, expected: list[datetime]) -> None:
    assert nexts(expr, start) == expected


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("0 3 * *", "has 4 fields"),
        ("61 * * * *", "minute: 61 is outside 0-59"),
        ("0 25 * * *", "hour: 25 is outside 0-23"),
        ("0 0 * foo *", "month: `foo` is not a number"),
        ("*/0 * * * *", "step `0` must be a positive number"),
        ("0 0 10-2 * *", "goes backwards"),
        ("0 0 31 2 *", "never runs"),
    ],
)
def test_bad_cron_is_explained(expr: str, message: str) -> None:
    with pytest.raises(CronError, match=message):
        Cron.parse(expr).next_after(utc(2026, 1, 1), ZoneInfo("UTC"))


def test_schedule_in_a_pipeline_file_is_validated_with_its_line() -> None:
    good = parse_pipeline(RFM_PIPELINE + 'schedule: {cron: "0 3 * * *", timezone: Europe/Paris}\n')
    assert good.schedule == ScheduleConfig(cron="0 3 * * *", timezone="Europe/Paris")
    assert parse_pipeline(RFM_PIPELINE + 'schedule: "@daily"\n').schedule == ScheduleConfig(cron="@daily")
    with pytest.raises(ConfigErrors) as bad:
        parse_pipeline(RFM_PIPELINE + "schedule:\n  cron: 0 3 * *\n  timezone: Mars/Olympus\n", "p.yml")
    text = str(bad.value)
    assert "p.yml:14:" in text and "has 4 fields" in text
    assert "p.yml:15:" in text and "unknown timezone `Mars/Olympus`" in text


# -- the scheduler on a fake clock -------------------------------------------------------------


class FakeClock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def test_scheduler_fires_at_the_cron_time_once_and_does_not_replay_missed_times() -> None:
    clock = FakeClock(utc(2026, 1, 10, 1, 0))
    fired: list[tuple[str, datetime]] = []
    scheduler = Scheduler(trigger=lambda name: fired.append((name, clock())), clock=clock)
    scheduler.set_schedules({
        "nightly": ScheduleConfig(cron="0 3 * * *", timezone="Europe/Paris"),
        "quarter": ScheduleConfig(cron="*/15 * * * *"),
    })
    assert scheduler.run_pending() == []
    assert scheduler.seconds_until_next() == 30.0  # capped; the next job is 15 minutes away
    clock.advance(minutes=15)
    assert scheduler.run_pending() == ["quarter"]
    assert scheduler.run_pending() == []  # not twice for the same time
    clock.advance(minutes=45)  # 02:00 UTC = 03:00 Paris; three quarter-hours were missed
    assert scheduler.run_pending() == ["nightly", "quarter"]
    assert [name for name, _ in fired] == ["quarter", "nightly", "quarter"]
    assert scheduler.jobs["nightly"].next_run == utc(2026, 1, 11, 2, 0)
    # an unchanged schedule keeps its next time; a changed one is recomputed
    scheduler.set_schedules({"nightly": ScheduleConfig(cron="0 3 * * *", timezone="Europe/Paris")})
    assert list(scheduler.jobs) == ["nightly"] and scheduler.jobs["nightly"].next_run == utc(2026, 1, 11, 2, 0)


def test_a_failing_trigger_does_not_stop_other_schedules() -> None:
    clock = FakeClock(utc(2026, 1, 1, 0, 0))
    seen: list[str] = []

    def trigger(name: str) -> None:
        seen.append(name)
        if name == "a":
            raise RuntimeError("boom")

    scheduler = Scheduler(trigger=trigger, clock=clock)
    scheduler.set_schedules({"a": ScheduleConfig(cron="* * * * *"), "b": ScheduleConfig(cron="* * * * *")})
    clock.advance(minutes=1)
    assert scheduler.run_pending() == ["a", "b"] and seen == ["a", "b"]


def test_scheduled_run_lands_in_history_with_trigger_schedule(demo_template: Path, tmp_path: Path) -> None:  # noqa: F811
    text = RFM_PIPELINE + 'schedule: {cron: "0 3 * * *", timezone: Europe/Paris}\n'
    root = copy_workspace(demo_template, tmp_path / "ws", {"shop": text})
    workspace = Workspace.load(root)
    runs = BackgroundRuns(workspace)
    clock = FakeClock(utc(2026, 1, 10, 1, 59))
    scheduler = Scheduler(trigger=lambda name: runs.start(name, "schedule"), clock=clock)
    scheduler.set_schedules({"shop": Pipeline.load("shop", workspace).config.schedule})  # type: ignore[dict-item]
    assert scheduler.run_pending() == []
    clock.advance(minutes=1)
    assert scheduler.run_pending() == ["shop"]
    runs.join(timeout=60)
    store = RunStore(workspace.state_dir / "state.db")
    (run,) = store.list_runs("shop")
    store.close()
    assert (run.trigger, run.status) == ("schedule", "success")


# -- one run at a time ---------------------------------------------------------------------------


def test_lock_names_the_holder_and_frees_on_release(tmp_path: Path) -> None:
    first, second = PipelineLock(tmp_path, "p"), PipelineLock(tmp_path, "p")
    first.acquire("run-1")
    with pytest.raises(PipelineBusy) as busy:
        second.acquire("run-2", wait=False)
    assert busy.value.holder == "run-1"
    PipelineLock(tmp_path, "other").acquire("run-3", wait=False)  # other pipelines are free
    first.release()
    second.acquire("run-2", wait=False)
    second.release()


def test_second_trigger_is_skipped_and_recorded_or_waits(demo_template: Path, tmp_path: Path) -> None:  # noqa: F811
    root = copy_workspace(demo_template, tmp_path / "ws", {"shop": RFM_PIPELINE})
    pipeline = Pipeline.load("shop", Workspace.load(root))
    held = PipelineLock(pipeline.workspace.state_dir, "shop")
    held.acquire("20260101T000000-abcdef")
    skipped = pipeline.run(trigger="schedule", on_busy="skip")
    assert skipped.status == "skipped" and "already running (run 20260101T000000-abcdef)" in (skipped.skipped or "")
    store = pipeline.store()
    record = store.get_run(skipped.run_id)
    store.close()
    assert (record.status, record.trigger) == ("skipped", "schedule")
    assert "this schedule trigger was skipped" in (record.error or "")
    # with on_busy="wait" the run starts once the holder is done
    releaser = threading.Timer(0.6, held.release)
    started = time.monotonic()
    releaser.start()
    waited = pipeline.run(on_busy="wait")
    assert waited.ok and time.monotonic() - started >= 0.6


def test_serve_scheduler_loop_rereads_files_and_starts_due_runs(demo_template: Path, tmp_path: Path) -> None:  # noqa: F811
    from segloop.scheduler import scheduler_loop

    root = copy_workspace(demo_template, tmp_path / "ws", {"shop": RFM_PIPELINE})
    workspace = Workspace.load(root)
    runs = BackgroundRuns(workspace)
    clock = FakeClock(utc(2026, 1, 10, 1, 59, 30))
    scheduler = Scheduler(trigger=lambda name: runs.start(name, "schedule"), clock=clock, max_sleep=0.1)
    stop = threading.Event()
    loop = threading.Thread(target=scheduler_loop, args=(scheduler, workspace, stop), daemon=True)
    loop.start()
    try:
        time.sleep(0.3)
        assert scheduler.jobs == {}  # no pipeline has a schedule yet
        # a schedule added to the file while serving is picked up without a restart
        (root / "pipelines" / "shop.yml").write_text(RFM_PIPELINE + 'schedule: "0 2 * * *"\n')
        deadline = time.monotonic() + 10
        while "shop" not in scheduler.jobs and time.monotonic() < deadline:
            time.sleep(0.05)
        assert scheduler.jobs["shop"].next_run == utc(2026, 1, 10, 2, 0)
        clock.advance(seconds=30)
        deadline = time.monotonic() + 10
        while scheduler.jobs["shop"].last_fired is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        loop.join(5)
        runs.join(60)
    store = RunStore(workspace.state_dir / "state.db")
    triggers = [run.trigger for run in store.list_runs("shop")]
    store.close()
    assert triggers == ["schedule"]


def test_the_scheduler_runs_without_the_web_ui() -> None:
    """Schedules need no UI: importing the scheduler loads neither segloop.web nor Starlette."""
    code = (
        "import sys, segloop.scheduler\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('segloop.web', 'starlette', 'uvicorn')))\n"
        "print(','.join(loaded))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == ""
