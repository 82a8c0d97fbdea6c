"""The client API's promises: validation before anything is written, idempotency, bulk enqueue."""

from __future__ import annotations

import threading

import pytest
import redis

from jobs.errors import (
    BrokerUnavailable,
    InvalidInput,
    InvalidTransition,
    PayloadInvalid,
    PayloadTooLarge,
    UnknownTask,
)
from jobs.models import JobStatus
from worker.health import queue_depths


def _nothing_stored(client, settings):
    assert client.list_jobs(limit=10) == []
    assert sum(queue_depths(settings.broker_url).values()) == 0


def test_invalid_payload_names_each_bad_field_and_writes_nothing(client, settings):
    with pytest.raises(PayloadInvalid) as err:
        client.enqueue("system.sleep", {"seconds": -1, "steps": "many", "colour": "red"})
    assert set(err.value.fields) == {"seconds", "steps", "colour"}
    assert "seconds" in str(err.value) and "system.sleep" in str(err.value)
    _nothing_stored(client, settings)


def test_unknown_task_lists_the_known_ones(client, settings):
    with pytest.raises(UnknownTask) as err:
        client.enqueue("system.pong", {})
    assert "system.ping" in str(err.value) and "system.sleep" in err.value.known
    _nothing_stored(client, settings)


def test_options_are_checked(client, settings):
    with pytest.raises(InvalidInput):
        client.enqueue("system.ping", {}, countdown=5, eta=__import__("datetime").datetime.now())
    with pytest.raises(InvalidInput):
        client.enqueue("system.ping", {}, priority=12)
    with pytest.raises(InvalidInput):
        client.enqueue("system.ping", ["not", "an", "object"])  # type: ignore[arg-type]
    _nothing_stored(client, settings)


def test_payload_too_large_writes_nothing(make_settings, redis_url, sqlite_url):
    from jobs.client import Client
    from worker.factory import create_app

    settings = make_settings(broker_url=redis_url, database_url=sqlite_url, max_payload_bytes=1024)
    client = Client(create_app(settings))
    with pytest.raises(PayloadTooLarge):
        client.enqueue("system.ping", {"message": "x" * 5000})
    _nothing_stored(client, settings)


def test_idempotency_key_under_concurrent_callers(client, settings):
    results, errors = [], []
    barrier = threading.Barrier(8)

    def go():
        barrier.wait()
        try:
            results.append(client.enqueue("system.ping", {"message": "once"}, idempotency_key="k-1"))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len({j.id for j in results}) == 1
    assert len(client.list_jobs(limit=100)) == 1
    assert queue_depths(settings.broker_url)["default"] == 1  # published once


def test_enqueue_many_records_and_publishes_every_job(client, settings):
    jobs = client.enqueue_many("system.ping", [{"message": str(i)} for i in range(250)])
    assert len({j.id for j in jobs}) == 250
    stored = client.list_jobs(limit=1000)
    assert {j.id for j in stored} == {j.id for j in jobs}
    assert all(j.status == JobStatus.QUEUED for j in stored)
    assert queue_depths(settings.broker_url)["default"] == 250


def test_enqueue_many_validates_everything_first(client, settings):
    with pytest.raises(PayloadInvalid) as err:
        client.enqueue_many("system.sleep", [{"seconds": 1}, {"seconds": -2}, {"seconds": 1}])
    assert err.value.fields == ["1.seconds"]
    _nothing_stored(client, settings)


def test_broker_down_fails_fast_and_records_nothing(make_settings, sqlite_url):
    import time

    from jobs.client import Client
    from tests.conftest import free_port
    from worker.factory import create_app

    settings = make_settings(broker_url=f"redis://127.0.0.1:{free_port()}/0", database_url=sqlite_url)
    client = Client(create_app(settings))
    t0 = time.monotonic()
    with pytest.raises(BrokerUnavailable) as err:
        client.enqueue("system.ping", {})
    assert time.monotonic() - t0 < 10
    assert "127.0.0.1" in str(err.value)
    assert client.list_jobs(limit=10) == []


def test_cancel_and_retry_rules(client, settings):
    job = client.enqueue("system.ping", {})
    cancelled = client.cancel(job.id)
    assert cancelled.status == JobStatus.REVOKED
    with pytest.raises(InvalidTransition):
        client.cancel(job.id)
    again = client.retry(job.id)
    assert again.retry_of == job.id and again.id != job.id
    with pytest.raises(InvalidTransition):
        client.retry(again.id)  # still queued


def test_redis_url_password_is_masked():
    from config import mask_url

    assert mask_url("redis://:s3cret@redis.example:6380/0") == "redis://:***@redis.example:6380/0"
    assert mask_url("postgresql://app:pw@db/conveyor") == "postgresql://app:***@db/conveyor"
    assert mask_url("redis://localhost:6379/0") == "redis://localhost:6379/0"
    assert redis  # the module under test talks to Redis elsewhere
