"""Conveyor's client API and job store, shared by the worker, the scheduler, the CLI and apps.

    from jobs import enqueue
    job = enqueue("system.ping", {"message": "hi"})
    print(job.wait(timeout=10))
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from jobs.client import Attempt, Client, Job, default_client
from jobs.errors import (
    BrokerUnavailable,
    ConveyorError,
    InvalidInput,
    InvalidTransition,
    JobCancelled,
    JobFailed,
    JobNotFound,
    PayloadInvalid,
    PayloadTooLarge,
    PermanentError,
    RetryableError,
    ServiceUnavailable,
    StoreUnavailable,
    UnknownTask,
    WaitTimeout,
)
from jobs.models import JobStatus


def enqueue(task_name: str, payload: Mapping[str, Any] | None = None, *, queue: str | None = None,
            countdown: float | None = None, eta: datetime | None = None, priority: int | None = None,
            idempotency_key: str | None = None) -> Job:
    """Validate, record and publish one job on the default app."""
    return default_client().enqueue(task_name, payload, queue=queue, countdown=countdown, eta=eta,
                                    priority=priority, idempotency_key=idempotency_key)


def enqueue_many(task_name: str, payloads: Iterable[Mapping[str, Any]], *,
                 queue: str | None = None, priority: int | None = None) -> list[Job]:
    """Validate, record in one insert and publish pipelined many jobs of one task."""
    return default_client().enqueue_many(task_name, payloads, queue=queue, priority=priority)


def get_job(job_id: str) -> Job:
    return default_client().get_job(job_id)


def list_jobs(*, status: str | Sequence[str] | None = None, task: str | None = None,
              since: datetime | None = None, limit: int = 50) -> list[Job]:
    return default_client().list_jobs(status=status, task=task, since=since, limit=limit)


__all__ = [
    # enqueue and read
    "enqueue", "enqueue_many", "get_job", "list_jobs", "Job", "Attempt", "JobStatus", "Client",
    # errors
    "ConveyorError", "InvalidInput", "PayloadInvalid", "PayloadTooLarge", "UnknownTask",
    "JobNotFound", "InvalidTransition", "JobFailed", "JobCancelled", "WaitTimeout",
    "ServiceUnavailable", "BrokerUnavailable", "StoreUnavailable", "RetryableError", "PermanentError",
]
