"""Locks between pipeline runs: one run of a pipeline at a time, and a count of runs in progress.

The pipeline takes its lock here before it runs; the Segment sync asks how many runs share
the process before it changes process-wide DuckDB settings. Both sit below the pipeline
and the sync, so neither imports the other to share them.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

_RUNNING = [0]  # pipeline runs in progress in this process (`segloop serve` runs them in threads)
_RUNNING_LOCK = threading.Lock()


def runs_in_progress() -> int:
    """How many pipeline runs this process is executing now.

    Process-wide warehouse settings (the Segment node's DuckDB memory cap) are only applied
    when a run is alone, so they never constrain another pipeline's queries.
    """
    with _RUNNING_LOCK:
        return _RUNNING[0]


def run_started() -> None:
    """Count one more run in progress (the pipeline calls ``run_finished`` in its ``finally``)."""
    with _RUNNING_LOCK:
        _RUNNING[0] += 1


def run_finished() -> None:
    with _RUNNING_LOCK:
        _RUNNING[0] -= 1


# -- one run of a pipeline at a time -------------------------------------------------------


class PipelineBusy(Exception):
    """The pipeline is already running (raised by ``PipelineLock.acquire(wait=False)``)."""

    def __init__(self, holder: str):
        self.holder = holder
        super().__init__(holder)


class PipelineLock:
    """An exclusive lock per pipeline: a file under `.segloop/locks/`, held with flock.

    flock locks belong to an open file, so two runs conflict whether they come from two
    threads of `segloop serve` or from `segloop run` in another terminal; the operating
    system drops the lock when a process dies, so a killed run never leaves it stuck. The
    file holds the holder's run id, for the message the second trigger gets.
    """

    POLL_SECONDS = 0.2

    def __init__(self, state_dir: Path, pipeline: str):
        self.path = Path(state_dir) / "locks" / f"{pipeline}.lock"
        self._file: Any = None

    def acquire(self, holder: str, wait: bool = True, timeout: float | None = None) -> None:
        """Take the lock; with ``wait=False`` raise PipelineBusy naming who holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 - held open for as long as the lock
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if _try_lock(handle):
                handle.seek(0)
                handle.truncate()
                handle.write(holder)
                handle.flush()
                self._file = handle
                return
            if not wait or (deadline is not None and time.monotonic() >= deadline):
                handle.seek(0)
                current = handle.read().strip() or "another run"
                handle.close()
                raise PipelineBusy(current)
            time.sleep(self.POLL_SECONDS)

    def release(self) -> None:
        if self._file is None:
            return
        handle, self._file = self._file, None
        handle.seek(0)
        handle.truncate()
        _unlock(handle)
        handle.close()


_thread_locks: dict[str, threading.Lock] = {}


def _try_lock(handle: Any) -> bool:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: one process at a time, threads only
        lock = _thread_locks.setdefault(handle.name, threading.Lock())
        return lock.acquire(blocking=False)
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _unlock(handle: Any) -> None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        _thread_locks[handle.name].release()
        return
    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
