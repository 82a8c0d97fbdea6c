"""Splitting a job across workers: one subtask per partition file, then a merge (a chord).

The job a user enqueued (the parent) plans the work and launches a Celery chord: a header of
`analysis.partition_run` tasks, one per file (or group of files), each writing its partial to a
scratch folder under the results directory, and `analysis.partition_merge` as the body, which
merges the partials, finishes the job and writes the *parent's* record: status, result,
runtime. The parent's own run ends right after the launch without a result (Celery's `Ignore`)
so it holds no worker slot while the partitions run, and `Job.wait()` on it returns when the
merge has written the merged answer.

- Progress: each partition adds its index to a Redis set and writes the set's size as the
  parent's progress (a set, so a partition that runs twice counts once).
- Failure: the chord never calls its body when a header task fails, so a partition whose
  failure is final (not going to be retried) fails the parent itself, with its message.
  Partitions that start after that skip their work.
- Redelivery: the launch is recorded in Redis (SET NX); a parent message delivered again
  does not launch a second chord. If the merge finished before, it re-applies the outcome
  under the new attempt so the record ends finished.
- Cancellation: partitions and the merge check the parent's record; a cancelled parent stays
  cancelled (a cancellation outranks every other record in the job store).
"""

from __future__ import annotations

import json
import shutil
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from pydantic import BaseModel, ConfigDict, Field

from jobs.db import utcnow
from jobs.models import FINISHED, AttemptOutcome, JobStatus, state_order
from tasks.analysis.datasets import Dataset
from worker.base import NOT_RETRIED, ConveyorTask

if TYPE_CHECKING:
    import redis

    from config import Settings

SCRATCH = ".analysis-partials"


class Deferred(BaseException):  # noqa: N818 - not an error: a control-flow signal
    """Raised by a parent after launching its chord: the merge task finishes the job.

    A BaseException, so the base task's retry handling (which catches Exception) lets it
    through to `SplitParentTask`, which turns it into Celery's `Ignore`.
    """


class SplitParentTask(ConveyorTask):
    """The base of the analysis tasks: a `Deferred` run ends without recording a result."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except Deferred:
            from celery.exceptions import Ignore

            raise Ignore() from None


class Plan(BaseModel):
    """What every partition and the merge need to know about the parent job."""

    model_config = ConfigDict(extra="forbid")
    task: str
    job_id: str
    attempt: int = Field(ge=1)
    started_at: float
    payload: dict[str, Any]
    dataset: Dataset
    partitions: int = Field(ge=1)
    scratch: str

    def part_dirs(self, analysis: str) -> list[Path]:
        return [Path(self.scratch) / analysis / str(i) for i in range(self.partitions)]


class PartitionInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    plan: Plan
    index: int = Field(ge=0)
    files: list[str] = Field(min_length=1)


class MergeInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    plan: Plan


def chunks(files: list[str], most: int) -> list[list[str]]:
    """`files` in at most `most` contiguous groups of nearly equal size (one file each if few)."""
    n = min(len(files), most)
    size, extra = divmod(len(files), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        out.append(files[start:end])
        start = end
    return out


# --- Redis bookkeeping -----------------------------------------------------------------------------
def _redis(settings: Settings) -> redis.Redis:
    from config.redis_client import redis_client

    return redis_client(settings.result_backend, settings.redis_sentinel_master, socket_timeout=10)


def _key(job_id: str, what: str) -> str:
    return f"conveyor:analysis:{job_id}:{what}"


def _ttl(settings: Settings) -> int:
    return settings.visibility_timeout + 3600


# --- the parent -------------------------------------------------------------------------------------
def launch(task: ConveyorTask, name: str, payload: dict[str, Any], dataset: Dataset) -> NoReturn:
    """Launch the chord of partitions and merge for the running parent, then end its run."""
    from celery import chord

    settings = task.settings
    job_id = task.request.id
    attempt = getattr(task.request, "conveyor_attempt", None) or task.request.retries + 1
    r = _redis(settings)
    if not r.set(_key(job_id, "launched"), attempt, nx=True, ex=_ttl(settings)):
        _reapply_outcome(task, r, job_id, attempt)
        raise Deferred()
    _sweep(settings)
    groups = chunks(dataset.files, settings.analysis_max_partitions)
    plan = Plan(task=name, job_id=job_id, attempt=attempt, started_at=time.time(), payload=payload,
                dataset=dataset.model_copy(update={"files": [], "file_count": len(dataset.files)}),
                partitions=len(groups),
                scratch=str(settings.results_dir / SCRATCH / job_id))
    plan_json = plan.model_dump(mode="json")
    header = [task.app.tasks["analysis.partition_run"].s(plan=plan_json, index=i, files=files)
              for i, files in enumerate(groups)]
    body = task.app.tasks["analysis.partition_merge"].si(plan=plan_json)
    # Written through before the launch: a fast partition's progress must not land first.
    task.progress(0, len(groups), f"0 of {len(groups)} partitions")
    task.recorder.flush()
    try:
        chord(header)(body)
    except BaseException:
        r.delete(_key(job_id, "launched"))
        raise
    raise Deferred()


def _sweep(settings: Settings) -> None:
    """Remove scratch folders of split jobs that died long ago (a failed chord leaves one)."""
    root = settings.results_dir / SCRATCH
    if not root.is_dir():
        return
    cutoff = time.time() - _ttl(settings)
    for d in root.iterdir():
        try:
            if d.stat().st_mtime < cutoff:
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            continue


# --- writing the parent's record --------------------------------------------------------------------
def _attempt(task: ConveyorTask, plan: Plan) -> int:
    """The parent's latest attempt (a redelivered parent outranks the attempt that launched)."""
    try:
        return max(plan.attempt, task.store.get(plan.job_id).attempts or 0)
    except Exception:  # noqa: BLE001 - the store is down: the recorder will write later anyway
        return plan.attempt


