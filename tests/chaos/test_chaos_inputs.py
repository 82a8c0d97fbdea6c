"""Garbage in, at both doors.

- The client: random payloads for `system.sleep` and `system.ping` (and random task names)
  either become a job that is recorded *and* published, or raise a typed `InvalidInput` with
  nothing stored and nothing published. Checked on SQLite and PostgreSQL.
- The broker: raw messages pushed straight onto the `default` Redis list, past the client
  (not JSON, unknown task, wrong content type, several MB, no headers, a body of the wrong
  shape...). The worker logs them and lives on, runs a normal job next, and leaves no
  half-written job record behind.
"""

from __future__ import annotations

import base64
import json
import uuid
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from jobs.errors import InvalidInput
from jobs.models import FINISHED, JobStatus
from tests.conftest import wait_until
from worker.health import message_ids, queue_depths

# --- the client ---------------------------------------------------------------------------------
FIELDS = ["seconds", "fail", "permanent", "steps", "crash", "message"]
# NUL is left out: PostgreSQL refuses it with an untyped error (test_nul_in_a_payload_... below).
TEXT = st.text(alphabet=st.characters(exclude_characters="\x00", exclude_categories=()), max_size=30)
LEAF = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
        | st.floats(allow_nan=True, allow_infinity=True) | TEXT
        | st.sampled_from([b"bytes", Decimal("1.5"), (1, 2), {1, 2}, float("nan")]))
VALUE = st.recursive(LEAF, lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(TEXT, inner, max_size=3), max_leaves=6)
KEY = st.sampled_from(FIELDS) | TEXT | st.integers(0, 3)
PAYLOAD = (st.dictionaries(KEY, VALUE, max_size=5)
           | st.fixed_dictionaries({}, optional={
               "seconds": st.floats(-1, 100_000) | st.integers(-5, 10) | st.sampled_from(["1.5", "x"]),
               "steps": st.integers(-2, 20_000), "fail": st.booleans() | st.sampled_from(["yes", "no", 2]),
               "crash": st.booleans(), "permanent": st.booleans(),
               "message": TEXT | st.text(min_size=990, max_size=1010) | st.integers()})
           | st.lists(VALUE, max_size=3) | TEXT | st.integers() | st.none())
TASK = st.sampled_from(["system.sleep", "system.ping", "system.nope", "", "SYSTEM.PING"]) | TEXT


@pytest.fixture
def door(make_settings, private_redis, database_url, client_for):
    """A client on the test's own Redis (no worker consumes it) and a parametrized job store."""
    settings = make_settings(broker_url=private_redis.url, result_backend=private_redis.url,
                             database_url=database_url)
    return client_for(settings)


def _census(client: Any) -> tuple[set[str], set[str], int]:
    broker = client.settings.broker_url
    ids = {j.id for j in client.list_jobs(limit=100_000)}
    return ids, message_ids(broker), sum(queue_depths(broker).values())


@pytest.mark.slow
@hsettings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(task=TASK, payload=PAYLOAD)
def test_enqueue_records_and_publishes_or_refuses_with_a_typed_error(door, task, payload):
    ids, messages, depth = _census(door)
    try:
        valid = door.validate(task, payload)
    except InvalidInput:
        valid = None
    try:
        job = door.enqueue(task, payload)
    except InvalidInput:
        assert valid is None, "validate() accepted what enqueue() refused"
        assert _census(door) == (ids, messages, depth), "a refused job left something behind"
        return
    assert valid is not None, "enqueue() accepted what validate() refused"
    row = door.store.get(job.id)
    assert (row.status, row.task, row.kwargs) == (JobStatus.QUEUED, task, valid)
    assert row.published_at is not None
    assert _census(door) == (ids | {job.id}, messages | {job.id}, depth + 1)


@pytest.mark.slow
@pytest.mark.parametrize("payloads", [[{"seconds": 1}, {"seconds": -1}], [{"bogus": 1}], [{}, "nope"]])
def test_enqueue_many_refuses_the_whole_batch_for_one_bad_payload(door, payloads):
    before = _census(door)
    with pytest.raises(InvalidInput):
        door.enqueue_many("system.sleep", payloads)
    assert _census(door) == before


@pytest.mark.slow
def test_nul_in_a_payload_is_a_typed_input_error_on_every_store(door, request):
    before = _census(door)
    try:
        job = door.enqueue("system.ping", {"message": "a\x00b"})
    except InvalidInput:
        assert _census(door) == before
        return
    assert door.get_job(job.id).kwargs == {"message": "a\x00b"}  # SQLite keeps it: then it must run


# --- the broker ---------------------------------------------------------------------------------
def _envelope(body: bytes, *, headers: dict[str, Any] | None, content_type: str = "application/json",
              encoding: str = "base64") -> bytes:
    """A message as kombu's Redis transport keeps it in a list."""
    return json.dumps({
        "body": base64.b64encode(body).decode() if encoding == "base64" else body.decode(errors="replace"),
        "content-encoding": "utf-8", "content-type": content_type, "headers": headers or {},
        "properties": {"correlation_id": (headers or {}).get("id"), "reply_to": "", "delivery_mode": 2,
                       "delivery_info": {"exchange": "default", "routing_key": "default"},
                       "priority": 0, "body_encoding": encoding, "delivery_tag": str(uuid.uuid4())},
    }).encode()


