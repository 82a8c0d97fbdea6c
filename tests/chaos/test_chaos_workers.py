"""Workers SIGKILLed under a stream of jobs: every job ends succeeded, none succeeds twice.

A whole worker (main process and pool children) and a single pool child are killed while they
run jobs. Lost-worker recovery (worker/recovery.py) gives the whole worker's messages back once
its claim lapses; Celery requeues a lost child's message itself (reject_on_worker_lost). A long
job on a worker that stays alive is claimed the whole time and must never run a second time.

Each kill lands while the victim process runs a job whose start is already in the job store:
the records of the jobs that process finished before are then written too (one buffer per
process). A kill in the instant after a job ended loses that job's record: see
test_chaos_records.py.
"""

from __future__ import annotations

import os
import signal

import pytest

from tests.chaos.support import all_finished, describe, ledger, statuses
from tests.conftest import wait_until

SHORT = {"seconds": 0.3, "steps": 1}
VICTIM = {"seconds": 3, "steps": 1}


def _running_in(client, job_ids, pids):
    """The pids among `pids` that the job store shows running one of `job_ids` right now."""
    return {a.pid for i in job_ids for a in client.attempts(i) if a.pid in pids and a.outcome == "running"}


@pytest.mark.slow
def test_killed_worker_and_pool_child_lose_nothing_and_run_nothing_twice(
        chaos_settings, chaos_client, start_worker):
    c = chaos_client
    survivor = start_worker(chaos_settings, queues="default", concurrency=2)
    long = c.enqueue("system.sleep", {"seconds": 8, "steps": 8})
    [first] = wait_until(lambda: c.attempts(long.id), message="the long job to start")
    # The doomed worker takes its jobs from a queue of its own, so both its children run one.
    doomed = start_worker(chaos_settings, queues="email", concurrency=2)
    doomed_children = set(doomed.children())
    doomed_jobs = [c.enqueue("system.sleep", VICTIM, queue="email") for _ in range(2)]
    [child] = set(survivor.children()) - {first.pid}
    victim = c.enqueue("system.sleep", VICTIM)  # for the survivor's free child
    stream = [c.enqueue("system.sleep", SHORT) for _ in range(30)]

    # 1. The whole worker, while both its children run a job.
    wait_until(lambda: _running_in(c, [j.id for j in doomed_jobs], doomed_children) == doomed_children,
               message="the doomed worker to run its jobs")
    doomed.kill()
    # 2. One pool child of the surviving worker (not the one running the long job), mid-job.
    wait_until(lambda: _running_in(c, [victim.id], {child}),
               message=f"pool child {child} to run the victim; {survivor.children()} {c.attempts(victim.id)}")
    os.kill(child, signal.SIGKILL)
    start_worker(chaos_settings, concurrency=2)  # the replacement, on every queue

    ids = [long.id, victim.id, *(j.id for j in doomed_jobs + stream)]
    wait_until(lambda: all_finished(c, ids), timeout=120, message="every job to finish")
    book = ledger(c, ids)
    assert statuses(book) == {"succeeded": len(ids)}, describe(book)
    assert all(e.successes == 1 for e in book.values()), describe(book)
    # The long job's worker stayed alive: it ran once, however long it took.
    assert book[long.id].history == (("first_run", "succeeded", first.pid),)
    # A job whose worker died shows the lost attempt, then a redelivery that succeeded.
    for job_id in [victim.id, *(j.id for j in doomed_jobs)]:
        e = book[job_id]
        assert e.reasons == ["first_run", "redelivery"], describe(book)
        assert e.outcomes == ["lost", "succeeded"], describe(book)
        assert e.attempts == 2
    assert book[victim.id].history[0][2] == child
    assert {book[j.id].history[0][2] for j in doomed_jobs} == doomed_children
    # Nobody else was disturbed.
    assert all(len(book[j.id].history) == 1 for j in stream), describe(book)
