"""The job store on SQLite and PostgreSQL: migrations match the models; records commute."""

from __future__ import annotations

import itertools
import random
from datetime import timedelta

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from jobs.db import Base, get_engine, utcnow
from jobs.errors import JobNotFound
from jobs.migrate import downgrade, head_revisions, is_current, upgrade
from jobs.models import JobStatus, state_order
from jobs.recorder import Recorder, _compact, decode_records, encode_frame, next_frame
from jobs.store import JobStore


def test_upgrade_head_matches_the_models_and_downgrade_works(database_url):
    import jobs.schema  # noqa: F401 - every table on the metadata

    with get_engine(database_url).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], f"models and migrations disagree: {diff}"
    assert is_current(database_url) and head_revisions(database_url)
    downgrade(database_url, "base")
    tables = set(sa.inspect(get_engine(database_url)).get_table_names()) - {"alembic_version"}
    assert tables == set()
    upgrade(database_url)
    assert is_current(database_url)


def _records(job_id: str, now):
    """The records three processes send about one job that failed once, then succeeded."""
    queued = {"id": job_id, "state_order": 0, "status": JobStatus.QUEUED, "task": "system.ping",
              "kwargs": {"a": 1}, "source": "api", "created_at": now}
    started1 = {"id": job_id, "state_order": state_order(JobStatus.STARTED, 1),
                "status": JobStatus.STARTED, "started_at": now + timedelta(seconds=1), "attempts": 1,
                "worker": "a"}
    retrying = {"id": job_id, "state_order": state_order(JobStatus.RETRYING, 1),
                "status": JobStatus.RETRYING, "error_message": "boom", "worker": "a",
                "started_at": now + timedelta(seconds=1)}
    started2 = {"id": job_id, "state_order": state_order(JobStatus.STARTED, 2),
                "status": JobStatus.STARTED, "started_at": now + timedelta(seconds=3), "attempts": 2,
                "worker": "b"}
    done = {"id": job_id, "state_order": state_order(JobStatus.SUCCEEDED, 2),
            "status": JobStatus.SUCCEEDED, "finished_at": now + timedelta(seconds=4), "result": [1, 2],
            "worker": "b", "started_at": now + timedelta(seconds=3)}
    return [queued, started1, retrying, started2, done]


def test_lifecycle_records_commute_in_any_order(database_url):
    store = JobStore(database_url)
    now = utcnow()
    orders = list(itertools.permutations(range(5)))
    random.Random(7).shuffle(orders)
    for n, order in enumerate(orders[:25]):
        recs = _records(f"job-{n}", now)
        for i in order:
            store.apply([recs[i]], [])
        job = store.get(f"job-{n}")
        assert (job.status, job.attempts, job.worker, job.result, job.kwargs, job.source) == (
            JobStatus.SUCCEEDED, 2, "b", [1, 2], {"a": 1}, "api"), order
        assert job.started_at == now + timedelta(seconds=3) and job.created_at == now


def test_cancellation_outranks_everything(database_url):
    store = JobStore(database_url)
    now = utcnow()
    recs = _records("c", now)
    store.apply([recs[0]], [])
    store.cancel("c")
    store.apply(recs[1:], [])
    assert store.get("c").status == JobStatus.REVOKED
    ids, newest = store.cancelled_since(now - timedelta(seconds=1))
    assert ids == ["c"] and newest is not None


def test_recorder_keeps_records_while_the_store_fails(tmp_path):
    url = f"sqlite:///{tmp_path / 'later.db'}"
    rec = Recorder(JobStore(url), interval=10)
    for r in _records("x", utcnow()):
        rec.job(r.pop("id"), r.pop("state_order"), **r)
    assert rec.pending == 1  # merged into one record
    assert rec.flush() is False  # no tables yet: the write fails, the record is kept
    assert rec.pending == 1
    upgrade(url)
    assert rec.flush() is True and rec.pending == 0
    job = JobStore(url).get("x")
    assert job.status == JobStatus.SUCCEEDED and job.kwargs == {"a": 1}


def _attempts(job_id: str, now):
    return [
        {"job_id": job_id, "number": 1, "reason": "first_run", "worker": "a", "pid": 7,
         "started_at": now, "outcome": "running"},
        {"job_id": job_id, "number": 1, "finished_at": now + timedelta(seconds=1), "outcome": "retried",
         "error": "boom"},
        {"job_id": job_id, "number": 2, "reason": "retry", "worker": "b", "started_at": now, "outcome": "running"},
        {"job_id": job_id, "number": 2, "finished_at": now + timedelta(seconds=4), "outcome": "succeeded",
         "error": None},
    ]


def _row(store: JobStore, job_id: str) -> tuple[dict, list[dict]]:
    job = store.get(job_id)
    fields = {c.name: getattr(job, c.name) for c in job.__table__.columns if c.name != "id"}
    attempts = [{c.name: getattr(a, c.name) for c in a.__table__.columns if c.name not in ("id", "job_id")}
                for a in store.attempts(job_id)]
    return fields, attempts