def parent_finished(task: ConveyorTask, plan: Plan) -> bool:
    try:
        return JobStatus(task.store.get(plan.job_id).status) in FINISHED
    except Exception:  # noqa: BLE001 - unknown: do the work rather than lose it
        return False


def progress(task: ConveyorTask, plan: Plan, index: int) -> None:
    """Count partition `index` as done and show the count on the parent."""
    r = _redis(task.settings)
    key = _key(plan.job_id, "done")
    ttl = _ttl(task.settings)
    pipe = r.pipeline()
    pipe.sadd(key, index)
    pipe.expire(key, ttl)
    pipe.execute()
    attempt = _attempt(task, plan)
    # Records of one job from several processes at the same state order land in any order;
    # under the lock each writer reads the count and writes it through before the next one,
    # so the parent's progress only goes up.
    with r.lock(_key(plan.job_id, "progress-lock"), timeout=30, blocking_timeout=10):
        done = min(int(r.scard(key)), plan.partitions)
        _write(task, plan.job_id, attempt, JobStatus.STARTED,
               progress={"current": done, "total": plan.partitions,
                         "message": f"{done} of {plan.partitions} partitions"})
        task.recorder.flush()


def complete(task: ConveyorTask, plan: Plan, result: Any) -> None:
    """The parent succeeded with `result` (the merged answer)."""
    outcome = {"status": JobStatus.SUCCEEDED, "result": result,
               "runtime": time.time() - plan.started_at,
               "progress": {"current": plan.partitions, "total": plan.partitions,
                            "message": f"merged {plan.partitions} partitions"}}
    _finish(task, plan, outcome)


def fail(task: ConveyorTask, plan: Plan, exc: BaseException, where: str) -> None:
    """The parent failed because of `exc` in `where` (unless it already finished)."""
    if parent_finished(task, plan):
        return
    dead = task.is_dead(exc) if isinstance(exc, Exception) else False
    outcome = {"status": JobStatus.DEAD if dead else JobStatus.FAILED,
               "runtime": time.time() - plan.started_at, "error_type": type(exc).__name__,
               "error_message": f"{where}: {exc}"[:10_000], "traceback": traceback.format_exc()[:50_000]}
    _finish(task, plan, outcome)


def final(task: ConveyorTask, exc: BaseException) -> bool:
    """Whether this failure ends the task (no retry follows)."""
    return isinstance(exc, NOT_RETRIED) or task.request.retries >= task.effective_max_retries()


def _finish(task: ConveyorTask, plan: Plan, outcome: dict[str, Any]) -> None:
    try:
        _redis(task.settings).set(_key(plan.job_id, "outcome"), json.dumps(outcome, default=str),
                                  ex=_ttl(task.settings))
    except Exception:  # noqa: BLE001 - only needed if the parent message comes back
        pass
    _apply(task, plan.job_id, _attempt(task, plan), outcome)


def _apply(task: ConveyorTask, job_id: str, attempt: int, outcome: dict[str, Any]) -> None:
    status = JobStatus(outcome["status"])
    _write(task, job_id, attempt, status, finished_at=utcnow(),
           **{k: v for k, v in outcome.items() if k != "status"})
    task.recorder.attempt(job_id, attempt, finished_at=utcnow(),
                          outcome=AttemptOutcome(status.value), error=outcome.get("error_message"))


def _write(task: ConveyorTask, job_id: str, attempt: int, status: JobStatus, **fields: Any) -> None:
    task.recorder.job(job_id, state_order(status, attempt), status=status, attempts=attempt, **fields)


def _reapply_outcome(task: ConveyorTask, r: redis.Redis, job_id: str, attempt: int) -> None:
    """A parent delivered again after its chord was launched: keep its record finished."""
    raw = r.get(_key(job_id, "outcome"))
    if raw:
        _apply(task, job_id, attempt, json.loads(raw))
