"""Delivery guarantees: transactional enqueue, held long delays, secrets at rest, lost messages,
graceful shutdown."""

from __future__ import annotations

import signal
import time

import pytest
import redis
from sqlalchemy import text
from sqlalchemy.orm import Session

from jobs.db import get_engine
from jobs.errors import JobFailed, JobNotFound
from jobs.models import JobStatus
from jobs.secrets import generate_key
from tests.conftest import wait_until
from worker.health import queue_depths

APP_TASKS = ["tests.core.sample_tasks"]


@pytest.fixture
def dsettings(settings):
    return settings.model_copy(update={
        "task_modules": APP_TASKS, "relay_interval": 0.2, "relay_grace": 0.5,
        "encryption_key": __import__("pydantic").SecretStr(generate_key()),
    })


@pytest.fixture
def dclient(dsettings):
    from jobs.client import Client
    from worker.factory import create_app

    return Client(create_app(dsettings))


def _business_table(url):
    with get_engine(url).begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, total INTEGER)"))


def test_transactional_enqueue_publishes_on_commit_only(dclient, dsettings, start_worker):
    _business_table(dsettings.database_url)
    start_worker(dsettings)
    with Session(get_engine(dsettings.database_url)) as s:
        s.execute(text("INSERT INTO orders (id, total) VALUES (1, 100)"))
        job = dclient.enqueue("system.ping", {"message": "order 1"}, session=s)
        assert queue_depths(dsettings.broker_url)["default"] == 0  # not before the commit
        s.commit()
    assert job.wait(timeout=30)["message"] == "order 1"

    with Session(get_engine(dsettings.database_url)) as s:
        s.execute(text("INSERT INTO orders (id, total) VALUES (2, 200)"))
        rolled = dclient.enqueue("system.ping", {"message": "order 2"}, session=s)
        s.rollback()
    time.sleep(1.5)  # several relay passes
    with pytest.raises(JobNotFound):
        dclient.get_job(rolled.id)
    with get_engine(dsettings.database_url).connect() as c:
        assert c.execute(text("SELECT count(*) FROM orders")).scalar() == 1


def test_crash_between_commit_and_publish_loses_nothing(dclient, dsettings, start_worker):
    _business_table(dsettings.database_url)
    start_worker(dsettings)
    with Session(get_engine(dsettings.database_url)) as s:
        job = dclient.enqueue("system.ping", {"message": "survivor"}, session=s)
        s.info["conveyor_publish"].clear()  # the process "dies" right after its commit
        s.commit()
    assert dclient.get_job(job.id).status == JobStatus.QUEUED
    assert job.wait(timeout=30)["message"] == "survivor"  # the relay published it, once
    assert len(dclient.attempts(job.id)) == 1


def test_jobs_published_outside_enqueue_are_never_relayed_again(dclient, dsettings, start_worker):
    """A plain `.delay()` (or a workflow's publish) is recorded as published: a worker's relay
    must not take it for a transactional job whose commit hook died, however long it waits."""
    ping = dclient.app.tasks["system.ping"]
    res = ping.apply_async(kwargs={"message": "once"}, queue="maintenance")  # no worker there
    job_id = res.id
    wait_until(lambda: dclient.store.list(limit=5), timeout=10, message="the job's record")
    start_worker(dsettings, queues="default")  # its relay passes every 0.2 s, grace 0.5 s
    time.sleep(2)
    assert queue_depths(dsettings.broker_url)["maintenance"] == 1  # still exactly one message
    row = dclient.store.get(job_id)
    assert row.status == JobStatus.QUEUED and row.published_at is not None


@pytest.mark.one_database
def test_long_delays_are_held_in_the_store_until_due(dclient, dsettings, start_worker):
    from jobs.client import Client
    from worker.factory import create_app

    settings = dsettings.model_copy(update={"hold_threshold": 1.0})
    client = Client(create_app(settings))
    start_worker(settings)
    job = client.enqueue("system.ping", {"message": "later"}, countdown=3)
    assert sum(queue_depths(settings.broker_url).values()) == 0
    row = client.store.get(job.id)
    assert row.published_at is None and row.publish_after is not None
    t0 = time.monotonic()
    assert job.wait(timeout=30)["message"] == "later"
    assert time.monotonic() - t0 > 1.5
    started = client.get_job(job.id).started_at
    assert started >= row.publish_after


def test_secrets_are_encrypted_at_rest_and_replayed_on_retry(dclient, dsettings, start_worker):
    start_worker(dsettings)
    job = dclient.enqueue("testing.charge", {"account": "acme", "api_token": "tok_live_9876", "fail": True})
    with pytest.raises(JobFailed):
        job.wait(timeout=30)
    row = dclient.store.get(job.id)
    assert row.kwargs["api_token"] == "***" and "9876" not in (row.secrets or "")
    with get_engine(dsettings.database_url).connect() as c:
        raw = " ".join(str(v) for v in c.execute(text("SELECT * FROM jobs")).one())
    assert "tok_live" not in raw
    # the retry gets the real token back (and this time does not fail: fail=True is kept, so
    # flip it through a fresh enqueue built from the record's payload)
    payload = dclient.payload_of(row)
    assert payload["api_token"] == "tok_live_9876"
    again = dclient.retry(job.id)
    with pytest.raises(JobFailed):
        again.wait(timeout=30)
    assert dclient.payload_of(dclient.store.get(again.id))["api_token"] == "tok_live_9876"


def test_recover_lost_republishes_safe_jobs_and_marks_the_rest(dclient, dsettings, start_worker):
    safe = dclient.enqueue("system.ping", {"message": "come back"})
    unsafe = dclient.enqueue("testing.not_repeatable", {"n": 1})
    redis.Redis.from_url(dsettings.broker_url).flushdb()  # Redis lost every message
    start_worker(dsettings)
    out = dclient.enqueue("maintenance.recover_lost", {"older_than_seconds": 0.1}).wait(timeout=30)
    assert out["republished"] == [safe.id] and out["lost"] == [unsafe.id]
    assert safe.wait(timeout=30)["message"] == "come back"
    assert dclient.get_job(unsafe.id).status == JobStatus.LOST


@pytest.mark.one_database
def test_sigterm_lets_short_jobs_finish_and_requeues_long_ones(dclient, dsettings, start_worker):
    settings = dsettings.model_copy(update={"shutdown_grace": 2.0})
    w = start_worker(settings, concurrency=2)
    short = dclient.enqueue("system.sleep", {"seconds": 1, "steps": 1})
    long = dclient.enqueue("system.sleep", {"seconds": 30, "steps": 30})
    wait_until(lambda: all(dclient.get_job(j.id).status == JobStatus.STARTED for j in (short, long)),
               message="both jobs to start")
    w.proc.send_signal(signal.SIGTERM)
    w.proc.wait(30)
    assert dclient.get_job(short.id).status == JobStatus.SUCCEEDED
    assert dclient.get_job(long.id).status != JobStatus.SUCCEEDED
    assert queue_depths(dsettings.broker_url)["default"] == 1  # requeued, not acknowledged
    start_worker(settings.model_copy(update={"shutdown_grace": 60.0}))
    wait_until(lambda: len(dclient.attempts(long.id)) == 2, timeout=30, message="the rerun")
    dclient.cancel(long.id, terminate=True)  # proven; do not sit through the rest of it
