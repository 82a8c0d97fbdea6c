"""A worker killed outright: its jobs run again elsewhere within a minute; live ones never twice."""

from __future__ import annotations

import pytest

from jobs.models import JobStatus
from tests.conftest import wait_until

pytestmark = pytest.mark.one_database  # the job store is not the subject here

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


def test_stall_detection_rules():
    from worker.recovery import stalled_nodes

    now = 1000.0
    nodes = {
        "busy@a": {"queues": ["default"], "tags": ["t1", "t2"], "concurrency": 2, "received": 100, "started": 50},
        "idle@b": {"queues": ["email"], "tags": [], "concurrency": 2, "received": 100, "started": 50},
        "stuck@c": {"queues": ["default"], "tags": [], "concurrency": 2, "received": 100, "started": 50},
        "fresh@d": {"queues": ["default"], "tags": [], "concurrency": 2, "received": 0, "started": 990},
    }
    depths = {"default": 5, "email": 0}
    assert stalled_nodes(nodes, depths, stall_after=60, now=now) == ["stuck@c"]


def test_a_worker_that_stops_consuming_is_reported_stalled(client, fast_settings, start_worker, run_cli):
    import json
    import os
    import signal as sig

    settings = fast_settings.model_copy(update={"stall_after": 2})
    w = start_worker(settings, concurrency=1)
    client.enqueue("system.ping", {}).wait(timeout=30)
    import redis

    from worker.recovery import NODE_PREFIX

    r = redis.Redis.from_url(settings.broker_url)
    key = next(r.scan_iter(match=NODE_PREFIX + "*"))
    wait_until(lambda: json.loads(r.get(key))["tags"] == [], message="the worker to hold nothing")
    os.kill(w.pid, sig.SIGSTOP)  # alive, connected, not consuming...
    try:
        claim = json.loads(r.get(key))
        r.set(key, json.dumps(claim), ex=60)  # ...but still heartbeating, as a stuck consumer does
        for _ in range(3):  # (the first may land in the BRPOP the worker had pending)
            client.enqueue("system.ping", {})
        import time

        time.sleep(3)
        out = run_cli(settings, "status", "--json", "--timeout", "0.5")
        report = json.loads(out.stdout)
        assert out.returncode == 3 and report["stalled"] == [key.decode().removeprefix(NODE_PREFIX)]
    finally:
        os.kill(w.pid, sig.SIGCONT)
