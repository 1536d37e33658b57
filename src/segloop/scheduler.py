"""The scheduler: fires pipeline runs at their cron times, in background threads.

`segloop serve` starts it beside the UI (``start_scheduler``), but nothing here needs the
UI: ``Scheduler`` decides what is due, ``BackgroundRuns`` runs pipelines in threads through
the Pipeline facade, and ``scheduler_loop`` re-reads the workspace's pipeline files on every
turn so edited schedules apply without a restart. The cron parser and the ``schedule:``
setting are in schedule.py, a pure module the config imports.

The scheduler takes its clock and its sleep as arguments, so a test drives it with a fake
clock instead of waiting for 03:00.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from segloop.config import Workspace, duplicate_name_message
from segloop.schedule import ScheduleConfig

log = logging.getLogger("segloop")

# -- the scheduler --------------------------------------------------------------------------


@dataclass
class ScheduledJob:
    """One scheduled pipeline: its schedule and when it next runs."""

    name: str
    schedule: ScheduleConfig
    next_run: datetime
    last_fired: datetime | None = None


Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)


@dataclass
class Scheduler:
    """Fires ``trigger(pipeline_name)`` when a pipeline's next cron time has come.

    Missed times (the process was down, or a run took longer than the interval) are not
    replayed: a job fires once and its next time is computed from *now*, as cron does.
    ``trigger`` decides what happens when the pipeline is still running (the Pipeline
    facade skips and records it).
    """

    trigger: Callable[[str], Any]
    clock: Clock = system_clock
    sleep: Callable[[float], Any] | None = None
    max_sleep: float = 30.0
    jobs: dict[str, ScheduledJob] = field(default_factory=dict)

    def set_schedules(self, schedules: dict[str, ScheduleConfig]) -> None:
        """Replace the schedules (pipeline name -> schedule), keeping unchanged jobs' next times."""
        now = self.clock()
        jobs: dict[str, ScheduledJob] = {}
        for name, schedule in schedules.items():
            old = self.jobs.get(name)
            if old is not None and old.schedule == schedule:
                jobs[name] = old
            else:
                jobs[name] = ScheduledJob(name, schedule, schedule.next_after(now))
        self.jobs = jobs

    def due(self, now: datetime | None = None) -> list[str]:
        now = now or self.clock()
        return sorted(name for name, job in self.jobs.items() if job.next_run <= now)

    def run_pending(self) -> list[str]:
        """Fire every due job once; returns the names fired."""
        now = self.clock()
        fired = []
        for name in self.due(now):
            job = self.jobs[name]
            job.last_fired = now
            job.next_run = job.schedule.next_after(now)
            fired.append(name)
            try:
                self.trigger(name)
            except Exception:  # a failing trigger must not stop the other schedules
                log.exception("scheduled run of pipeline `%s` could not start", name)
        return fired

    def seconds_until_next(self) -> float:
        if not self.jobs:
            return self.max_sleep
        soonest = min(job.next_run for job in self.jobs.values())
        wait = (soonest - self.clock()).total_seconds()
        return max(0.0, min(self.max_sleep, wait))

    def serve(self, stop: threading.Event) -> None:
        """Loop until ``stop`` is set: fire due jobs, then sleep until the next one."""
        while not stop.is_set():
            self.run_pending()
            wait = self.seconds_until_next()
            if self.sleep is not None:
                self.sleep(wait)
            else:
                stop.wait(max(wait, 0.2))


# -- runs in background threads (the UI's "Run now" and the scheduler) ---------------------


class BackgroundRuns:
    """Starts pipeline runs in threads through the Pipeline facade.

    A second trigger of a pipeline that is still running is not refused here: the run
    itself finds the pipeline's lock taken, records itself as skipped (with its trigger)
    and returns, so the history shows every trigger.
    """

    def __init__(self, workspace: Workspace):
        self.workspace = workspace
        self._threads: dict[str, list[threading.Thread]] = {}
        self._lock = threading.Lock()
        self.errors: dict[str, str] = {}
        self.results: dict[str, Any] = {}  # pipeline -> last RunResult

    def start(self, pipeline: str, trigger: str = "ui") -> threading.Thread:
        thread = threading.Thread(target=self._run, args=(pipeline, trigger),
                                  name=f"segloop-run-{pipeline}", daemon=True)
        with self._lock:
            self._threads.setdefault(pipeline, []).append(thread)
        thread.start()
        return thread

    def _run(self, name: str, trigger: str) -> None:
        from segloop.errors import SegloopError
        from segloop.pipeline import Pipeline

        try:
            # By name only (never a path relative to the server's folder).
            file = self.workspace.find_pipeline(name)
            result = Pipeline.load(file, self.workspace).run(trigger=trigger, on_busy="skip")
        except SegloopError as exc:  # recorded in history when the run started; logged anyway
            self.errors[name] = str(exc)
            log.error("%s run of pipeline `%s` failed: %s", trigger, name, exc)
        except Exception:
            self.errors[name] = "unexpected error; see the server log"
            log.exception("%s run of pipeline `%s` crashed", trigger, name)
        else:
            self.results[name] = result
            self.errors.pop(name, None)
        finally:
            with self._lock:
                threads = self._threads.get(name, [])
                current = threading.current_thread()
                self._threads[name] = [t for t in threads if t is not current]

    def active(self) -> list[str]:
        with self._lock:
            return sorted(name for name, threads in self._threads.items() if threads)

    def join(self, timeout: float | None = None) -> None:
        with self._lock:
            threads = [t for group in self._threads.values() for t in group]
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in threads:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(left)


_warned: set[str] = set()


def workspace_schedules(workspace: Workspace) -> dict[str, Any]:
    """Pipeline name -> schedule, for every pipeline file that has one (bad files are logged).

    A name used by two files is skipped (a run of it would be refused as ambiguous).
    """
    out: dict[str, Any] = {}
    entries = workspace.scan_pipelines()
    for entry in entries:
        problem = None
        if entry.config is None:
            problem = f"{entry.file.name}: {entry.error}"
        else:
            shared = [e.file for e in entries if e.name == entry.config.name]
            if len(shared) > 1:
                problem = duplicate_name_message(entry.config.name, shared)
        if problem is not None:
            if problem not in _warned:  # the loop re-reads files every few seconds: say it once
                _warned.add(problem)
                log.warning("scheduler: skipping %s", problem)
            continue
        assert entry.config is not None
        if entry.config.schedule is not None:
            out[entry.config.name] = entry.config.schedule
    return out


def start_scheduler(workspace: Workspace, runs: BackgroundRuns, stop: threading.Event) -> Scheduler:
    """Schedule the workspace's pipelines in a daemon thread until ``stop`` is set; runs go
    through ``runs`` with trigger ``schedule``."""
    scheduler = Scheduler(trigger=lambda name: runs.start(name, trigger="schedule"))
    scheduler.set_schedules(workspace_schedules(workspace))
    threading.Thread(target=scheduler_loop, args=(scheduler, workspace, stop),
                     name="segloop-scheduler", daemon=True).start()
    return scheduler


def scheduler_loop(scheduler: Scheduler, workspace: Workspace, stop: threading.Event) -> None:
    """Fire due runs; re-read pipeline files every loop so edited schedules apply without a restart."""
    while not stop.is_set():
        try:
            scheduler.set_schedules(workspace_schedules(workspace))
            scheduler.run_pending()
        except Exception:  # the scheduler thread must outlive one bad iteration
            log.exception("scheduler iteration failed")
        stop.wait(max(scheduler.seconds_until_next(), 0.5))
