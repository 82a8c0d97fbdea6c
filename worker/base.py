"""The base class of every Conveyor task: validation, retry policy, progress, JSON results."""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Any

from celery import Task
from celery.exceptions import Ignore, Reject, Retry
from pydantic import BaseModel, ValidationError

from config import Settings
from jobs.db import escape_nul
from jobs.errors import PermanentError, Quarantined
from jobs.models import JobStatus, state_order
from jobs.recorder import ForwardingRecorder, Recorder, app_recorder
from jobs.store import JobStore

if TYPE_CHECKING:
    from tasks.registry import TaskSpec

log = logging.getLogger("conveyor.task")

#: Exceptions that retrying cannot fix: the job fails at once.
NOT_RETRIED: tuple[type[BaseException], ...] = (PermanentError, ValidationError, TypeError)


def backoff(retries: int, base: float, cap: float) -> float:
    """Exponential backoff with 'equal jitter': half fixed, half random, never zero."""
    delay = min(cap, base * (2**retries))
    return delay / 2 + random.uniform(0, delay / 2)


def to_json(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


class ConveyorTask(Task):  # type: ignore[misc]
    """Runs a registered `TaskSpec`: the body only validates, works and returns JSON."""

    spec: TaskSpec
    acks_late = True
    reject_on_worker_lost = True
    typing = False  # the input model validates, with better messages than a signature check
    ignore_result = True  # the job store holds results; chords opt back in

    @property
    def settings(self) -> Settings:
        return self.app.conf.conveyor_settings  # type: ignore[no-any-return]

    @property
    def store(self) -> JobStore:
        return JobStore(self.settings.database_url)

    @property
    def recorder(self) -> Recorder | ForwardingRecorder:
        return app_recorder(self.app)

    def apply_async(self, args: Any = None, kwargs: Any = None, *rest: Any, **options: Any) -> Any:
        """Publish with sensitive fields redacted in what monitors see: Celery builds the
        message's `kwargsrepr` and the task-sent event before `before_task_publish` runs.
        Covers delay(), signatures and retries."""
        if kwargs and self.spec.sensitive and "kwargsrepr" not in options:
            options["kwargsrepr"] = repr(self.spec.redact(dict(kwargs)))
        return super().apply_async(args, kwargs, *rest, **options)

    def effective_max_retries(self) -> int:
        return self.spec.max_retries if self.spec.max_retries is not None else self.settings.retry_max

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        finished = getattr(self.request, "conveyor_already_finished", None)
        if finished:
            log.warning("job %s came back after its worker was lost, but its record says it already "
                        "%s: acknowledged, not run again", self.request.id, finished)
            raise Ignore()
        lost = getattr(self.request, "conveyor_quarantined", None)
        if lost:
            raise Quarantined(f"quarantined: its worker was lost {lost} times while running it")
        if args:
            raise PermanentError(f"{self.name} takes its input as keyword fields, not positional args")
        data = self.spec.input.model_validate(kwargs)
        try:
            if self.spec.rate_limit is not None:
                from worker.ratelimit import throttle

                throttle(self, data)  # a slot in every declared limit, or the job is deferred
            return to_json(self.spec.fn(self, data))
        except (*NOT_RETRIED, Ignore, Reject, Retry):
            # Failures retrying cannot fix, and Celery's control flow (a rate-limit deferral is
            # an Ignore: the job went back to the broker).
            raise
        except Exception as exc:
            if self.request.called_directly:
                raise
            retries = self.request.retries
            if retries >= self.effective_max_retries():
                raise  # the failure handler records the job as dead
            s = self.settings
            raise self.retry(
                exc=exc,
                countdown=backoff(retries, s.retry_backoff, s.retry_backoff_max),
                max_retries=self.effective_max_retries(),
            ) from exc

    def is_dead(self, exc: BaseException) -> bool:
        """A retryable failure after the last retry makes the job dead, not just failed."""
        if isinstance(exc, Quarantined):
            return True
        return not isinstance(exc, NOT_RETRIED) and self.request.retries >= self.effective_max_retries()

    def progress(self, current: float, total: float | None = None, message: str | None = None) -> None:
        """Report how far the job got; shown by `conveyor jobs show` and `--wait`'s progress bar."""
        request = self.request
        if request.called_directly or request.id is None:
            return
        attempt = getattr(request, "conveyor_attempt", None) or request.retries + 1
        self.recorder.job(
            request.id,
            state_order(JobStatus.STARTED, attempt),
            status=JobStatus.STARTED,
            progress={"current": current, "total": total,
                      "message": escape_nul(message) if isinstance(message, str) else message},
        )
