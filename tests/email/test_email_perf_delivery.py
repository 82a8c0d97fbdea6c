"""What a send costs the database, on SQLite and PostgreSQL, and that the cheaper path keeps the
outbox protocol: new mail is one INSERT (the claim) and two UPDATEs (handover, sent) with no
read; an existing row is read once and claimed with UPDATE ... RETURNING. Each case runs the
real `Sender` in this process against a real SMTP server and checks what arrived."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event

from jobs.db import get_engine, utcnow
from tasks.email.delivery import Sender
from tasks.email.errors import DeliveryUnknown, SmtpTemporaryError
from tasks.email.inputs import SendInput
from tasks.email.models import OutboxStatus as S


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def stack(request, stack_factory):
    return stack_factory(database=request.param, worker=False)


@contextmanager
def statements(stack) -> Iterator[list[str]]:
    """The SQL statements this process runs on the outbox's engine, by their first word."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement.split(None, 1)[0].upper())

    engine = get_engine(stack.settings.database_url)
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def send(stack, payload: dict[str, Any], *, job_id: str | None = None, retries: int = 0) -> dict[str, Any]:
    """One `email.send` attempt, as the worker runs it (same task, same request fields)."""
    task = stack.client.app.tasks["email.send"]
    task.push_request(id=job_id or uuid.uuid4().hex, retries=retries)
    try:
        return Sender(task).send(SendInput.model_validate(payload))
    finally:
        task.pop_request()


def test_new_mail_is_one_insert_and_two_updates(stack):
    ann = stack.address("ann")
    with statements(stack) as sql:
        result = send(stack, {"to": [ann], "subject": "Receipt", "text": "Thanks.\n"})
    assert sql == ["INSERT", "UPDATE", "UPDATE"]  # claim (the insert), handover, sent
    [received] = stack.arrived(ann)
    row = stack.outbox().get(result["outbox_id"], raw=True)
    assert (row.status, row.attempts, row.raw) == (S.SENT, 1, received.data) and row.data_at and row.sent_at
    with statements(stack) as sql:
        again = send(stack, {"to": [ann], "subject": "Receipt", "text": "Thanks.\n", "key": row.key})
    assert sql == ["INSERT", "SELECT"] and again["duplicate"] is True  # the key is taken: read, done
    assert len(stack.handler.to(ann)) == 1


def test_a_retry_claims_its_row_and_sends_once(stack):
    slow = stack.address("slow")
    stack.handler.rcpt_replies[slow] = ["451 4.7.1 greylisted"]
    job = uuid.uuid4().hex
    with statements(stack) as sql, pytest.raises(SmtpTemporaryError):
        send(stack, {"to": [slow], "subject": "Later", "text": "hi\n"}, job_id=job)
    assert sql == ["INSERT", "UPDATE"]  # claim, back to queued
    with statements(stack) as sql:
        result = send(stack, {"to": [slow], "subject": "Later", "text": "hi\n"}, job_id=job, retries=1)
    assert sql == ["INSERT", "SELECT", "UPDATE", "UPDATE", "UPDATE"]  # the claim returns the row
    assert result["status"] == S.SENT and stack.outbox().get(result["outbox_id"]).attempts == 2
    assert len(stack.arrived(slow)) == 1


def test_a_campaign_row_is_read_first_and_rendered_at_the_handover(stack):
    bob = stack.address("bob")
    key = f"campaign:perf:{bob}"
    stack.outbox().insert_planned([{"key": key, "message_id": f"<{uuid.uuid4().hex}@example.org>",
                                    "sender": "conveyor@example.org", "recipients": {"to": [bob]},
                                    "campaign": "perf", "campaign_run": "run-1", "payload": {"to": [bob]}}])
    with statements(stack) as sql:
        result = send(stack, {"to": [bob], "subject": "News", "text": "hello\n", "key": key, "campaign": "run-1"})
    assert sql == ["SELECT", "UPDATE", "UPDATE", "UPDATE"]
    [received] = stack.arrived(bob)
    row = stack.outbox().get(result["outbox_id"], raw=True)
    assert row.status == S.SENT and row.raw == received.data and row.subject == "News"


def test_a_job_back_after_its_worker_died_sends_once_unless_it_had_handed_over(stack):
    outbox = stack.outbox()
    for handed_over in (False, True):
        carl, job = stack.address("carl"), uuid.uuid4().hex
        now = utcnow()
        raw = f"To: {carl}\r\nSubject: Back\r\n\r\nhi\r\n".encode()
        made = outbox.create({"key": f"job:{job}", "message_id": f"<{job}@example.org>", "raw": raw,
                              "sender": "conveyor@example.org", "recipients": {"to": [carl]}, "subject": "Back",
                              "status": S.SENDING, "job_id": job, "claimed_at": now, "attempts": 1,
                              "data_at": now if handed_over else None})
        assert made is not None
        if handed_over:
            with pytest.raises(DeliveryUnknown):
                send(stack, {"to": [carl], "subject": "Back", "text": "hi\n"}, job_id=job)
            assert outbox.get(made.id).status == S.UNKNOWN and stack.handler.to(carl) == []
        else:  # the compare-and-set names the holder and its claim time
            result = send(stack, {"to": [carl], "subject": "Back", "text": "hi\n"}, job_id=job)
            [received] = stack.arrived(carl)
            assert result["status"] == S.SENT and received.data == raw
            assert outbox.get(made.id).attempts == 2
