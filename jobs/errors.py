"""The one error tree of Conveyor. Retry or give up is decided by type."""

from __future__ import annotations

from typing import Any


class ConveyorError(Exception):
    """Conveyor failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


# --- What a caller did wrong: raised before anything is published or written. ---
class InvalidInput(ConveyorError, ValueError):
    """The job's input is invalid."""


class PayloadInvalid(InvalidInput):
    """The payload does not match the task's input model."""

    def __init__(self, task_name: str, errors: list[dict[str, Any]]) -> None:
        self.task_name = task_name
        self.errors = errors
        lines = [
            f"  {'.'.join(str(p) for p in e.get('loc', ())) or '<payload>'}: {e.get('msg')}"
            for e in errors
        ]
        super().__init__(f"invalid input for {task_name}:\n" + "\n".join(lines))

    @property
    def fields(self) -> list[str]:
        """The names of the bad fields."""
        return [".".join(str(p) for p in e.get("loc", ())) for e in self.errors]


class UnknownTask(InvalidInput, LookupError):
    """No task is registered under that name."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        super().__init__(f"unknown task {name!r}; known tasks: {', '.join(sorted(known))}")


class PayloadTooLarge(InvalidInput):
    """The payload is larger than the configured limit."""


class JobNotFound(ConveyorError, LookupError):
    """No job has that id."""


class InvalidTransition(ConveyorError):
    """The job is not in a state that allows this."""


# --- Infrastructure. ---
class ServiceUnavailable(ConveyorError):
    """A service Conveyor needs is unreachable."""


class BrokerUnavailable(ServiceUnavailable):
    """The broker is unreachable."""


class StoreUnavailable(ServiceUnavailable):
    """The job store database is unreachable."""


# --- Raised inside tasks: the type says whether the worker tries again. ---
class RetryableError(ConveyorError):
    """A transient failure: the job is retried with backoff."""


class PermanentError(ConveyorError):
    """A failure that retrying cannot fix: the job fails at once."""


class Quarantined(PermanentError):
    """The job's attempts keep killing their worker: it is not run again."""


# --- What a waiting caller sees. ---
class JobFailed(ConveyorError):
    """The job failed."""

    def __init__(self, job_id: str, status: str, error_type: str | None, error: str | None) -> None:
        self.job_id = job_id
        self.status = status
        self.error_type = error_type
        self.error = error
        super().__init__(f"job {job_id} {status}: {error_type or 'Error'}: {error or ''}".rstrip(": "))


class JobCancelled(JobFailed):
    """The job was cancelled."""


class WaitTimeout(ConveyorError, TimeoutError):
    """The job did not finish in time."""
