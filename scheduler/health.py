"""Is a schedule healthy? The warnings `conveyor schedule list` shows next to a schedule."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from jobs.db import utcnow
from scheduler.models import Outcome, Schedule

if TYPE_CHECKING:
    from config import Settings
    from scheduler.timing import Timing


def overdue_since(row: Schedule, timing: Timing, settings: Settings, now: datetime) -> datetime | None:
    """The oldest tick that should have fired by now and did not, if beat is that late.

    Beat is given the misfire grace plus a leader hand-over (lock expiry) and a reload before
    a tick counts as overdue: past that, no beat is running, or none can reach Redis or the
    database.
    """
    if not row.enabled:
        return None
    after = max(t for t in (row.armed_at, row.last_slot) if t is not None)
    first = timing.next_after(after)
    slack = timedelta(seconds=settings.schedule_misfire_grace + settings.beat_lock_ttl
                      + 2 * settings.beat_sync_interval)
    if first is not None and first < now - slack:
        return first
    return None


def flags(row: Schedule, timing: Timing, job_status: str | None, settings: Settings,
          now: datetime | None = None) -> list[str]:
    """Short warnings: keeps failing, stopped happening, refused, skipped, missed."""
    now = now or utcnow()
    out = []
    if row.failure_streak >= settings.schedule_failure_alert:
        out.append(f"failing: last {row.failure_streak} runs failed")
    late = overdue_since(row, timing, settings, now)
    if late is not None:
        due = late.isoformat(timespec="seconds")
        out.append(f"overdue: the run due {due} did not happen (is beat running?)")
    if row.last_outcome == Outcome.ERROR:
        out.append(f"refused: {(row.last_error or '').splitlines()[0][:120]}")
    elif row.last_outcome == Outcome.SKIPPED:
        out.append(f"skipping: the previous run ({job_status or 'unknown'}) is still going")
    elif row.last_outcome == Outcome.MISSED:
        out.append("missed: beat was down at the last tick (catch-up: skip)")
    return out
