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


class RecoverInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    older_than_seconds: float | None = Field(
        default=None, gt=0, description="defaults to CONVEYOR_LOST_AFTER"
    )


@job("maintenance.recover_lost", input=RecoverInput)
def recover_lost(task: ConveyorTask, data: RecoverInput) -> dict[str, Any]:
    """Find jobs whose message vanished from Redis; publish them again if safe, else mark them lost."""
    from jobs.client import Client
    from tasks.registry import REGISTRY
    from worker.health import message_ids

    older = data.older_than_seconds or task.settings.lost_after
    store = task.store
    stale = store.stale_queued(older)
    if not stale:
        return {"checked": 0, "republished": [], "lost": []}
    present = message_ids(task.settings.broker_url, sentinel_master=task.settings.redis_sentinel_master)
    client = Client(task.app)
    republished, lost = [], []
    for row in stale:
        if row.id in present:
            continue
        if store.get(row.id).status != "queued":  # it started meanwhile
            continue
        spec = REGISTRY.get(row.task or "")
        why = "its message vanished from the broker"
        try:
            payload_ok = spec is not None and all(
                v != "***" for k, v in client.payload_of(row).items() if k in spec.sensitive)
        except Exception:  # noqa: BLE001 - secrets unreadable
            payload_ok = False
        if spec is not None and spec.safe_to_repeat and payload_ok:
            client.publish_recorded(row, again=True)
            republished.append(row.id)
        elif store.mark_lost(row.id, why + ("" if spec and spec.safe_to_repeat else
                                            "; not safe to repeat, so not published again")):
            lost.append(row.id)
    return {"checked": len(stale), "republished": republished, "lost": lost}
