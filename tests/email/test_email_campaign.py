"""A 500-recipient campaign from a CSV file at a set rate, on two worker processes: 500 distinct
messages, no faster than the rate allows, progress on the way, a summary at the end; running
it again with the same key sends nothing."""

from __future__ import annotations

import json

import pytest

from tests.conftest import wait_until

pytestmark = pytest.mark.slow

N = 500
RATE = 100.0


@pytest.fixture(scope="module")
def stack(stack_factory):
    return stack_factory(database="sqlite", concurrency=2)


def test_a_campaign_sends_each_recipient_once_at_the_rate(stack, run_cli):
    people = [f"reader{i:03d}@example.org" for i in range(N)]
    rows = ["email,name,customer"] + [f"{a},Reader {i},Customer {i}" for i, a in enumerate(people)]
    rows += ["not-an-address,Nobody,X",  # invalid address
             "late@example.org,Late,",  # no customer: the subject needs one
             f"{people[0]},Again,Customer 0"]  # listed twice
    (stack.settings.data_dir / "readers.csv").write_text("\n".join(rows) + "\n")
    payload = {"template": "daily_digest", "recipients_file": "readers.csv", "rate": RATE, "key": "spring",
               "subject": "Digest for {{ customer }}",
               "context": {"date": "2026-01-01", "stats": {"jobs": 3}}}

    job = stack.client.enqueue("email.campaign", payload)
    def midway():
        p = stack.client.get_job(job.id).progress
        return p if p and 0 < (p["current"] or 0) < N else None

    partway = wait_until(midway, timeout=60, message="progress on the campaign job")
    assert partway["total"] == N
    summary = job.wait(timeout=120)

    assert (summary["sent"], summary["failed"], summary["planned"]) == (N, 0, N)
    assert (summary["invalid"], summary["skipped_duplicates"], summary["recipients"]) == (2, 1, N + 3)
    assert {e["row"] for e in summary["invalid_examples"]} == {N + 2, N + 3}
    received = stack.handler.messages
    assert len(received) == N
    assert sorted(r for m in received for r in m.rcpt_tos) == people
    assert len({m.message_id for m in received}) == N
    assert {m.subject for m in received if m.rcpt_tos == [people[7]]} == {"Digest for Customer 7"}

    # No faster than the rate: every send held a distinct slot, 1/RATE apart, all reserved after
    # the campaign job started.
    sent_at = sorted(r.sent_at for r in stack.outbox().messages(campaign="spring", limit=N + 10))
    started = stack.client.get_job(job.id).started_at
    assert len(sent_at) == N
    assert (sent_at[-1] - started).total_seconds() >= (N - 1) / RATE
    assert stack.client.get_job(job.id).progress == {"current": N, "total": N,
                                                     "message": f"done: sent {N}, failed 0, unknown 0"}

    # Again, from the CLI, with the same key: nobody gets it twice.
    again = run_cli(stack.settings, "email", "campaign", "--template", "daily_digest",
                    "--recipients", str(stack.settings.data_dir / "readers.csv"),
                    "--subject", "Digest for {{ customer }}", "-c", "date=2026-01-01",
                    "-c", 'stats={"jobs": 3}', "--rate", str(RATE), "--key", "spring",
                    "--wait", "--json", timeout=120)
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout)["result"]
    assert (result["sent"], result["skipped_duplicates"], result["invalid"]) == (0, N + 1, 2)
    assert len(stack.handler.messages) == N
