"""What the chaos tests found in how attempts are recorded.

1. A pool child used to keep its lifecycle records in memory for up to `record_flush_interval`
   *after* the job's message was acknowledged, so a SIGKILL in that window (the OOM killer, a
   crashing job, `kill -9`) lost the record of a job that succeeded: the job stayed `queued`,
   and `maintenance.recover_lost` would then publish it again. Children now send a job's records
   to the worker's recorder process before its result goes back (worker/recorder_process.py).
   The test stretches the flush interval to 5 s so a buffered record would be lost every time.
2. A job killed by the hard time limit is recorded `failed` by the worker's main process, which
   does not know the attempt number (worker/lifecycle.py `_finish`, FINAL_ORDER branch): the
   job row is final, but its attempt stays `running` forever.
"""

from __future__ import annotations

import pytest

from jobs.models import JobStatus
from tests.conftest import wait_until


@pytest.mark.slow
def test_a_finished_jobs_record_survives_its_pool_child_being_killed(chaos_settings, client_for,
                                                                      start_worker):
    settings = chaos_settings.model_copy(update={"record_flush_interval": 5.0, "max_redeliveries": 1})
    c = client_for(settings)
    start_worker(settings, concurrency=1)  # one child: it runs `done`, then the crash at once
    done = c.enqueue("system.ping", {"message": "ran"})
    crash = c.enqueue("system.sleep", {"seconds": 0, "crash": True})
    assert crash.wait_finished(timeout=60).status == JobStatus.DEAD  # quarantined: the child died
    job = wait_until(lambda: (j := c.get_job(done.id)).finished and j, timeout=8,
                     message="the record of the job that ran just before the crash")
    assert job.status == JobStatus.SUCCEEDED and job.result["message"] == "ran"


@pytest.mark.slow
def test_a_job_killed_by_the_time_limit_has_its_attempt_closed(chaos_settings, client_for, start_worker):
    settings = chaos_settings.model_copy(update={"task_time_limit": 1})
    c = client_for(settings)
    start_worker(settings, concurrency=1)
    job = c.enqueue("system.sleep", {"seconds": 5, "steps": 5}).wait_finished(timeout=60)
    assert job.status == JobStatus.FAILED and job.error_type == "TimeLimitExceeded"
    [attempt] = c.attempts(job.id)
    assert attempt.outcome == "failed" and attempt.finished_at is not None


@pytest.mark.slow
def test_jobs_are_still_recorded_after_the_recorder_process_is_killed(chaos_settings, client_for,
                                                                        start_worker):
    import os
    import signal

    c = client_for(chaos_settings)
    worker = start_worker(chaos_settings)
    assert c.enqueue("system.ping", {"message": "before"}).wait(timeout=30)["message"] == "before"
    recorder = worker.recorder_process()
    assert recorder is not None
    sockets = {os.readlink(f"/proc/{recorder}/fd/{fd}")[8:-1] for fd in os.listdir(f"/proc/{recorder}/fd")
               if os.readlink(f"/proc/{recorder}/fd/{fd}").startswith("socket:[")}
    assert sockets
    os.kill(recorder, signal.SIGKILL)  # what it held but had not written is lost with it

    def sockets_closed() -> bool:
        # Not "the process is a zombie": Linux may close a killed process's sockets a moment
        # after it became one (a deferred close), and a record sent meanwhile is lost with it.
        with open("/proc/net/unix") as f:
            live = {line.split()[6] for line in list(f)[1:]}
        return not live & sockets

    wait_until(sockets_closed, timeout=10, message="the recorder process's sockets to close")
    # the children notice the socket is gone and record from their own process from then on
    jobs = [c.enqueue("system.ping", {"message": str(i)}) for i in range(6)]
    for j in jobs:
        assert j.wait_finished(timeout=60).status == JobStatus.SUCCEEDED
    assert worker.proc.poll() is None


def test_a_large_result_reaches_the_job_store_through_the_recorder_process(chaos_settings, client_for,
                                                                           start_worker):
    c = client_for(chaos_settings)
    start_worker(chaos_settings, concurrency=1)
    # far more than a Unix socket buffers: the child waits for the recorder process to read
    job = c.enqueue("testing.large_result", {"chars": 900_000})
    assert job.wait(timeout=60) == "x" * 900_000
    assert c.get_job(job.id).result == "x" * 900_000
