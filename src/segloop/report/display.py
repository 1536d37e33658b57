"""How values read on the UI's pages: timestamps, durations and a run's status label.

The run history stores ISO timestamps to the microsecond (``2026-12-05T12:52:36.123456+00:00``)
so runs sort; people read ``2026-12-05 12:52 UTC`` and "3 min ago". A dry run that went
well is labelled ``dry run``, as `segloop runs` labels it, never ``success``: nothing was sent.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

DRY_RUN = "dry run"


def parse_time(value: str | datetime | None) -> datetime | None:
    """An aware UTC datetime from a stored ISO string (naive strings are taken as UTC)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def when(value: str | datetime | None, seconds: bool = False) -> str:
    """``2026-12-05 12:52 UTC`` (``12:52:36`` with ``seconds``); empty for no time."""
    moment = parse_time(value)
    if moment is None:
        return "" if value is None else str(value)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC" if seconds else "%Y-%m-%d %H:%M UTC")


def ago(value: str | datetime | None, now: datetime | None = None) -> str:
    """``just now``, ``5 min ago``, ``3 h ago``, ``2 days ago`` (``in 4 h`` for a future time)."""
    moment = parse_time(value)
    if moment is None:
        return ""
    delta = ((now or datetime.now(UTC)) - moment).total_seconds()
    future = delta < 0
    delta = abs(delta)
    if delta < 45:
        return "just now" if not future else "in less than a minute"
    if delta < 3600:
        text = f"{round(delta / 60)} min"
    elif delta < 36 * 3600:
        text = f"{round(delta / 3600)} h"
    else:
        days = round(delta / 86400)
        text = f"{days} day" + ("s" if days != 1 else "")
    return f"in {text}" if future else f"{text} ago"


def duration(seconds: float | None) -> str:
    """``0.4 s``, ``12.3 s``, ``2 min 05 s``, ``1 h 02 min``."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def run_label(run: Any) -> str:
    """What a run's status reads as: ``dry run`` for a dry run that went well, as the CLI says."""
    status = str(run.status)
    if getattr(run, "dry_run", False):
        return DRY_RUN if status == "success" else f"{status} (dry run)"
    return status


def run_css(run: Any) -> str:
    """The CSS class of a run's status (a dry run has its own colour)."""
    label = run_label(run)
    return "dry" if label == DRY_RUN else str(run.status)
