"""The job store's PostgreSQL goes away under running workers and producers.

The worker reaches PostgreSQL through a TCP proxy the test cuts (tests/tcp_proxy.py). Jobs
keep running on the Redis side; each process keeps its lifecycle records in memory and writes
them once the database is back (jobs/recorder.py). A producer whose database is away cannot
record a job, so it raises `StoreUnavailable` and publishes nothing: a job never runs
unrecorded.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from jobs.errors import StoreUnavailable
from tests.chaos.support import all_finished, describe, ledger, statuses
from tests.conftest import PG_URL, make_database, pg_available, wait_until
from tests.tcp_proxy import TcpProxy
from worker.health import message_ids, queue_depths

SHORT = {"seconds": 0.2, "steps": 1}


@pytest.fixture
def pg_url(tmp_path, request):
    if not pg_available():
        pytest.skip("PostgreSQL is not available")
    gen = make_database("postgresql", tmp_path)
    url = next(gen)
    request.addfinalizer(lambda: next(gen, None))
    return url


@pytest.mark.slow
@pytest.mark.postgres
def test_database_down_jobs_keep_running_records_land_after_and_enqueue_refuses(
        chaos_settings, pg_url, client_for, start_worker):
    pg = urlsplit(PG_URL)
    target = (pg.hostname or "127.0.0.1", pg.port or 5432)
    proxy = TcpProxy(*target).start()
    proxied = pg_url.replace(f"{pg.hostname}:{pg.port}", f"127.0.0.1:{proxy.port}")
    through_proxy = chaos_settings.model_copy(update={"database_url": proxied})
    producer = client_for(through_proxy)  # shares the worker's fate
    reader = client_for(chaos_settings.model_copy(update={"database_url": pg_url}))
    # The worker consumes `default` only, so `email` shows whatever a failed enqueue published.
    worker = start_worker(through_proxy, queues="default", concurrency=2)
    broker = chaos_settings.broker_url

    jobs = [producer.enqueue("system.sleep", SHORT) for _ in range(20)]
    proxy.stop()
    try:
        # Jobs keep running: the worker takes and acknowledges (after the run) every message.
        wait_until(lambda: not message_ids(broker), timeout=60, message="the worker to run every job")
        # The enqueue path refuses, publishing nothing, alone or in bulk.
        with pytest.raises(StoreUnavailable):
            producer.enqueue("system.ping", {"message": "nowhere"}, queue="email")
        with pytest.raises(StoreUnavailable):
            producer.enqueue_many("system.ping", [{"message": "nowhere"}] * 3, queue="email")
        with pytest.raises(StoreUnavailable):
            producer.enqueue("system.ping", {"message": "nowhere"})
        assert queue_depths(broker)["email"] == 0 and not message_ids(broker)
    finally:
        proxy = TcpProxy(*target, port=proxy.port).start()

    ids = [j.id for j in jobs]
    wait_until(lambda: all_finished(reader, ids), timeout=60, message="the records kept while it was away")
    # Nothing dropped, and each job recorded once: one attempt, which succeeded.
    book = ledger(reader, ids)
    assert statuses(book) == {"succeeded": 20}, describe(book)
    assert all(e.history[0][:2] == ("first_run", "succeeded") and len(e.history) == 1
               for e in book.values()), describe(book)
    # The producer works again, and nothing it failed to enqueue exists anywhere.
    assert producer.enqueue("system.ping", {"message": "back"}).wait(timeout=60)["message"] == "back"
    assert len(reader.list_jobs(limit=1000)) == 21
    assert worker.proc.poll() is None
    proxy.stop()