def test_a_compacted_frame_lands_as_the_records_it_merged(database_url):
    """A pool child merges a job's records into one job record and one per attempt before it
    sends them: what lands must be what the records written one by one give."""
    store = JobStore(database_url)
    now = utcnow()
    orders = list(itertools.permutations(range(1, 5)))
    random.Random(3).shuffle(orders)
    for n, order in enumerate(orders[:12]):
        recs = _records("", now)
        queued = recs[0]
        frame = [["j", "", r["state_order"], {k: v for k, v in r.items() if k not in ("id", "state_order")}]
                 for r in (recs[i] for i in order)]
        frame += [["a", "", a.pop("number"), {k: v for k, v in a.items() if k != "job_id"}]
                  for a in _attempts("", now)]
        for job_id in (f"one-{n}", f"compact-{n}"):
            store.apply([{**queued, "id": job_id}], [])  # the producer's record
        for kind, _, order_, fields in frame:  # one by one
            if kind == "j":
                store.apply([{"id": f"one-{n}", "state_order": order_, **fields}], [])
            else:
                store.apply([], [{"job_id": f"one-{n}", "number": order_, **fields}])
        sent = _compact([[kind, f"compact-{n}", o, dict(f)] for kind, _, o, f in frame])
        assert len(sent) == 3  # one job record, one per attempt
        payload, exact, _ = next_frame(encode_frame(sent), 0)
        records, sync = decode_records(payload, exact)
        assert sync is False
        store.apply([{"id": k, "state_order": o, **f} for kind, k, o, f in records if kind == "j"],
                    [{"job_id": k, "number": o, **f} for kind, k, o, f in records if kind == "a"])
        a, b = _row(store, f"compact-{n}"), _row(store, f"one-{n}")
        assert a == b, (order, {k: (a[0][k], b[0][k]) for k in a[0] if a[0][k] != b[0][k]}, a[1], b[1])


def test_a_frame_carries_what_json_can_hold():
    """Results orjson refuses but JSON holds (integers past 64 bits) still reach the recorder,
    exact: their frame is marked for the standard library's reader (orjson would read them as
    floats); every other frame is read with orjson."""
    now = utcnow()
    big = [["j", "x", 5, {"result": {"big": 2**70 + 1, "n": [1.5, None]}, "finished_at": now}],
           ["j", "y", 5, {"result": {1: "int key"}, "started_at": now}]]
    usual = [["j", "z", 13, {"result": {"n": 2**63 - 1, "x": 0.1}, "finished_at": now}], ["sync"]]
    buf = encode_frame(big) + encode_frame(usual)
    payload, exact, offset = next_frame(buf, 0)
    assert exact is True
    assert decode_records(payload, exact) == (
        [("j", "x", 5, {"result": {"big": 2**70 + 1, "n": [1.5, None]}, "finished_at": now}),
         ("j", "y", 5, {"result": {"1": "int key"}, "started_at": now})], False)
    assert next_frame(buf[:-1], offset) is None  # not all of it arrived yet
    payload, exact, end = next_frame(buf, offset)
    assert exact is False and end == len(buf)
    assert decode_records(payload, exact) == (
        [("j", "z", 13, {"result": {"n": 2**63 - 1, "x": 0.1}, "finished_at": now})], True)


def test_json_columns_keep_what_json_can_hold(database_url):
    """The store writes JSON with orjson, and with `json` what orjson refuses: nothing changes."""
    store = JobStore(database_url)
    result = {"big": 2**70 + 1, "small": -3, "keys": {"1": "int key"}, "x": [1.5, "é", None]}
    store.apply([{"id": "big", "state_order": 0, "status": JobStatus.QUEUED, "kwargs": {"n": 2**64},
                  "result": result}], [])
    job = store.get("big")
    assert job.result == result and job.kwargs == {"n": 2**64}


def test_prune_deletes_only_old_finished_jobs(database_url):
    store = JobStore(database_url)
    old = utcnow() - timedelta(days=40)
    store.apply([{"id": "old-done", "state_order": 3, "status": JobStatus.SUCCEEDED, "created_at": old},
                 {"id": "old-queued", "state_order": 0, "status": JobStatus.QUEUED, "created_at": old},
                 {"id": "new-done", "state_order": 3, "status": JobStatus.SUCCEEDED,
                  "created_at": utcnow()}],
                [{"job_id": "old-done", "number": 1, "outcome": "succeeded"}])
    assert store.prune(utcnow() - timedelta(days=30)) == 1
    assert {j.id for j in store.list(limit=10)} == {"old-queued", "new-done"}
    assert store.attempts("old-done") == []


def test_unreachable_database_is_a_typed_error():
    from jobs.errors import StoreUnavailable
    from tests.conftest import free_port

    store = JobStore(f"postgresql://u:secret@127.0.0.1:{free_port()}/x")
    with pytest.raises(StoreUnavailable) as err:
        store.get("anything")
    assert "secret" not in str(err.value) and "u:***@127.0.0.1" in str(err.value)


def test_a_record_the_store_refuses_is_dropped_alone(database_url, caplog):
    """A record the store cannot hold (here a job without a status, which the schema refuses)
    is dropped and logged; the records of its batch are still written."""
    store = JobStore(database_url)
    rec = Recorder(store, interval=60)
    now = utcnow()
    rec.job("fine", 0, status=JobStatus.QUEUED, task="system.ping", created_at=now)
    rec.job("refused", 0, status=None, task="system.ping", created_at=now)
    rec.attempt("fine", 1, reason="first_run", outcome="succeeded", started_at=now)
    with caplog.at_level("ERROR", logger="conveyor.recorder"):
        assert rec.flush() is True
    assert store.get("fine").status == JobStatus.QUEUED
    assert [a.outcome for a in store.attempts("fine")] == ["succeeded"]
    assert rec.pending == 0
    assert "refused the job record refused" in caplog.text
    with pytest.raises(JobNotFound):
        store.get("refused")
    rec.close()
