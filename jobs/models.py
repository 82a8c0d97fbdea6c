"""The job store's tables: one `jobs` row per job ever enqueued, one `job_attempts` row per run."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from jobs.db import Base


class JobStatus(StrEnum):
    QUEUED = "queued"
    STARTED = "started"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD = "dead"
    REVOKED = "revoked"
    #: Enqueued, but its message vanished from Redis (wiped, failed over) and it was not
    #: safe to publish again; see `maintenance.recover_lost`.
    LOST = "lost"

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.DEAD, JobStatus.REVOKED,
                      JobStatus.LOST})


class AttemptReason(StrEnum):
    FIRST_RUN = "first_run"
    RETRY = "retry"
    REDELIVERY = "redelivery"
    MANUAL_RETRY = "manual_retry"


class AttemptOutcome(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    RETRIED = "retried"
    FAILED = "failed"
    DEAD = "dead"
    REVOKED = "revoked"
    LOST = "lost"


# Records about one job come from several processes (the producer, then one pool child per
# attempt) in batches that may land in any order. Each carries an order: a record only
# overrides fields of a record with a lower order, so the final row is the same whatever
# the arrival order. An attempt outranks every state of the attempts before it; a
# cancellation outranks everything.
_STATE_RANK = {
    JobStatus.QUEUED: 0,
    JobStatus.STARTED: 1,
    JobStatus.RETRYING: 2,
    JobStatus.SUCCEEDED: 3,
    JobStatus.FAILED: 3,
    JobStatus.DEAD: 3,
    JobStatus.LOST: 3,
}
REVOKED_ORDER = 1 << 30


def state_order(status: JobStatus, attempt: int) -> int:
    if status is JobStatus.REVOKED:
        return REVOKED_ORDER
    return attempt * 10 + _STATE_RANK[status]


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    task: Mapped[str | None] = mapped_column(String(200), index=True)
    queue: Mapped[str | None] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED)
    state_order: Mapped[int] = mapped_column(Integer, default=0)
    source: Mapped[str | None] = mapped_column(String(200))
    args: Mapped[list[Any] | None] = mapped_column(type_=Base.type_annotation_map[dict[str, Any]])
    kwargs: Mapped[dict[str, Any] | None]
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    priority: Mapped[int | None]
    eta: Mapped[datetime | None]
    parent_id: Mapped[str | None] = mapped_column(String(64))
    root_id: Mapped[str | None] = mapped_column(String(64))
    retry_of: Mapped[str | None] = mapped_column(String(64))
    progress: Mapped[dict[str, Any] | None]
    result: Mapped[Any | None] = mapped_column(type_=Base.type_annotation_map[dict[str, Any]])
    error_type: Mapped[str | None] = mapped_column(String(200))
    error_message: Mapped[str | None] = mapped_column(Text)
    traceback: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime | None] = mapped_column(index=True)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    runtime: Mapped[float | None]
    worker: Mapped[str | None] = mapped_column(String(255))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(index=True)
    #: When the message went to the broker; NULL while a transactional enqueue waits for its
    #: commit, or while a long-delayed job is held here until `publish_after`.
    published_at: Mapped[datetime | None]
    publish_after: Mapped[datetime | None]
    #: The task's sensitive payload fields, encrypted (`kwargs` holds them redacted).
    secrets: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ix_jobs_status_created_at", "status", "created_at"),
        Index("ix_jobs_unpublished", "publish_after", postgresql_where=text("published_at IS NULL"),
              sqlite_where=text("published_at IS NULL")),
    )


class JobAttempt(Base):
    __tablename__ = "job_attempts"

    # No foreign key: an attempt's batch may land before the producer's batch with the job.
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(64))
    number: Mapped[int]
    reason: Mapped[str | None] = mapped_column(String(16))
    worker: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    outcome: Mapped[str | None] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (UniqueConstraint("job_id", "number"),)
