"""SIGTERM under load: running short jobs finish within `shutdown_grace`, long ones are stopped
and go back to the queue, jobs not yet started stay queued; nothing unfinished is acknowledged,
and the next worker runs what is left, once."""

from __future__ import annotations

import signal

import pytest

from jobs.models import JobStatus
from tests.chaos.support import all_finished, describe, ledger
from tests.conftest import wait_until
from worker.health import message_ids


@pytest.mark.slow
def test_sigterm_finishes_short_jobs_requeues_long_ones_and_acks_nothing_unfinished(
        chaos_settings, client_for, start_worker):
    settings = chaos_settings.model_copy(update={"shutdown_grace": 3.0})
    c = client_for(settings)
    first = start_worker(settings, concurrency=3)
    long = c.enqueue("system.sleep", {"seconds": 6, "steps": 6})
    short = [c.enqueue("system.sleep", {"seconds": 1, "steps": 1}) for _ in range(2)]
    wait_until(lambda: all(c.get_job(j.id).status == JobStatus.STARTED for j in [long, *short]),
               message="the three jobs to start")
    waiting = [c.enqueue("system.ping", {"message": str(i)}) for i in range(5)]

    first.proc.send_signal(signal.SIGTERM)
    first.proc.wait(30)
    book = ledger(c, [j.id for j in short])
    assert all(e.status == JobStatus.SUCCEEDED and len(e.history) == 1 for e in book.values()), describe(book)
    assert c.get_job(long.id).status != JobStatus.SUCCEEDED
    # Nothing that did not finish was acknowledged: its message is still in Redis.
    assert message_ids(settings.broker_url) == {long.id, *(j.id for j in waiting)}

    start_worker(settings.model_copy(update={"shutdown_grace": 60.0}), concurrency=3)
    ids = [long.id, *(j.id for j in short + waiting)]
    wait_until(lambda: all_finished(c, ids), timeout=60, message="the next worker to run the rest")
    book = ledger(c, ids)
    assert all(e.status == JobStatus.SUCCEEDED and e.successes == 1 for e in book.values()), describe(book)
    assert book[long.id].reasons == ["first_run", "redelivery"]
    assert all(len(book[j.id].history) == 1 for j in waiting)
