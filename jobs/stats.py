"""`conveyor stats`: figures per task from the job store, queue depths and ages from Redis,
and what each online worker is running.

The per-task figures are two `select()`s that SQLite and PostgreSQL both run: one grouped
count, and one window query that picks the nearest-rank percentiles of runtime (SQLite has no
`percentile_cont`, and sorting in SQL keeps the rows in the database, however many there are).

A Redis list holds kombu's messages without an enqueue time, but each message's
`headers.id` is the job id, and the job store knows when that job was created: the oldest
message of a queue is the tail of its list (kombu LPUSHes and BRPOPs), one per priority level.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import case, func, or_, select

from jobs.db import utcnow
from jobs.models import Job, JobStatus
from jobs.store import JobStore, _translated

if TYPE_CHECKING:
    from celery import Celery

#: Statuses of jobs that ran to an end (a revoked job was stopped, mostly before it ran).
RAN_TO_END = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.DEAD)
PERCENTILES = (50, 95)


@dataclass(frozen=True)
class TaskStats:
    """One task's jobs created in the window."""

    task: str
    jobs: int
    queued: int
    running: int  # started, or waiting for a retry
    succeeded: int
    failed: int
    dead: int
    revoked: int
    #: Attempts beyond each job's first: retries after failures and redeliveries after a lost worker.
    retries: int
    #: succeeded / (succeeded + failed + dead); None until one of them ran to an end.
    success_rate: float | None
    #: Nearest-rank percentiles and maximum of the runtime of jobs that ran to an end (seconds).
    runtime_p50: float | None
    runtime_p95: float | None
    runtime_max: float | None
    #: Jobs that ran to an end, per minute of the window.
    throughput: float


@dataclass(frozen=True)
class QueueStats:
    queue: str
    depth: int
    #: The job that has waited longest (across priority levels), and for how long.
    oldest_job: str | None = None
    oldest_age: float | None = None


@dataclass(frozen=True)
class RunningJob:
    id: str
    task: str
    running_for: float | None
    progress: str | None = None


@dataclass(frozen=True)
class WorkerActivity:
    worker: str
    running: list[RunningJob] = field(default_factory=list)


@dataclass(frozen=True)
class StatsReport:
    since: datetime
    until: datetime
    tasks: list[TaskStats]
    queues: list[QueueStats] | None
    #: Messages handed to workers and not yet acknowledged (running, prefetched, waiting for an ETA).
    unacked: int | None
    workers: list[WorkerActivity] | None
    errors: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["since"], out["until"] = self.since.isoformat(), self.until.isoformat()
        return out


# --- the job store -----------------------------------------------------------------------------
def _count(status: JobStatus | Sequence[JobStatus]) -> Any:
    statuses = [status] if isinstance(status, JobStatus) else list(status)
    return func.coalesce(func.sum(case((Job.status.in_(statuses), 1), else_=0)), 0)


