"""A worker killed outright: its jobs run again elsewhere within a minute; live ones never twice."""

from __future__ import annotations

import pytest

from jobs.models import JobStatus
from tests.conftest import wait_until

FAST = {"recovery_heartbeat_interval": 0.5, "recovery_node_ttl": 3, "recovery_sweep_interval": 1,
        "recovery_min_age": 2}


@pytest.fixture
def fast_settings(settings):
    return settings.model_copy(update=FAST)


def test_killed_worker_job_runs_again_on_another(client, fast_settings, start_worker):
    doomed = start_worker(fast_settings, concurrency=1)
    job = client.enqueue("system.sleep", {"seconds": 4, "steps": 4})
    wait_until(lambda: client.get_job(job.id).status == JobStatus.STARTED, message="the job to start")
    doomed.kill()  # SIGKILL the whole worker: main process and pool child
    start_worker(fast_settings, concurrency=1)
    job.wait(timeout=60)
    attempts = client.attempts(job.id)
    assert [(a.reason, a.outcome) for a in attempts] == [("first_run", "lost"), ("redelivery", "succeeded")]
    assert client.get_job(job.id).attempts == 2


def test_long_job_on_a_live_worker_is_never_handed_to_another(client, fast_settings, start_worker):
    start_worker(fast_settings, concurrency=1)
    start_worker(fast_settings, concurrency=1)  # idle, and sweeping
    job = client.enqueue("system.sleep", {"seconds": 8, "steps": 8})
    job.wait(timeout=60)
    assert [a.reason for a in client.attempts(job.id)] == ["first_run"]


def test_a_job_that_keeps_killing_its_worker_is_quarantined(client, fast_settings, start_worker):
    start_worker(fast_settings.model_copy(update={"max_redeliveries": 2}), concurrency=1)
    job = client.enqueue("system.sleep", {"seconds": 0, "crash": True})
    done = job.wait_finished(timeout=90)
    assert done.status == JobStatus.DEAD and done.error_type == "Quarantined"
    outcomes = [a.outcome for a in client.attempts(job.id)]
    assert outcomes.count("lost") == 3 and outcomes[-1] == "dead"
    # and the worker is still there
    assert client.enqueue("system.ping", {}).wait(timeout=30)
