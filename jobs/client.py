"""The client API: enqueue jobs, look them up, wait for them, cancel and retry them."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from kombu.exceptions import OperationalError as KombuOperationalError
from pydantic import ValidationError
from sqlalchemy import event
from sqlalchemy.orm import Session

from config import mask_url
from jobs.db import has_nul, utcnow
from jobs.errors import (
    BrokerUnavailable,
    InvalidInput,
    InvalidTransition,
    JobCancelled,
    JobFailed,
    PayloadInvalid,
    PayloadTooLarge,
    UnknownTask,
    WaitTimeout,
)
from jobs.models import FINISHED, AttemptOutcome, JobStatus
from jobs.models import Job as JobRow
from jobs.secrets import SecretBox
from jobs.store import JobStore
from tasks.registry import REGISTRY, TaskSpec

if TYPE_CHECKING:
    from celery import Celery

#: Publishing retries briefly, then gives up: a caller learns within seconds that Redis is down.
PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}


@dataclass(frozen=True)
class Attempt:
    number: int
    reason: str | None
    worker: str | None
    pid: int | None
    started_at: datetime | None
    finished_at: datetime | None
    outcome: str | None
    error: str | None


@dataclass(frozen=True)
class Job:
    """A snapshot of one job's record. `refresh()` reads it again; `wait()` waits for the end."""

    id: str
    task: str | None
    status: str
    queue: str | None = None
    source: str | None = None
    kwargs: dict[str, Any] | None = None
    args: list[Any] | None = None
    idempotency_key: str | None = None
    priority: int | None = None
    eta: datetime | None = None
    parent_id: str | None = None
    root_id: str | None = None
    retry_of: str | None = None
    progress: dict[str, Any] | None = None
    result: Any = None
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    runtime: float | None = None
    worker: str | None = None
    attempts: int = 0
    client: Client | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_row(cls, row: JobRow | Mapping[str, Any], client: Client | None = None) -> Job:
        names = {f.name for f in fields(cls)} - {"client"}
        if isinstance(row, Mapping):
            return cls(**{n: row[n] for n in names if n in row}, client=client)
        return cls(**{n: getattr(row, n) for n in names}, client=client)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "client"}
        return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in out.items()}

    def _client(self) -> Client:
        return self.client or default_client()

    def refresh(self) -> Job:
        return self._client().get_job(self.id)

    def attempt_history(self) -> list[Attempt]:
        return self._client().attempts(self.id)

    def wait(self, timeout: float | None = None, poll: float = 0.05) -> Any:
        """Wait for the job to finish; return its result or raise `JobFailed`/`JobCancelled`."""
        job = self.wait_finished(timeout, poll)
        if job.status == JobStatus.SUCCEEDED:
            return job.result
        exc_type = JobCancelled if job.status == JobStatus.REVOKED else JobFailed
        raise exc_type(job.id, job.status, job.error_type, job.error_message)

    def wait_finished(self, timeout: float | None = None, poll: float = 0.05,
                      on_update: Any = None) -> Job:
        """Wait until the job is finished and return its final record, whatever the outcome."""
        deadline = None if timeout is None else time.monotonic() + timeout
        job: Job = self
        while not job.finished:
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"job {self.id} is still {job.status} after {timeout}s")
            time.sleep(poll)
            poll = min(poll * 1.5, 0.5)
            job = job.refresh()
            if on_update is not None:
                on_update(job)
        return job


