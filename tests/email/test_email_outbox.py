"""The outbox protocol on SQLite and PostgreSQL: what a job decides from a row, claims that only
one job can win, updates that need the claim, releases, operator actions, and the migration."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa

from jobs.db import get_engine, utcnow
from tasks.email.delivery import Action, decide
from tasks.email.errors import OutboxError
from tasks.email.models import OutboxMessage, OutboxStatus
from tasks.email.outbox import Outbox

S = OutboxStatus
STALE = timedelta(minutes=5)


def row(**kw) -> OutboxMessage:
    return OutboxMessage(**{"id": 1, "key": "k", "status": S.QUEUED, "job_id": None, "claimed_at": None,
                            "data_at": None, "send_at": None, **kw})


def test_decide():
    now = utcnow()
    recent, old = now - timedelta(seconds=5), now - STALE - timedelta(seconds=1)
    cases = [
        (row(status=S.SENT, job_id="a"), "a", Action.DONE),
        (row(status=S.SENT, job_id="a"), "b", Action.DONE),
        (row(status=S.QUEUED), "a", Action.CLAIM),
        (row(status=S.SCHEDULED, send_at=now + timedelta(hours=1)), "a", Action.WAIT),
        (row(status=S.SCHEDULED, send_at=now - timedelta(seconds=1)), "a", Action.CLAIM),
        (row(status=S.FAILED, job_id="a"), "a", Action.REFUSE),  # the same job does not try again
        (row(status=S.FAILED, job_id="a"), "b", Action.CLAIM),  # a new job asks again
        (row(status=S.UNKNOWN, job_id="a"), "b", Action.REFUSE),  # only an operator resends
        # sending, by us: we came back after our worker died
        (row(status=S.SENDING, job_id="a", claimed_at=recent), "a", Action.CLAIM),
        (row(status=S.SENDING, job_id="a", claimed_at=recent, data_at=recent), "a", Action.UNKNOWN),
        # sending, by someone else: leave it, unless the claim is abandoned
        (row(status=S.SENDING, job_id="a", claimed_at=recent), "b", Action.BUSY),
        (row(status=S.SENDING, job_id="a", claimed_at=old), "b", Action.CLAIM),
        (row(status=S.SENDING, job_id="a", claimed_at=old, data_at=old), "b", Action.UNKNOWN),
    ]
    for r, job, expected in cases:
        assert decide(r, job, now, STALE) is expected, (r.status, r.job_id, job)


@pytest.fixture
def outbox(database_url):
    return Outbox(database_url)


def create(outbox: Outbox, key: str = "k1", **kw) -> OutboxMessage:
    made = outbox.create({"key": key, "message_id": f"<{key}@example.org>", "sender": "c@example.org",
                          "recipients": {"to": ["ann@example.org"], "cc": [], "bcc": []}, "subject": "s",
                          "raw": b"Subject: s\r\n\r\nhi\r\n", "status": S.QUEUED, **kw})
    assert made is not None
    return made


def test_one_key_one_row_and_only_one_claim_wins(outbox):
    first = create(outbox)
    assert outbox.create({"key": "k1", "message_id": "<other@example.org>", "sender": "c@example.org",
                          "recipients": {}, "status": S.QUEUED}) is None
    seen = outbox.find("k1")
    wins: list[str] = []
    barrier = threading.Barrier(8)

    def claim(job: str) -> None:
        barrier.wait()
        if outbox.claim(seen, job):
            wins.append(job)

    threads = [threading.Thread(target=claim, args=(f"job-{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    claimed = outbox.get(first.id)
    assert claimed.status == S.SENDING and claimed.job_id == wins[0] and claimed.attempts == 1
    assert not outbox.claim(seen, "late")  # the row is not as it was read any more


def test_updates_need_the_claim(outbox):
    r = create(outbox)
    assert outbox.claim(outbox.find("k1"), "a")
    assert not outbox.handover(r.id, "b") and not outbox.mark_sent(r.id, "b", "250 ok", None, utcnow())
    assert outbox.handover(r.id, "a")
    assert outbox.get(r.id).data_at is not None
    assert outbox.mark_sent(r.id, "a", "250 ok", {"x@example.org": "550 no"}, utcnow())
    done = outbox.get(r.id)
    assert (done.status, done.last_response, done.refused) == (S.SENT, "250 ok", {"x@example.org": "550 no"})
    assert not outbox.mark_failed(r.id, "a", "too late")  # no longer sending


def test_transient_failure_requeues_and_clears_the_handover(outbox):
    r = create(outbox)
    outbox.claim(outbox.find("k1"), "a")
    outbox.requeue(r.id, "a", "451 later")
    back = outbox.get(r.id)
    assert (back.status, back.data_at, back.last_response) == (S.QUEUED, None, "451 later")
    assert outbox.claim(back, "a") and outbox.get(r.id).attempts == 2


def test_release_due_is_claimed_once(outbox):
    now = utcnow()
    due = create(outbox, "due", status=S.SCHEDULED, send_at=now - timedelta(seconds=1))
    create(outbox, "later", status=S.SCHEDULED, send_at=now + timedelta(hours=1))
    [found] = outbox.due(now, now - STALE, 10)
    assert found.id == due.id
    assert outbox.mark_released(found) and not outbox.mark_released(found)
    assert outbox.due(now, now - STALE, 10) == []  # released lately
    assert [r.id for r in outbox.due(now + STALE * 2, now + STALE, 10)] == [due.id]  # its job was lost


def test_operator_resend_and_settle(outbox):
    r = create(outbox)
    outbox.claim(outbox.find("k1"), "a")
    outbox.mark_unknown(r.id, "a", "connection lost after data")
    with pytest.raises(OutboxError, match="only failed, unknown"):
        outbox.reopen(create(outbox, "k2").id, (S.UNKNOWN, S.FAILED))
    assert outbox.lookup("k1").id == r.id and outbox.lookup("<k1@example.org>").id == r.id
    assert outbox.lookup(str(r.id)).key == "k1"
    reopened = outbox.reopen(r.id, (S.UNKNOWN, S.FAILED))
    assert (reopened.status, reopened.job_id) == (S.QUEUED, None)
    outbox.claim(outbox.get(r.id), "b")
    outbox.mark_unknown(r.id, "b", "lost again")
    settled = outbox.resolve(r.id, S.SENT, "the recipient has it")
    assert settled.status == S.SENT and settled.sent_at and "the recipient has it" in settled.last_response
    with pytest.raises(OutboxError):
        outbox.resolve(r.id, S.FAILED, "twice")


def test_campaign_rows(outbox):
    rows = [{"key": f"campaign:c:{i}@example.org", "message_id": f"<c{i}@example.org>",
             "sender": "c@example.org", "recipients": {"to": [f"{i}@example.org"]}, "campaign": "c",
             "campaign_run": "run1",
             "payload": {"to": [f"{i}@example.org"]}} for i in range(5)]
    outbox.insert_planned(rows)
    outbox.insert_planned(rows)  # a re-plan inserts nothing twice
    assert outbox.campaign_counts("run1") == {S.QUEUED: 5}
    batch = outbox.to_enqueue("run1", 3, utcnow() - STALE)
    assert len(batch) == 3 and batch[0][1] == {"to": ["0@example.org"]}
    outbox.mark_enqueued([i for i, _ in batch])
    assert outbox.in_flight("run1") == 3
    assert len(outbox.to_enqueue("run1", 10, utcnow() - STALE)) == 2
    assert len(outbox.to_enqueue("run1", 0, utcnow() + STALE)) == 3  # stuck ones come back
    assert outbox.take_over(rows[0]["key"], S.QUEUED, "run2", {"campaign": "c"})
    assert outbox.campaign_counts("run2") == {S.QUEUED: 1}
    assert outbox.states([rows[0]["key"], "nope"]) == {rows[0]["key"]: (S.QUEUED, "run2")}


def test_migration_upgrades_and_downgrades_to_the_models(database_url):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from jobs.db import Base
    from jobs.migrate import downgrade, upgrade

    def diff() -> list:
        with get_engine(database_url).connect() as conn:
            found = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        ours = [d for d in found if "email_" in repr(d)]
        return ours

    assert diff() == []
    downgrade(database_url, "0001")  # the revision before email (later ones go too)
    tables = sa.inspect(get_engine(database_url)).get_table_names()
    assert "email_outbox" not in tables and "email_campaigns" not in tables and "jobs" in tables
    upgrade(database_url)
    assert diff() == []