def _task_headers(task: str, job_id: str) -> dict[str, Any]:
    return {"lang": "py", "task": task, "id": job_id, "shadow": None, "eta": None, "expires": None,
            "group": None, "group_index": None, "retries": 0, "timelimit": [None, None],
            "root_id": job_id, "parent_id": None, "argsrepr": "()", "kwargsrepr": "{}", "origin": "chaos"}


def _body(kwargs: Any) -> bytes:
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    return json.dumps([[], kwargs, embed]).encode()


def _garbage() -> dict[str, bytes]:
    """Raw list items a worker must survive, by name; `ids` of those that carry a job id."""
    def headers(task: str, name: str) -> dict[str, Any]:
        return _task_headers(task, IDS.setdefault(name, str(uuid.uuid4())))

    return {
        "json object, not a message": b'{"hello": "world"}',
        "unknown task": _envelope(_body({}), headers=headers("no.such.task", "unknown")),
        "yaml content": _envelope(b"--- {message: yaml}", headers=headers("system.ping", "yaml"),
                                  content_type="application/x-yaml"),
        "text content": _envelope(b"just text", headers=headers("system.ping", "text"),
                                  content_type="text/plain"),
        "4 MB payload": _envelope(_body({"message": "x" * 4_000_000}),
                                  headers=headers("system.ping", "huge")),
        "3 MB of bytes that are not UTF-8": _envelope(b"\xff" * 3_000_000,
                                                      headers=headers("system.ping", "binary")),
        "no headers": _envelope(_body({}), headers=None),
        "payload the task refuses": _envelope(_body({"seconds": "abc"}),
                                              headers=headers("system.sleep", "invalid")),
    }


#: Items that today stop the worker (killed: it exits; wedged: it restarts its consumer for ever).
KILLERS = {
    "not JSON at all (killed)": b"\x00\xff\xfe not json at all",
    "a JSON list (killed)": b"[1, 2, 3]",
    "a body that is not [args, kwargs, embed] (killed)":
        _envelope(b'"a string"', headers=_task_headers("system.ping", str(uuid.uuid4()))),
    "an unknown body encoding (killed)":
        _envelope(b"!!! not base64 !!!", headers=_task_headers("system.ping", str(uuid.uuid4())),
                  encoding="base64-broken"),
    "a task message without an id (wedged)":
        _envelope(_body({}), headers={k: v for k, v in _task_headers("system.ping", "x").items()
                                      if k != "id"}),
}
IDS: dict[str, str] = {}


@pytest.mark.slow
def test_raw_garbage_on_the_queue_is_logged_and_survived(chaos_settings, chaos_client, private_redis,
                                                           start_worker):
    worker = start_worker(chaos_settings, concurrency=2)
    r = private_redis.client()
    for raw in _garbage().values():
        r.lpush("default", raw)
    # The queue is first in, first out: once this job ran, the worker has taken them all (the
    # 4 MB one may still be on its way to the other pool child).
    after = chaos_client.enqueue("system.ping", {"message": "still here"})
    assert after.wait(timeout=60)["message"] == "still here"
    assert worker.proc.poll() is None
    recorded = {IDS["unknown"], IDS["invalid"], IDS["huge"]}  # the ones a worker could read

    def settled():
        rows = chaos_client.list_jobs(limit=1000)
        return recorded <= {j.id for j in rows} and all(j.status in FINISHED for j in rows) and rows

    rows = {j.id: j for j in wait_until(settled, timeout=30, message="every record to be final")}
    # Whatever got a record has a whole one: a final status, and an error saying why.
    for job in rows.values():
        if job.status != JobStatus.SUCCEEDED:
            assert job.task and job.error_type and job.finished_at, job
    assert rows[IDS["unknown"]].error_type == "UnknownTask"
    assert rows[IDS["invalid"]].status == JobStatus.FAILED and rows[IDS["huge"]].status == JobStatus.FAILED
    assert not {IDS["yaml"], IDS["text"], IDS["binary"]} & set(rows)  # refused before they became jobs
    assert all(a.outcome != "running" for j in rows for a in chaos_client.attempts(j))
    # Nothing left behind in Redis.
    wait_until(lambda: not message_ids(chaos_settings.broker_url) and not r.llen("default"),
               timeout=30, message="every message to be acknowledged")
    log = worker.output()
    assert "Refusing to deserialize untrusted content" in log and "no.such.task" in log
    # The JSON object that is not a message was dropped where it was read; it did not cost the
    # consumer its connection (kombu takes a KeyError for a lost connection).
    assert "dropped a malformed message from Redis: KeyError('properties')" in log
    assert "Connection to broker lost" not in log


@pytest.mark.slow
@pytest.mark.parametrize("name", list(KILLERS))
def test_a_malformed_message_does_not_stop_the_worker(name, chaos_settings, chaos_client, private_redis,
                                                       start_worker):
    worker = start_worker(chaos_settings, concurrency=1)
    private_redis.client().lpush("default", KILLERS[name])
    job = chaos_client.enqueue("system.ping", {"message": "next"})
    wait_until(lambda: worker.proc.poll() is not None or chaos_client.get_job(job.id).finished,
               timeout=10, message=f"the job after {name}")
    assert worker.proc.poll() is None and chaos_client.get_job(job.id).status == JobStatus.SUCCEEDED
