"""End to end through the client API and a real worker: enqueue, run, record, show."""

from __future__ import annotations

import pytest

from jobs.errors import JobFailed
from jobs.models import JobStatus
from tests.conftest import wait_until


def test_enqueue_runs_and_records_result(client, settings, start_worker):
    worker = start_worker(settings)
    job = client.enqueue("system.ping", {"message": "hi"})
    assert job.status == JobStatus.QUEUED
    # Recorded when enqueued: there whenever it is read, though the worker may have run it since.
    assert client.get_job(job.id).status in (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SUCCEEDED)

    result = job.wait(timeout=30)
    assert result["message"] == "hi"

    done = client.get_job(job.id)
    assert done.status == JobStatus.SUCCEEDED
    assert done.source == "api" and done.task == "system.ping" and done.queue == "default"
    assert done.attempts == 1 and done.worker and done.runtime is not None
    assert done.created_at <= done.started_at <= done.finished_at
    [attempt] = client.attempts(job.id)
    assert (attempt.number, attempt.reason, attempt.outcome) == (1, "first_run", "succeeded")
    assert "Pool recreating" not in worker.output()  # SQLAlchemy's noise in every pool child


def test_plain_celery_delay_is_recorded_too(app, client, settings, start_worker):
    start_worker(settings)
    result = app.tasks["system.ping"].delay(message="plain")
    # the producer's batch (task, payload, source) and the worker's land in any order
    record = wait_until(lambda: (j := _finished(client, result.id)) and j.source and j,
                        message="the job record")
    assert record.status == JobStatus.SUCCEEDED
    assert record.kwargs == {"message": "plain"}
    assert record.source == "api"


def _finished(client, job_id):
    try:
        job = client.get_job(job_id)
    except Exception:
        return None
    return job if job.finished else None


def test_retries_with_backoff_until_dead(client, make_settings, settings, start_worker):
    start_worker(settings.model_copy(update={"retry_max": 2}))
    job = client.enqueue("system.sleep", {"seconds": 0, "fail": True})
    with pytest.raises(JobFailed) as err:
        job.wait(timeout=60)
    assert err.value.status == JobStatus.DEAD
    done = client.get_job(job.id)
    assert done.attempts == 3 and done.error_type == "RetryableError"
    attempts = client.attempts(job.id)
    assert [a.reason for a in attempts] == ["first_run", "retry", "retry"]
    assert [a.outcome for a in attempts] == ["retried", "retried", "dead"]
    # backoff: every retry waited before it started
    for before, after in zip(attempts, attempts[1:], strict=False):
        assert after.started_at > before.finished_at


def test_permanent_error_fails_at_once(client, settings, start_worker):
    start_worker(settings)
    job = client.enqueue("system.sleep", {"seconds": 0, "fail": True, "permanent": True})
    with pytest.raises(JobFailed):
        job.wait(timeout=30)
    done = client.get_job(job.id)
    assert done.status == JobStatus.FAILED and done.attempts == 1
    assert "asked to fail permanently" in done.error_message and done.traceback


def test_progress_is_reported(client, settings, start_worker):
    start_worker(settings)
    job = client.enqueue("system.sleep", {"seconds": 2, "steps": 4})
    seen = wait_until(lambda: (client.get_job(job.id).progress or None), timeout=30,
                      message="a progress report")
    assert seen["total"] == 4 and 1 <= seen["current"] <= 4
    job.wait(timeout=30)
    assert client.get_job(job.id).progress["current"] == 4


def test_a_nul_character_in_a_result_or_error_is_recorded_escaped(settings, start_worker):
    """PostgreSQL keeps no NUL character; before, one such result failed every later batch of
    the worker's records, forever. Both stores record it the same way."""
    from jobs.client import Client
    from worker.factory import create_app

    settings = settings.model_copy(update={"task_modules": ["tests.core.sample_tasks"]})
    client = Client(create_app(settings))
    start_worker(settings)
    ok = client.enqueue("testing.nul", {})
    bad = client.enqueue("testing.nul", {"fail": True})
    assert ok.wait(timeout=30) == {"repr": "'a\\x00b'"}
    failed = bad.wait_finished(timeout=30)
    assert failed.status == JobStatus.DEAD and failed.error_message == "bad\\x00byte"
    assert "\x00" not in (failed.traceback or "")
    assert client.get_job(ok.id).progress["message"] == "half\\x00way"
    assert client.enqueue("system.ping", {"message": "after"}).wait(timeout=30)["message"] == "after"