class StatsQueries(JobStore):
    """The stats queries over one job store (a `JobStore`, so its errors translate the same)."""

    @_translated
    def task_stats(self, since: datetime, until: datetime | None = None) -> list[TaskStats]:
        """Per task, the jobs created in [since, until), sorted by task name."""
        until = until or utcnow()
        window = (Job.created_at >= since, Job.created_at < until)
        counts = (
            select(
                Job.task,
                func.count().label("jobs"),
                _count(JobStatus.QUEUED).label("queued"),
                _count((JobStatus.STARTED, JobStatus.RETRYING)).label("running"),
                _count(JobStatus.SUCCEEDED).label("succeeded"),
                _count(JobStatus.FAILED).label("failed"),
                _count(JobStatus.DEAD).label("dead"),
                _count(JobStatus.REVOKED).label("revoked"),
                func.coalesce(func.sum(case((Job.attempts > 1, Job.attempts - 1), else_=0)), 0)
                .label("retries"),
                func.max(case((Job.status.in_(RAN_TO_END), Job.runtime))).label("runtime_max"),
            )
            .where(*window)
            .group_by(Job.task)
        )
        ranked = (
            select(
                Job.task.label("task"),
                Job.runtime.label("runtime"),
                func.row_number().over(partition_by=Job.task, order_by=Job.runtime).label("rank"),
                func.count().over(partition_by=Job.task).label("n"),
            )
            .where(*window, Job.status.in_(RAN_TO_END), Job.runtime.is_not(None))
            .subquery()
        )
        # Nearest rank: the ceil(p * n / 100)-th smallest, in integer arithmetic.
        wanted = [(ranked.c.n * p + 99) // 100 for p in PERCENTILES]
        picks = select(ranked.c.task, ranked.c.rank, ranked.c.n, ranked.c.runtime).where(
            or_(*(ranked.c.rank == w for w in wanted))
        )
        with self.session() as s:
            rows = list(s.execute(counts).mappings())
            percentile_rows = list(s.execute(picks).tuples())

        percentiles: dict[tuple[str | None, int], float] = {}
        for task, rank, n, runtime in percentile_rows:
            for p in PERCENTILES:
                if rank == (n * p + 99) // 100:
                    percentiles[(task, p)] = runtime
        minutes = max((until - since).total_seconds() / 60, 1e-9)
        out = []
        for r in rows:
            ended = r["succeeded"] + r["failed"] + r["dead"]
            out.append(TaskStats(
                task=r["task"] or "(unknown)",
                jobs=r["jobs"], queued=r["queued"], running=r["running"], succeeded=r["succeeded"],
                failed=r["failed"], dead=r["dead"], revoked=r["revoked"], retries=int(r["retries"]),
                success_rate=r["succeeded"] / ended if ended else None,
                runtime_p50=percentiles.get((r["task"], 50)),
                runtime_p95=percentiles.get((r["task"], 95)),
                runtime_max=r["runtime_max"],
                throughput=ended / minutes,
            ))
        return sorted(out, key=lambda t: t.task)

    @_translated
    def created_at(self, job_ids: Iterable[str]) -> dict[str, datetime]:
        """When each of `job_ids` was created (ids the store does not know are left out)."""
        ids = list(set(job_ids))
        if not ids:
            return {}
        with self.session() as s:
            rows = s.execute(select(Job.id, Job.created_at).where(Job.id.in_(ids))).tuples()
            return {job_id: created for job_id, created in rows if created is not None}

    @_translated
    def progress(self, job_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        ids = list(set(job_ids))
        if not ids:
            return {}
        with self.session() as s:
            rows = s.execute(select(Job.id, Job.progress).where(Job.id.in_(ids))).tuples()
            return {job_id: p for job_id, p in rows if p}


# --- Redis -------------------------------------------------------------------------------------
def _priority_keys(queue: str) -> list[str]:
    """kombu's Redis transport keeps each priority level of a queue in a list of its own."""
    from kombu.transport.redis import PRIORITY_STEPS, Channel

    return [queue if p == 0 else f"{queue}{Channel.sep}{p}" for p in PRIORITY_STEPS]


def _message_id(raw: bytes | None) -> str | None:
    if not raw:
        return None
    try:
        headers = json.loads(raw).get("headers") or {}
    except (ValueError, AttributeError):
        return None
    job_id = headers.get("id")
    return job_id if isinstance(job_id, str) else None


def queue_stats(broker_url: str, queries: StatsQueries, queues: Sequence[str],
                now: datetime | None = None, sentinel_master: str | None = None) -> tuple[list[QueueStats], int]:
    """Depth and oldest waiting job of each queue, and the broker's unacknowledged count."""
    from config.redis_client import redis_client

    now = now or utcnow()
    client = redis_client(broker_url, sentinel_master, socket_connect_timeout=2, socket_timeout=2)
    try:
        pipe = client.pipeline(transaction=False)
        for q in queues:
            for key in _priority_keys(q):
                pipe.llen(key)
                pipe.lindex(key, -1)
        pipe.hlen("unacked")
        replies = pipe.execute()
    finally:
        client.close()
    unacked = int(replies.pop())
    per_queue = len(replies) // len(queues) if queues else 0
    tails: dict[str, list[str]] = {}
    depths: dict[str, int] = {}
    for i, q in enumerate(queues):
        chunk = replies[i * per_queue:(i + 1) * per_queue]
        depths[q] = sum(int(n) for n in chunk[0::2])
        tails[q] = [job_id for job_id in map(_message_id, chunk[1::2]) if job_id]
    created = queries.created_at(job_id for ids in tails.values() for job_id in ids)
    out = []
    for q in queues:
        known = [(created[j], j) for j in tails[q] if j in created]
        if known:
            when, job_id = min(known)
            out.append(QueueStats(q, depths[q], job_id, max(0.0, (now - when).total_seconds())))
        else:
            out.append(QueueStats(q, depths[q], tails[q][0] if tails[q] else None, None))
    return out, unacked


# --- workers -----------------------------------------------------------------------------------
def worker_activity(app: Celery, queries: StatsQueries | None, timeout: float = 1.0) -> list[WorkerActivity]:
    """Every worker that answers within `timeout`, with the jobs it is running now.

    `safe=True` keeps the workers from sending the jobs' arguments at all: they are not shown.
    """
    replies = app.control.inspect(timeout=timeout).active(safe=True) or {}
    now = time.time()
    ids = [t.get("id") for tasks in replies.values() for t in tasks or ()]
    progress = queries.progress(i for i in ids if i) if queries and ids else {}
    out = []
    for name in sorted(replies):
        running = []
        for t in replies[name] or ():
            started = t.get("time_start")
            p = progress.get(t.get("id") or "")
            shown = None
            if p:
                total = p.get("total")
                shown = f"{p.get('current')}/{total}" if total else str(p.get("current"))
                if p.get("message"):
                    shown += f" {p['message']}"
            running.append(RunningJob(id=t.get("id") or "", task=t.get("name") or "",
                                      running_for=max(0.0, now - started) if started else None,
                                      progress=shown))
        out.append(WorkerActivity(name, running))
    return out


def collect(settings: Any, app: Celery, since: datetime, *, queues: Sequence[str],
            timeout: float = 1.0, until: datetime | None = None) -> StatsReport:
    """Everything `conveyor stats` shows. The job store must answer; Redis and the workers
    may not, and what they could not say is reported in `errors` instead."""
    until = until or utcnow()
    queries = StatsQueries(settings.database_url)
    tasks = queries.task_stats(since, until)
    errors: dict[str, str] = {}
    queue_rows: list[QueueStats] | None = None
    unacked: int | None = None
    workers: list[WorkerActivity] | None = None
    try:
        queue_rows, unacked = queue_stats(settings.broker_url, queries, queues, until,
                                          sentinel_master=settings.redis_sentinel_master)
    except Exception as exc:  # noqa: BLE001 - report what is down, show the rest
        errors["queues"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "queues" not in errors:
        try:
            workers = worker_activity(app, queries, timeout)
        except Exception as exc:  # noqa: BLE001
            errors["workers"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return StatsReport(since, until, tasks, queue_rows, unacked, workers, errors)
