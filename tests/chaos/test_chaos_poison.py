"""Poison jobs beside a stream of healthy ones, on workers that must outlive them all.

- a job that always fails goes through its retries with backoff to `dead`; the CLI lists it
  and replays it;
- a job over the hard time limit is killed and recorded failed (TimeLimitExceeded), not rerun;
- a job that kills its own process is quarantined as dead after `max_redeliveries`;
- `worker_max_tasks_per_child` recycles pool children without losing a job.
"""

from __future__ import annotations

import json

import pytest

from jobs.models import JobStatus
from tests.chaos.support import all_finished, describe, ledger, statuses
from tests.conftest import ROOT, wait_until
from worker.health import message_ids

POISON = {"worker_max_tasks_per_child": 4, "retry_max": 2, "max_redeliveries": 2}


@pytest.mark.slow
def test_poison_jobs_end_dead_or_failed_and_the_stream_beside_them_succeeds(
        chaos_settings, client_for, start_worker, run_cli):
    def conveyor(*args):  # the CLI, able to import the application's tasks (tests.core.sample_tasks)
        return run_cli(settings, *args, extra_env={"PYTHONPATH": str(ROOT)})

    settings = chaos_settings.model_copy(update=POISON)
    # The time limit is given to the producer too: today the producer's limit is the one that
    # counts (see test_the_workers_time_limit_applies_whoever_enqueued below).
    limited_settings = settings.model_copy(update={"task_time_limit": 2})
    c = client_for(limited_settings)
    worker = start_worker(settings, queues="default", concurrency=2)
    # The time limit on a worker of its own (queue `email`): a child killed by the limit and one
    # killed by a crashing job in the same instant are two stories, kept apart.
    limited = start_worker(limited_settings, queues="email", concurrency=1)

    # Recycling first, before anything kills a child: 12 jobs, at most 4 per child.
    pings = [c.enqueue("system.ping", {"message": str(i)}) for i in range(12)]
    pids = {p.wait(timeout=60)["pid"] for p in pings}
    assert len(pids) >= 3, f"pool children were not recycled: {pids}"
    assert statuses(ledger(c, [p.id for p in pings])) == {"succeeded": 12}

    failing = c.enqueue("system.sleep", {"seconds": 0, "fail": True})
    too_long = c.enqueue("system.sleep", {"seconds": 10, "steps": 10}, queue="email")
    after_limit = c.enqueue("system.ping", {"message": "still here"}, queue="email")
    # (It sleeps a little before it kills its process, so that records of the jobs that process
    # ran just before are written first: see test_chaos_records.py for why that matters.)
    crashing = c.enqueue("system.sleep", {"seconds": 0.5, "steps": 1, "crash": True})
    stream = [c.enqueue("system.sleep", {"seconds": 0.1, "steps": 1}) for _ in range(30)]
    ids = [failing.id, too_long.id, after_limit.id, crashing.id] + [j.id for j in stream]
    wait_until(lambda: all_finished(c, ids), timeout=120, message="every job to finish")
    book = ledger(c, ids)

    # The stream is untouched by its neighbours: one clean attempt each.
    healthy = {j.id: book[j.id] for j in stream}
    assert statuses(healthy) == {"succeeded": 30}, describe(healthy)
    assert all(len(e.history) == 1 for e in healthy.values()), describe(healthy)

    dead = c.get_job(failing.id)
    assert (dead.status, dead.error_type, dead.attempts) == (JobStatus.DEAD, "RetryableError", 3)
    assert book[failing.id].reasons == ["first_run", "retry", "retry"]
    assert book[failing.id].outcomes == ["retried", "retried", "dead"]
    tries = c.attempts(failing.id)
    assert all(b.started_at >= a.finished_at for a, b in zip(tries, tries[1:], strict=False))

    killed = c.get_job(too_long.id)
    assert killed.status == JobStatus.FAILED and "TimeLimitExceeded" in (killed.error_type or ""), killed
    assert len(book[too_long.id].history) == 1  # acknowledged, never rerun
    assert book[after_limit.id].status == JobStatus.SUCCEEDED and limited.proc.poll() is None

    quarantined = c.get_job(crashing.id)
    assert (quarantined.status, quarantined.error_type) == (JobStatus.DEAD, "Quarantined")
    assert book[crashing.id].outcomes == ["lost"] * 3 + ["dead"], describe(book)

    assert not message_ids(settings.broker_url)  # nothing left behind in Redis
    assert worker.proc.poll() is None

    # The dead job, seen and replayed from the command line.
    listed = conveyor("jobs", "list", "--status", "dead", "--json")
    assert listed.returncode == 0, listed.stderr
    assert {j["id"] for j in json.loads(listed.stdout)} == {failing.id, crashing.id}
    table = conveyor("jobs", "list", "--status", "dead")
    assert table.returncode == 0 and failing.id in table.stdout
    replayed = conveyor("jobs", "retry", failing.id, "--json")
    assert replayed.returncode == 0, replayed.stderr
    again = json.loads(replayed.stdout)
    assert again["retry_of"] == failing.id and again["kwargs"] == dead.kwargs
    done = c.get_job(again["id"]).wait_finished(timeout=60)
    assert done.status == JobStatus.DEAD  # it still fails, as asked: replayed, not repaired
    assert c.attempts(done.id)[0].reason == "manual_retry"
    refused = conveyor("jobs", "retry", pings[0].id)
    assert refused.returncode != 0 and "succeeded" in refused.stderr + refused.stdout


@pytest.mark.slow
def test_the_workers_time_limit_applies_whoever_enqueued(chaos_settings, client_for, start_worker):
    c = client_for(chaos_settings)  # a producer with the default limit (an hour)
    start_worker(chaos_settings.model_copy(update={"task_time_limit": 1}), concurrency=1)
    job = c.enqueue("system.sleep", {"seconds": 4, "steps": 4}).wait_finished(timeout=60)
    assert job.status == JobStatus.FAILED and job.error_type == "TimeLimitExceeded", job
