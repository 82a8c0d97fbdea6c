"""A worker killed in the middle of a send: its job is redelivered and the message still goes
out exactly once (PostgreSQL job store and outbox).

The SMTP server stalls on cue (in RCPT, before anything was handed over; or in DATA, after the
server has the message) while the test SIGKILLs the pool process. Celery's main process
requeues the job at once and a fresh pool process runs it again.
"""

from __future__ import annotations

import json
import time

import pytest

from tasks.email.models import OutboxStatus as S
from tests.email.conftest import finished, kill_pool_child

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(stack_factory):
    return stack_factory(database="postgresql", concurrency=1)


def test_killed_after_the_data_was_handed_over_is_not_sent_again(stack, run_cli):
    ann = stack.address("killed-in-data")
    hold = stack.handler.hold("data", ann)
    job = stack.client.enqueue("email.send", {"to": [ann], "subject": "Once", "text": "only once",
                                              "key": f"k-{ann}"})
    assert hold.arrived.wait(30), "the message never reached DATA"
    kill_pool_child(stack.worker)
    hold.release.set()

    done = finished(stack.client, job.id)
    assert done.status == "failed" and done.error_type == "DeliveryUnknown"
    assert [a.reason for a in done.attempt_history()][-1] == "redelivery"
    row = stack.outbox().find(f"k-{ann}")
    assert row.status == S.UNKNOWN and row.data_at is not None and row.attempts == 1
    time.sleep(0.5)
    assert len(stack.handler.to(ann)) == 1  # the server got it once; nobody sent it again

    # An operator looks at the doubtful messages and decides to send it again.
    listed = run_cli(stack.settings, "email", "outbox", "--status", "unknown", "--json")
    assert row.id in {r["id"] for r in json.loads(listed.stdout)}
    refused = run_cli(stack.settings, "email", "resend", str(row.id), input="n\n")
    assert refused.returncode != 0 and len(stack.handler.to(ann)) == 1  # not without a yes
    resent = run_cli(stack.settings, "email", "resend", str(row.id), "--yes")
    assert resent.returncode == 0, resent.stderr
    second = stack.arrived(ann, n=2)
    assert second[0].message_id == second[1].message_id  # the same message, the same Message-ID
    assert stack.outbox().get(row.id).status == S.SENT


def test_killed_before_the_handover_is_sent_once_on_redelivery(stack):
    ann = stack.address("killed-in-rcpt")
    hold = stack.handler.hold("rcpt", ann)
    job = stack.client.enqueue("email.send", {"to": [ann], "subject": "Once", "text": "only once",
                                              "key": f"k-{ann}"})
    assert hold.arrived.wait(30), "the message never reached RCPT"
    kill_pool_child(stack.worker)
    hold.release.set()

    done = finished(stack.client, job.id)
    assert done.status == "succeeded" and done.result["status"] == "sent"
    assert [a.reason for a in done.attempt_history()] == ["first_run", "redelivery"]
    row = stack.outbox().find(f"k-{ann}")
    assert (row.status, row.attempts) == (S.SENT, 2)
    time.sleep(0.5)
    assert len(stack.handler.to(ann)) == 1