class Client:
    """Enqueues jobs through a Celery app and reads them back from its job store."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.settings = app.conf.conveyor_settings
        self.store = JobStore(self.settings.database_url)
        key = self.settings.encryption_key
        self.box = SecretBox(key.get_secret_value() if key else None)

    # --- validation ------------------------------------------------------------------------
    def spec(self, task_name: str) -> TaskSpec:
        spec = REGISTRY.get(task_name)
        if spec is None or task_name not in self.app.tasks:
            raise UnknownTask(task_name, sorted(REGISTRY))
        return spec

    def validate(self, task_name: str, payload: Mapping[str, Any] | None) -> dict[str, Any]:
        """Check `payload` against the task's input model and the size limit; return it as a dict."""
        spec = self.spec(task_name)
        if payload is not None and not isinstance(payload, Mapping):
            raise InvalidInput(f"the payload of {task_name} must be a JSON object")
        data = dict(payload or {})
        try:
            text = json.dumps(data)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"the payload of {task_name} is not JSON: {exc}") from None
        if has_nul(data):
            raise InvalidInput(f"the payload of {task_name} contains a NUL character (\\u0000), "
                               "which the job store cannot keep")
        size = len(text)
        if size > self.settings.max_payload_bytes:
            raise PayloadTooLarge(
                f"the payload of {task_name} is {size} bytes; the limit is {self.settings.max_payload_bytes}"
            )
        try:
            spec.input.model_validate(data)
        except ValidationError as exc:
            raise PayloadInvalid(task_name, exc.errors(include_url=False)) from None
        return data

    @staticmethod
    def _eta(countdown: float | None, eta: datetime | None) -> datetime | None:
        if countdown is not None and eta is not None:
            raise InvalidInput("give countdown or eta, not both")
        if countdown is not None:
            if countdown < 0:
                raise InvalidInput("countdown must not be negative")
            return utcnow() + timedelta(seconds=countdown)
        if eta is not None and eta.tzinfo is None:
            raise InvalidInput("eta must carry a timezone (for example 2026-01-01T07:00:00+00:00)")
        return eta.astimezone(UTC) if eta else None

    def _row(self, spec: TaskSpec, job_id: str, data: dict[str, Any], *, queue: str | None,
             eta: datetime | None, priority: int | None, idempotency_key: str | None,
             source: str, retry_of: str | None) -> dict[str, Any]:
        if priority is not None and not 0 <= priority <= 9:
            raise InvalidInput("priority must be between 0 (first) and 9 (last)")
        now = utcnow()
        secrets = {k: data[k] for k in spec.sensitive if data.get(k) is not None}
        return {
            "id": job_id, "task": spec.name, "queue": queue or spec.queue, "status": JobStatus.QUEUED,
            "source": source, "args": [], "kwargs": spec.redact(data), "idempotency_key": idempotency_key,
            "priority": priority, "eta": eta, "retry_of": retry_of, "created_at": now, "attempts": 0,
            "published_at": now, "publish_after": None, "secrets": self.box.seal(secrets),
        }

    def _headers(self, source: str, retry_of: str | None) -> dict[str, Any]:
        headers: dict[str, Any] = {"conveyor_recorded": True, "conveyor_source": source}
        if retry_of:
            headers["conveyor_retry_of"] = retry_of
        return headers

    # --- enqueue ---------------------------------------------------------------------------
    def enqueue(
        self,
        task_name: str,
        payload: Mapping[str, Any] | None = None,
        *,
        queue: str | None = None,
        countdown: float | None = None,
        eta: datetime | None = None,
        priority: int | None = None,
        idempotency_key: str | None = None,
        source: str = "api",
        retry_of: str | None = None,
        session: Session | None = None,
    ) -> Job:
        """Validate, record and publish one job. An idempotency key already used returns its job.

        With `session` (a SQLAlchemy session on the job store's database) the job is written in
        the caller's transaction and published only once it commits: a rollback leaves no job,
        and if the process dies between commit and publish, a worker's relay publishes it.
        A job due further out than `hold_threshold` is held in the job store until due."""
        spec = self.spec(task_name)
        data = self.validate(task_name, payload)
        when = self._eta(countdown, eta)
        job_id = str(uuid.uuid4())
        row = self._row(spec, job_id, data, queue=queue, eta=when, priority=priority,
                        idempotency_key=idempotency_key, source=source, retry_of=retry_of)
        held = when is not None and (when - row["created_at"]).total_seconds() > self.settings.hold_threshold
        if held or session is not None:
            row["published_at"] = None  # published after the commit, or by the relay when due
            row["publish_after"] = when if held else None
        if session is not None:
            stored, created = self.store.create_in(session, row)
            if created and not held:
                _after_commit(session, lambda: self._publish_claimed(row, data))
            return Job.from_row(stored, self)
        stored, created = self.store.create(row)
        if not created or held:
            return Job.from_row(stored, self)
        try:
            self._publish(row, data)
        except KombuOperationalError as exc:
            self.store.delete(job_id)  # nothing was published: leave no record behind
            raise BrokerUnavailable(
                f"broker {mask_url(self.settings.broker_url)} is unreachable: {exc}"
            ) from None
        return Job.from_row(stored, self)

    def _publish(self, row: Mapping[str, Any], data: dict[str, Any]) -> None:
        eta = row.get("eta")
        if eta is not None and eta <= utcnow():
            eta = None
        self.app.tasks[row["task"]].apply_async(
            kwargs=data, task_id=row["id"], queue=row["queue"], eta=eta, priority=row.get("priority"),
            headers=self._headers(row.get("source") or "api", row.get("retry_of")),
            time_limit=None, soft_time_limit=None,  # the worker's own limits apply, not the producer's
            retry=True, retry_policy=PUBLISH_RETRY,
        )

    def _publish_claimed(self, row: Mapping[str, Any], data: dict[str, Any]) -> bool:
        """Publish a recorded job unless another process already did (the claim is in the
        database, so the commit hook and the relay never both publish it)."""
        if not self.store.claim_publish(row["id"]):
            return False
        try:
            self._publish(row, data)
        except Exception:
            self.store.unclaim_publish(row["id"])
            raise
        return True

    def payload_of(self, job: JobRow) -> dict[str, Any]:
        """The job's real payload: its recorded fields with the secrets put back."""
        return {**(job.kwargs or {}), **self.box.open(job.secrets)}

    def publish_recorded(self, job: JobRow, *, again: bool = False) -> bool:
        """Publish a job from its record (the relay; `again` for a lost message)."""
        row = {c: getattr(job, c) for c in ("id", "task", "queue", "eta", "priority", "source", "retry_of")}
        data = self.payload_of(job)
        if again:
            self.store.unclaim_publish(job.id)
        return self._publish_claimed(row, data)

    def enqueue_many(
        self,
        task_name: str,
        payloads: Iterable[Mapping[str, Any]],
        *,
        queue: str | None = None,
        priority: int | None = None,
        source: str = "api",
        batch_size: int = 1000,
    ) -> list[Job]:
        """Validate every payload, record them in one insert, publish them pipelined."""
        spec = self.spec(task_name)
        items = list(payloads)
        bad: list[dict[str, Any]] = []
        datas: list[dict[str, Any]] = []
        for i, p in enumerate(items):
            try:
                datas.append(self.validate(task_name, p))
            except PayloadInvalid as exc:
                bad.extend({**e, "loc": (i, *e.get("loc", ()))} for e in exc.errors)
        if bad:
            raise PayloadInvalid(task_name, bad)
        rows = [
            self._row(spec, str(uuid.uuid4()), d, queue=queue, eta=None, priority=priority,
                      idempotency_key=None, source=source, retry_of=None)
            for d in datas
        ]
        self.store.create_many(rows)
        try:
            self._publish_many(spec, rows, datas, priority=priority, source=source,
                               batch_size=batch_size)
        except KombuOperationalError as exc:
            raise BrokerUnavailable(
                f"broker {mask_url(self.settings.broker_url)} is unreachable: {exc}; "
                f"the {len(rows)} jobs are recorded as queued but may not all be published"
            ) from None
        return [Job(id=r["id"], task=task_name, status=JobStatus.QUEUED, queue=r["queue"],
                    source=source, kwargs=r["kwargs"], created_at=r["created_at"], client=self)
                for r in rows]

    def _publish_many(self, spec: TaskSpec, rows: list[dict[str, Any]], datas: list[dict[str, Any]],
                      *, priority: int | None, source: str, batch_size: int) -> None:
        """Publish through Celery's own message path, pipelined, each queue declared once
        instead of per message. The task-sent events (what Flower shows as "sent") go out in
        batches through the app's `worker.patches.SentEventBatcher`."""
        amqp = self.app.amqp
        headers = self._headers(source, None)
        declared: set[str] = set()
        with self.app.producer_or_acquire() as producer:
            with producer.batch(max_size=batch_size):
                for row, data in zip(rows, datas, strict=True):
                    queue = amqp.queues[row["queue"]]
                    if queue.name not in declared:
                        queue.declare(channel=producer.channel)
                        declared.add(queue.name)
                    message = amqp.create_task_message(
                        row["id"], spec.name, (), data, argsrepr="()", kwargsrepr=repr(row["kwargs"]),
                        create_sent_event=self.app.conf.task_send_sent_event, root_id=row["id"],
                        ignore_result=self.app.tasks[spec.name].ignore_result,
                    )
                    amqp.send_task_message(producer, spec.name, message, queue=queue, declare=[],
                                           retry=False, headers=dict(headers),
                                           priority=priority)

    # --- reading ---------------------------------------------------------------------------
    def get_job(self, job_id: str) -> Job:
        return Job.from_row(self.store.get(job_id), self)

    def attempts(self, job_id: str) -> list[Attempt]:
        return [Attempt(a.number, a.reason, a.worker, a.pid, a.started_at, a.finished_at,
                        a.outcome, a.error) for a in self.store.attempts(job_id)]

    def list_jobs(self, *, status: str | Sequence[str] | None = None, task: str | None = None,
                  since: datetime | None = None, limit: int = 50) -> list[Job]:
        statuses = [status] if isinstance(status, str) else status
        for s in statuses or ():
            if s not in set(JobStatus):
                raise InvalidInput(f"unknown status {s!r}; one of {', '.join(JobStatus)}")
        return [Job.from_row(r, self) for r in
                self.store.list(status=statuses, task=task, since=since, limit=limit)]

    # --- operator actions ------------------------------------------------------------------
    def cancel(self, job_id: str, *, terminate: bool = False) -> Job:
        """Cancel a job durably; with `terminate`, also stop it if it is running now."""
        job = Job.from_row(self.store.cancel(job_id), self)
        try:
            self.app.control.revoke(job_id, terminate=terminate, signal="SIGTERM")
        except Exception:  # noqa: BLE001 - the stored cancellation holds even if the broadcast fails
            pass
        return job

    def retry(self, job_id: str) -> Job:
        """Enqueue a failed, dead or cancelled job again, as a new job linked to the original."""
        old = self.get_job(job_id)
        if old.status not in (JobStatus.FAILED, JobStatus.DEAD, JobStatus.REVOKED):
            raise InvalidTransition(f"job {job_id} is {old.status}; only failed, dead or revoked jobs are retried")
        spec = self.spec(old.task or "")
        row = self.store.get(job_id)
        payload = self.payload_of(row)
        if any(payload.get(k) == "***" for k in spec.sensitive):
            raise InvalidTransition(
                f"job {job_id} carried secrets that were not kept (no CONVEYOR_ENCRYPTION_KEY); "
                "enqueue it again with them"
            )
        return self.enqueue(spec.name, payload, queue=old.queue, priority=old.priority,
                            source=old.source or "api", retry_of=job_id)


def _after_commit(session: Session, publish: Any) -> None:
    """Run `publish` after `session` commits; forget it if the session rolls back."""
    pending = session.info.setdefault("conveyor_publish", [])
    pending.append(publish)
    if not session.info.get("conveyor_hooked"):
        session.info["conveyor_hooked"] = True

        @event.listens_for(session, "after_commit")
        def _publish_all(sess: Session) -> None:
            todo, sess.info["conveyor_publish"] = sess.info.get("conveyor_publish", []), []
            for fn in todo:
                try:
                    fn()
                except Exception:  # noqa: BLE001 - the relay publishes what failed here
                    import logging

                    logging.getLogger("conveyor.client").warning(
                        "publish after commit failed; the relay will publish it", exc_info=True)

        @event.listens_for(session, "after_rollback")
        def _forget(sess: Session) -> None:
            sess.info["conveyor_publish"] = []


_default: Client | None = None


def default_client() -> Client:
    """The client of the default app (`worker.app.app`), made on first use."""
    global _default
    if _default is None:
        from worker.app import app

        _default = Client(app)
    return _default


__all__ = ["Attempt", "AttemptOutcome", "Client", "Job", "default_client"]
