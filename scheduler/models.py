"""The scheduler's tables: schedules, one firing row per (schedule, tick), and the change marker.

- `schedules` holds what operators edit (task, payload, timing, policies) and what beat
  keeps up to date (last tick handled, last job, run count, failure streak).
- `schedule_firings` is the claim table: beat inserts a row for (schedule, scheduled time)
  before it enqueues anything, and the unique constraint lets exactly one insert win, however
  many beats think they lead. The row then records what became of the tick.
- `schedule_changes` is one row whose `version` every edit bumps in its own transaction, so
  beat learns that something changed with one cheap query instead of re-reading every row.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from jobs.db import Base


class OverlapPolicy(StrEnum):
    """What a tick does while the schedule's previous job is still queued or running."""

    ALLOW = "allow"  #: enqueue anyway
    SKIP = "skip"  #: record the tick as skipped, enqueue nothing


class CatchupPolicy(StrEnum):
    """What beat does with ticks it missed while no beat ran (older than the misfire grace)."""

    ONCE = "once"  #: fire once for all of them
    SKIP = "skip"  #: record them as missed, fire nothing


class Outcome(StrEnum):
    """What became of one tick. `enqueued` turns into the job's final status once it ends."""

    CLAIMED = "claimed"  #: taken by a beat; a beat killed right here loses the tick
    ENQUEUED = "enqueued"
    SKIPPED = "skipped"  #: the previous run was still going (overlap policy `skip`)
    MISSED = "missed"  #: beat was down past the grace period (catch-up policy `skip`)
    ERROR = "error"  #: the job was refused (task gone, payload no longer valid)
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD = "dead"
    REVOKED = "revoked"


FAILED_OUTCOMES = frozenset({Outcome.FAILED, Outcome.DEAD, Outcome.ERROR})


class Schedule(Base):
    __tablename__ = "schedules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    task: Mapped[str] = mapped_column(String(200))
    payload: Mapped[dict[str, Any]]
    description: Mapped[str | None] = mapped_column(Text)
    # Timing: exactly one of the three.
    cron: Mapped[str | None] = mapped_column(String(120))
    every: Mapped[int | None] = mapped_column(Integer, doc="seconds")
    run_at: Mapped[datetime | None]
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    queue: Mapped[str | None] = mapped_column(String(100))
    priority: Mapped[int | None]
    overlap: Mapped[str] = mapped_column(String(8), default=OverlapPolicy.ALLOW)
    catchup: Mapped[str] = mapped_column(String(8), default=CatchupPolicy.ONCE)
    #: Ticks at or before this time never fire: set on creation, on enabling and when the
    #: timing changes, so that a disabled or re-timed schedule does not "catch up".
    armed_at: Mapped[datetime]
    # Kept by beat (never bumps the change marker).
    last_slot: Mapped[datetime | None] = mapped_column(doc="scheduled time of the last tick handled")
    last_outcome: Mapped[str | None] = mapped_column(String(16))
    last_error: Mapped[str | None] = mapped_column(Text)
    last_run_at: Mapped[datetime | None] = mapped_column(doc="when beat last enqueued a job")
    last_job_id: Mapped[str | None] = mapped_column(String(64))
    last_success_at: Mapped[datetime | None]
    failure_streak: Mapped[int] = mapped_column(Integer, default=0)
    run_count: Mapped[int] = mapped_column(Integer, default=0)
    next_run_at: Mapped[datetime | None] = mapped_column(index=True)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    __table_args__ = (
        CheckConstraint(
            "(CASE WHEN cron IS NULL THEN 0 ELSE 1 END) + (CASE WHEN every IS NULL THEN 0 ELSE 1 END)"
            " + (CASE WHEN run_at IS NULL THEN 0 ELSE 1 END) = 1",
            name="one_timing",
        ),
        CheckConstraint("every IS NULL OR every >= 1", name="every_positive"),
    )


class ScheduleFiring(Base):
    __tablename__ = "schedule_firings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    schedule_id: Mapped[int] = mapped_column(ForeignKey("schedules.id", ondelete="CASCADE"))
    slot: Mapped[datetime] = mapped_column(doc="the scheduled time this firing is for")
    fired_at: Mapped[datetime]
    fired_by: Mapped[str] = mapped_column(String(255))
    outcome: Mapped[str] = mapped_column(String(16))
    job_id: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    finished_at: Mapped[datetime | None]

    __table_args__ = (
        # The exactly-once guarantee: one row, so one job, per (schedule, scheduled time).
        UniqueConstraint("schedule_id", "slot"),
        Index("ix_schedule_firings_outcome", "outcome"),
        Index("ix_schedule_firings_fired_at", "fired_at"),
    )


class ScheduleChanges(Base):
    """One row (id 1): `version` goes up in the same transaction as any schedule edit."""

    __tablename__ = "schedule_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    version: Mapped[int] = mapped_column(Integer, default=0)
    changed_at: Mapped[datetime | None]
