"""End to end: a real worker sends through a real SMTP server (STARTTLS + AUTH) and records
every message in the outbox; retries, refusals, duplicates, scheduled mail, the CLI."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from email import policy
from email.parser import BytesParser
from pathlib import Path

import pytest

from jobs.db import utcnow
from jobs.errors import JobFailed
from tasks.email.models import OutboxStatus as S
from tests.conftest import wait_until
from tests.email.conftest import finished

PASSWORD = "s3cret-pa55word"


@pytest.fixture(scope="module")
def stack(stack_factory):
    return stack_factory(tls=True, auth=True, concurrency=1, retry_max=2)


def test_a_message_arrives_once_with_its_mime_structure(stack):
    (Path(stack.settings.results_dir) / "chart.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    ann, bob, audit = stack.address("ann"), stack.address("bob"), stack.address("audit")
    job = stack.client.enqueue("email.send", {
        "to": [f"Ann <{ann}>"], "cc": [bob], "bcc": [audit], "reply_to": "support@example.org",
        "template": "analysis_report", "attachments": ["chart.png"], "headers": {"X-Run": "r-1"},
        "context": {"title": "Weekly sales", "summary": ["up 4%"], "chart": "chart.png"}})
    result = job.wait(timeout=30)
    [received] = stack.arrived(ann)
    assert result["status"] == "sent" and result["duplicate"] is False
    assert received.authenticated and sorted(received.rcpt_tos) == sorted([ann, bob, audit])
    msg = BytesParser(policy=policy.default).parsebytes(received.data)
    assert msg["Message-ID"] == result["message_id"] and msg["Subject"] == "Weekly sales"
    assert msg["To"] == f"Ann <{ann}>" and msg["Cc"] == bob and msg["Bcc"] is None
    assert msg["Reply-To"] == "support@example.org" and msg["X-Run"] == "r-1"
    assert msg.get_content_type() == "multipart/mixed"
    assert [p.get_content_type() for p in msg.walk()] == [
        "multipart/mixed", "multipart/alternative", "text/plain", "text/html", "image/png"]
    row = stack.outbox().get(result["outbox_id"], raw=True)
    assert (row.status, row.attempts, row.template) == (S.SENT, 1, "analysis_report")
    assert row.raw == received.data and row.sent_at and row.data_at and row.last_response.startswith("250")
    # the SMTP password is in no job record, no outbox row, no log line
    record = stack.client.get_job(job.id)
    assert PASSWORD not in json.dumps(record.to_dict(), default=str)
    assert PASSWORD.encode() not in row.raw
    assert PASSWORD not in stack.worker.output()


def test_the_same_key_is_sent_once(stack):
    ann = stack.address("dedup")
    payload = {"to": [ann], "subject": "Your receipt", "text": "Thanks!", "key": f"receipt-{ann}"}
    first = stack.client.enqueue("email.send", payload).wait(timeout=30)
    second = stack.client.enqueue("email.send", {**payload, "text": "changed"}).wait(timeout=30)
    assert first["duplicate"] is False and second["duplicate"] is True
    assert second["message_id"] == first["message_id"] and second["outbox_id"] == first["outbox_id"]
    stack.arrived(ann)
    time.sleep(0.3)
    assert len(stack.handler.to(ann)) == 1


def test_a_4xx_reply_is_retried_then_sent(stack):
    ann = stack.address("greylisted")
    stack.handler.rcpt_replies[ann] = ["451 4.7.1 greylisted, come back later"]
    job = stack.client.enqueue("email.send", {"to": [ann], "subject": "Hi", "text": "again"})
    result = job.wait(timeout=30)
    assert len(stack.arrived(ann)) == 1
    done = stack.client.get_job(job.id)
    assert done.attempts == 2 and [a.outcome for a in done.attempt_history()] == ["retried", "succeeded"]
    row = stack.outbox().get(result["outbox_id"])
    assert (row.status, row.attempts) == (S.SENT, 2)


def test_a_5xx_reply_fails_at_once_with_the_reply_recorded(stack):
    ann = stack.address("nobody")
    stack.handler.rcpt_replies[ann] = ["550 5.1.1 no such user here"]
    job = stack.client.enqueue("email.send", {"to": [ann], "subject": "Hi", "text": "x", "key": f"k-{ann}"})
    with pytest.raises(JobFailed) as err:
        job.wait(timeout=30)
    assert err.value.status == "failed" and err.value.error_type == "SmtpPermanentError"
    assert "550 5.1.1 no such user here" in err.value.error
    row = stack.outbox().find(f"k-{ann}")
    assert (row.status, row.attempts) == (S.FAILED, 1) and row.last_response == "550 5.1.1 no such user here"
    assert row.refused == {ann: "550 5.1.1 no such user here"}
    assert stack.handler.to(ann) == []


def test_out_of_retries_the_message_fails(stack):
    ann = stack.address("always-busy")
    stack.handler.rcpt_replies[ann] = ["421 4.3.2 try later"] * 3
    job = stack.client.enqueue("email.send", {"to": [ann], "subject": "Hi", "text": "x", "key": f"k-{ann}"})
    done = finished(stack.client, job.id)
    assert done.status == "dead" and done.attempts == 3  # retry_max=2
    row = stack.outbox().find(f"k-{ann}")
    assert row.status == S.FAILED and row.last_response.startswith("gave up after 3 attempts: 421")
    assert stack.handler.to(ann) == []


def test_send_at_waits_in_the_outbox_and_is_released_when_due(stack):
    ann = stack.address("later")
    when = utcnow() + timedelta(seconds=2)
    job = stack.client.enqueue("email.send", {"to": [ann], "subject": "Later", "text": "x",
                                              "send_at": when.isoformat(), "key": f"k-{ann}"})
    result = job.wait(timeout=30)
    assert result["status"] == "scheduled" and stack.client.get_job(job.id).eta is None  # no countdown
    early = stack.client.enqueue("email.release_due", {}).wait(timeout=30)
    assert result["outbox_id"] not in early["outbox_ids"]
    wait_until(lambda: utcnow() > when, timeout=5, message="send_at")
    released = stack.client.enqueue("email.release_due", {}).wait(timeout=30)
    assert result["outbox_id"] in released["outbox_ids"]
    [received] = stack.arrived(ann)
    assert received.message["Date"].datetime == when.replace(microsecond=0)
    again = stack.client.enqueue("email.release_due", {}).wait(timeout=30)
    assert result["outbox_id"] not in again["outbox_ids"]
    assert wait_until(lambda: stack.outbox().find(f"k-{ann}").status == S.SENT, message="sent")
    assert len(stack.handler.to(ann)) == 1


def test_a_job_waiting_for_a_rate_limit_holds_no_worker(stack):
    """One worker process: a slow campaign's messages wait for their slots side by side, and
    other work runs meanwhile. Were a waiting job holding the process, no two jobs' lifetimes
    could overlap."""
    people = [stack.address("paced") for _ in range(5)]
    campaign = stack.client.enqueue("email.campaign", {
        "template": "daily_digest", "context": {"date": "2026-01-01", "stats": {}}, "recipients": people,
        "rate": 2})
    stack.arrived(people[0])
    ping = stack.client.enqueue("system.ping", {"message": "still here"})
    assert ping.wait(timeout=30)["message"] == "still here"
    summary = campaign.wait(timeout=60)
    assert summary["sent"] == 5

    sends = [j for j in stack.client.list_jobs(task="email.send", limit=200)
             if j.kwargs.get("campaign") == campaign.id]
    assert len(sends) == 5
    spans = sorted((j.started_at, j.finished_at) for j in sends)
    waiting_together = max(sum(1 for s, f in spans if s <= start < f) for start, _ in spans)
    assert waiting_together >= 3  # several jobs in progress at once on one process
    assert any("deferred" in (j.progress or {}).get("message", "") for j in sends)
    pinged = stack.client.get_job(ping.id).finished_at
    assert pinged < max(f for _, f in spans)  # the ping ran while messages still waited
    sent_at = sorted(r.sent_at for r in stack.outbox().messages(campaign=campaign.id, limit=10))
    assert (sent_at[-1] - stack.client.get_job(campaign.id).started_at).total_seconds() >= 4 / 2


def test_cli_send_outbox_and_show(stack, run_cli):
    ann = stack.address("cli")
    out = run_cli(stack.settings, "email", "send", "--to", f"Ann <{ann}>", "--subject", "From the CLI",
                  "--text", "hello", "--key", f"cli-{ann}", "--wait", "--json")
    assert out.returncode == 0, out.stderr
    job = json.loads(out.stdout)
    assert job["status"] == "succeeded" and job["result"]["status"] == "sent" and job["source"] == "cli"
    listed = run_cli(stack.settings, "email", "outbox", "--status", "sent", "--json")
    assert f"cli-{ann}" in {r["key"] for r in json.loads(listed.stdout)}
    raw = run_cli(stack.settings, "email", "show", f"cli-{ann}", "--raw")
    assert raw.returncode == 0 and job["result"]["message_id"] in raw.stdout
    table = run_cli(stack.settings, "email", "outbox")
    assert table.returncode == 0 and "From the CLI" in table.stdout

    bad = run_cli(stack.settings, "email", "send", "--to", "not-an-address", "--subject", "x", "--text", "y")
    assert bad.returncode == 2 and "not a valid email address" in bad.stderr and "Traceback" not in bad.stderr
    bad = run_cli(stack.settings, "email", "send", "--to", ann, "--template", "daily_digest", "-c", "date=x")
    assert bad.returncode == 2 and "'stats' is undefined" in bad.stderr
    assert len(stack.handler.to(ann)) == 1
