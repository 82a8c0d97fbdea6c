"""Housekeeping tasks run by the scheduler: pruning old job records."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from jobs.db import utcnow
from tasks.registry import job
from worker.base import ConveyorTask


class PruneInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    older_than_days: int | None = Field(
        default=None, ge=1, description="defaults to CONVEYOR_JOB_RETENTION_DAYS"
    )


@job("maintenance.prune_jobs", input=PruneInput)
def prune_jobs(task: ConveyorTask, data: PruneInput) -> dict[str, Any]:
    """Delete finished job records older than the retention period."""
    days = data.older_than_days or task.settings.job_retention_days
    deleted = task.store.prune(utcnow() - timedelta(days=days))
    return {"deleted": deleted, "older_than_days": days}
