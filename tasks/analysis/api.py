"""Checking an analysis request against the data before it is published.

`Client.enqueue` validates a payload's shape (the input models refuse malformed filters,
unknown metrics, `..` in paths). Whether the file exists, the columns are real and the
metrics fit their types needs the data itself: `check()` reads the data set's schema (not
its rows) and raises the same typed errors the task would, and `submit()` checks, then
enqueues. The CLI uses `submit()`. A client that does not see the workers' data directory
can skip the check; the job then fails with the same message instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from jobs.errors import InvalidInput, PayloadInvalid
from tasks.analysis.datasets import Dataset, resolve
from tasks.analysis.engine import connect, engine_errors
from tasks.analysis.kinds import KINDS
from tasks.analysis.runner import Context
from tasks.analysis.spec import ReportInput

if TYPE_CHECKING:
    from celery import Celery

    from config import Settings
    from jobs.client import Client, Job


def check(settings: Settings, task_name: str, payload: Mapping[str, Any],
          app: Celery | None = None) -> Dataset:
    """Raise `InvalidInput` (a precise subclass) if the request does not fit its data set."""
    kind = KINDS.get(task_name)
    if kind is None:
        raise InvalidInput(f"{task_name!r} is not an analysis task; one of {', '.join(KINDS)}")
    try:
        data = kind.input.model_validate(dict(payload))
    except ValidationError as exc:
        raise PayloadInvalid(task_name, [dict(e) for e in exc.errors(include_url=False)]) from None
    with connect(settings) as con:
        with engine_errors(f"reading the schema of {data.path!r}"):
            dataset = resolve(con, settings.data_dir, data.path, format=data.format,
                              delimiter=data.delimiter, header=data.header, types=data.types)
    ctx = Context(settings, dataset, job_id="check")
    for analysis in kind.analyses(data):
        analysis.check(ctx)  # type: ignore[attr-defined]
    if isinstance(data, ReportInput) and data.email and app is not None:
        from tasks.analysis.report import email_registered

        email_registered(app)
    return dataset


def submit(client: Client, task_name: str, payload: Mapping[str, Any], *, check_data: bool = True,
           **options: Any) -> Job:
    """Check the request against its data (unless `check_data=False`), then enqueue it."""
    if check_data:
        check(client.settings, task_name, payload, client.app)
    return client.enqueue(task_name, payload, **options)
