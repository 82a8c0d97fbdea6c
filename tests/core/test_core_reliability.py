"""What must survive: a database outage under a running worker, a killed pool child, a pickle."""

from __future__ import annotations

import os
import pickle
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from kombu import Connection, Exchange, Producer

from jobs.models import JobStatus
from tests.conftest import PG_URL, pg_available, wait_until
from tests.tcp_proxy import TcpProxy


def _all_succeeded(client, ids):
    jobs = [client.get_job(i) for i in ids]
    return all(j.status == JobStatus.SUCCEEDED and j.attempts == 1 for j in jobs)


@pytest.mark.postgres
def test_database_unreachable_while_worker_runs_loses_nothing(make_settings, redis_url, tmp_path,
                                                              start_worker, request):
    """The worker's path to PostgreSQL is cut while jobs run; once it is back every record lands."""
    if not pg_available():
        pytest.skip("PostgreSQL is not available")
    from urllib.parse import urlsplit

    from tests.conftest import make_database

    gen = make_database("postgresql", tmp_path)
    direct_url = next(gen)
    request.addfinalizer(lambda: next(gen, None))
    pg = urlsplit(PG_URL)
    proxy = TcpProxy(pg.hostname or "127.0.0.1", pg.port or 5432).start()
    proxied_url = direct_url.replace(f"{pg.hostname}:{pg.port}", f"127.0.0.1:{proxy.port}")

    from jobs.client import Client
    from worker.factory import create_app

    worker_settings = make_settings(broker_url=redis_url, database_url=proxied_url)
    client = Client(create_app(make_settings(broker_url=redis_url, database_url=direct_url)))
    start_worker(worker_settings)
    client.enqueue("system.ping", {}).wait(timeout=30)

    proxy.stop()  # the worker can no longer reach the database
    jobs = [client.enqueue("system.sleep", {"seconds": 0.05, "steps": 1}) for _ in range(20)]
    # they run anyway (the Redis side is fine) but nothing can be written yet
    time.sleep(3)
    assert [client.get_job(j.id).status for j in jobs] == [JobStatus.QUEUED] * len(jobs)

    proxy = TcpProxy(pg.hostname or "127.0.0.1", pg.port or 5432, port=proxy.port).start()
    wait_until(lambda: _all_succeeded(client, [j.id for j in jobs]), timeout=60,
               message="the records the worker kept while the database was away")
    proxy.stop()


@pytest.mark.slow
@pytest.mark.one_database
def test_sqlite_locked_while_worker_runs_loses_nothing(client, make_settings, redis_url, sqlite_url,
                                                       start_worker):
    """SQLite's outage is a lock held past the busy timeout: records wait, then land."""
    settings = make_settings(broker_url=redis_url, database_url=sqlite_url)
    start_worker(settings)
    from jobs.client import Client
    from worker.factory import create_app

    client = Client(create_app(settings))
    jobs = [client.enqueue("system.ping", {"message": str(i)}) for i in range(10)]
    path = sqlite_url.removeprefix("sqlite:///")
    lock = sqlite3.connect(path, timeout=1)
    lock.execute("BEGIN EXCLUSIVE")
    time.sleep(12)  # longer than the worker's busy timeout (10 s)
    lock.rollback()
    lock.close()
    wait_until(lambda: _all_succeeded(client, [j.id for j in jobs]), timeout=60,
               message="records written after the lock was released")


@pytest.mark.one_database
def test_killed_pool_child_redelivers_and_records_both_attempts(client, settings, start_worker):
    worker = start_worker(settings, concurrency=1)
    job = client.enqueue("system.sleep", {"seconds": 30, "steps": 30})
    wait_until(lambda: client.get_job(job.id).status == JobStatus.STARTED, timeout=30,
               message="the job to start")
    [child] = worker.children()
    os.kill(child, signal.SIGKILL)
    # Celery requeues the message of a lost child (reject_on_worker_lost); a new child runs it.
    wait_until(lambda: len(client.attempts(job.id)) >= 2, timeout=60, message="a second attempt")
    client.cancel(job.id, terminate=True)
    attempts = client.attempts(job.id)
    assert [a.reason for a in attempts[:2]] == ["first_run", "redelivery"]
    assert attempts[0].pid == child and attempts[1].pid != child
    assert worker.proc.poll() is None


class _Exploit:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


@pytest.mark.one_database
def test_pickled_message_is_refused_and_the_worker_lives_on(client, settings, start_worker, tmp_path):
    worker = start_worker(settings)
    marker = tmp_path / "pwned"
    body = pickle.dumps(((_Exploit(str(marker)),), {}, {}))
    with Connection(settings.broker_url) as conn:
        producer = Producer(conn)
        producer.publish(body, exchange=Exchange("default", type="direct"), routing_key="default",
                         content_type="application/x-python-serialize", content_encoding="binary",
                         headers={"id": "pickled-1", "task": "system.ping", "lang": "py"},
                         declare=[])
    wait_until(lambda: "untrusted content" in worker.output() or "pickle" in worker.output(),
               timeout=20, message="the worker to refuse the pickle")
    assert not marker.exists()
    assert client.enqueue("system.ping", {"message": "still here"}).wait(timeout=30)["message"] == "still here"
    assert worker.proc.poll() is None


@pytest.mark.one_database
def test_a_redelivered_job_whose_record_is_final_is_not_run_again(client, settings, start_worker):
    """A worker killed after a job ended but before its acknowledgement reached Redis: the message
    comes back marked redelivered; the job store already says the job succeeded."""
    worker = start_worker(settings, concurrency=1)
    job = client.enqueue("system.ping", {"message": "once"})
    assert job.wait(timeout=30)["message"] == "once"
    # the same message again, as kombu's restore would hand it out (marked redelivered)
    client.app.send_task("system.ping", kwargs={"message": "once"}, task_id=job.id, queue="default",
                         headers={"redelivered": True, "conveyor_recorded": True})
    wait_until(lambda: "acknowledged, not run again" in worker.output(), timeout=30,
               message="the worker to acknowledge the redelivered job without running it")
    attempts = client.attempts(job.id)
    assert [a.outcome for a in attempts] == ["succeeded"]
    assert client.get_job(job.id).status == JobStatus.SUCCEEDED
    client.enqueue("system.ping", {"message": "next"}).wait(timeout=30)  # and it acked: the queue moves
