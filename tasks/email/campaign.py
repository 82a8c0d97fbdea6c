"""`email.campaign`: one template, many recipients, one `email.send` job per recipient.

A campaign job runs in two phases, recorded in `email_campaigns` (its id is the job's id):

1. Plan: read the recipients (a payload list or a CSV file), validate each one as an
   `email.send` payload (a bad row is counted and reported, not fatal), and write one outbox
   row per recipient, keyed `campaign:<key>:<address>`. A recipient whose key was sent by an
   earlier run is skipped as a duplicate; one that failed or never went out is taken over.
2. Send: every second, top the send jobs in flight up to a couple of seconds' worth at the
   campaign's rate, count outcomes, report progress, and defer itself (the job goes back to
   the broker: a long campaign never holds a worker slot). The send jobs share the
   campaign's rate limit (`worker.ratelimit`), which holds the pace exactly across workers.
   When every row is sent, failed or unknown, the job returns the summary.

A redelivered campaign job plans again (idempotent: rows of its own run are recognised) or
carries on sending; duplicate send jobs are harmless, the outbox claims each message once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import timedelta
from itertools import islice
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from jobs.db import utcnow
from jobs.errors import PayloadInvalid
from tasks.email import compose
from tasks.email.addresses import parse_address
from tasks.email.delivery import stale_after
from tasks.email.inputs import CampaignInput, SendInput, read_recipients, row_recipient
from tasks.email.models import Campaign, CampaignStatus, OutboxStatus
from tasks.email.outbox import Outbox
from worker.ratelimit import defer

if TYPE_CHECKING:
    from worker.base import ConveyorTask

S = OutboxStatus
TICK = 1.0  # seconds between two looks at the campaign
LOOKAHEAD = 2.0  # seconds of sending kept enqueued ahead
CHUNK = 500
MAX_EXAMPLES = 20


def run(task: ConveyorTask, data: CampaignInput) -> dict[str, Any]:
    outbox = Outbox(task.settings.database_url)
    run_id: str = task.request.id or "direct"
    camp = outbox.campaign(run_id)
    if camp is not None and camp.status == CampaignStatus.DONE:
        return camp.summary or {}  # this job came back after it finished
    if camp is None or camp.status == CampaignStatus.PLANNING:
        camp = plan(task, data, outbox, run_id)
    return send(task, data, outbox, camp)


def recipients(data: CampaignInput, task: ConveyorTask) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """(row number, address, per-recipient context) for each recipient, in order."""
    if data.recipients is not None:
        for i, r in enumerate(data.recipients, start=1):
            yield i, r.email, r.context
        return
    column, reader, fh = read_recipients(data.recipients_path(task.settings))
    with fh:
        for i, row in enumerate(reader, start=2):  # line 1 is the header
            address, context = row_recipient(row, column)
            yield i, address, context


def plan(task: ConveyorTask, data: CampaignInput, outbox: Outbox, run_id: str) -> Campaign:
    s = task.settings
    key = data.key or run_id
    rate = data.rate or s.email_rate_limit
    outbox.save_campaign(run_id, key=key, template=data.template, rate=rate, status=CampaignStatus.PLANNING)
    sender = compose.sender(s).addr_spec
    counts = {"recipients": 0, "planned": 0, "skipped_duplicates": 0, "skipped_in_doubt": 0, "invalid": 0}
    examples: list[dict[str, Any]] = []
    seen: set[str] = set()
    stream = recipients(data, task)
    while chunk := list(islice(stream, CHUNK)):
        rows: list[dict[str, Any]] = []
        for number, address, context in chunk:
            counts["recipients"] += 1
            payload = _payload(data, address, {**data.context, **context}, run_id, rate)
            try:
                message = SendInput.model_validate(payload)
            except ValidationError as exc:
                counts["invalid"] += 1
                if len(examples) < MAX_EXAMPLES:
                    err = exc.errors(include_url=False)[0]
                    examples.append({"row": number, "address": address, "error": err.get("msg")})
                continue
            addr = parse_address(message.to[0]).addr_spec.lower()
            if addr in seen:
                counts["skipped_duplicates"] += 1
                continue
            seen.add(addr)
            payload.update(to=message.to, key=f"campaign:{key}:{addr}")
            rows.append({
                "key": payload["key"], "message_id": compose.new_message_id(s), "sender": sender,
                "recipients": {"to": message.to, "cc": [], "bcc": []}, "template": data.template,
                "subject": message.content().subject, "campaign": key, "campaign_run": run_id,
                "payload": payload,
            })
        existing = outbox.states([r["key"] for r in rows])
        outbox.insert_planned([r for r in rows if r["key"] not in existing])
        counts["planned"] += sum(1 for r in rows if r["key"] not in existing)
        for r in rows:
            if r["key"] not in existing:
                continue
            status, owner = existing[r["key"]]
            if owner == run_id:
                counts["planned"] += 1  # planned by this run before it was interrupted
            elif status == S.SENT:
                counts["skipped_duplicates"] += 1
            elif status in (S.QUEUED, S.FAILED) and outbox.take_over(
                    r["key"], status, run_id, {"payload": r["payload"], "campaign": key,
                                               "subject": r["subject"], "template": data.template}):
                counts["planned"] += 1
            else:  # sending, unknown, scheduled, or changed meanwhile: not ours to send
                counts["skipped_in_doubt"] += 1
        task.progress(0, None, f"planning: {counts['recipients']} recipients read")
    return outbox.save_campaign(run_id, status=CampaignStatus.SENDING, invalid_examples=examples or None,
                                **counts)


def _payload(data: CampaignInput, address: str, context: dict[str, Any], run_id: str,
             rate: float) -> dict[str, Any]:
    payload: dict[str, Any] = {"to": [address], "template": data.template, "context": context,
                               "campaign": run_id, "rate": rate}
    if data.subject is not None:
        payload["subject"] = data.subject
    for name in ("attachments", "reply_to", "headers"):
        if getattr(data, name):
            payload[name] = getattr(data, name)
    return payload


def send(task: ConveyorTask, data: CampaignInput, outbox: Outbox, camp: Campaign) -> dict[str, Any]:
    counts = outbox.campaign_counts(camp.id)
    total = sum(counts.values())
    sent, failed, unknown = (counts.get(st, 0) for st in (S.SENT, S.FAILED, S.UNKNOWN))
    done = sent + failed + unknown
    if done >= total:
        return finish(task, outbox, camp, counts)
    in_flight = outbox.in_flight(camp.id)
    stuck_before = utcnow() - stale_after(task.settings) - timedelta(seconds=task.settings.retry_backoff_max)
    batch = outbox.to_enqueue(camp.id, max(10, math.ceil(camp.rate * LOOKAHEAD)) - in_flight, stuck_before)
    _enqueue(task, outbox, batch)
    task.progress(done, total, f"sent {sent}, failed {failed}, unknown {unknown}; "
                               f"{in_flight + len(batch)} in flight")
    defer(task, TICK)


def _enqueue(task: ConveyorTask, outbox: Outbox, batch: list[tuple[int, dict[str, Any]]]) -> None:
    """One `email.send` job per row; rows whose payload no longer validates fail."""
    from jobs.client import Client

    client = Client(task.app)
    while batch:
        try:
            client.enqueue_many("email.send", [p for _, p in batch], source="workflow")
        except PayloadInvalid as exc:
            bad = {e["loc"][0]: e.get("msg", "invalid") for e in exc.errors if e.get("loc")}
            outbox.fail_unsent([batch[i][0] for i in bad], "; ".join(sorted(set(map(str, bad.values())))))
            batch = [b for i, b in enumerate(batch) if i not in bad]
            continue
        outbox.mark_enqueued([i for i, _ in batch])
        return


def finish(task: ConveyorTask, outbox: Outbox, camp: Campaign, counts: dict[str, int]) -> dict[str, Any]:
    now = utcnow()
    summary = {
        "campaign": camp.key, "run": camp.id, "template": camp.template, "rate": camp.rate,
        "recipients": camp.recipients, "planned": sum(counts.values()),
        "sent": counts.get(S.SENT, 0), "failed": counts.get(S.FAILED, 0), "unknown": counts.get(S.UNKNOWN, 0),
        "skipped_duplicates": camp.skipped_duplicates, "skipped_in_doubt": camp.skipped_in_doubt,
        "invalid": camp.invalid, "invalid_examples": camp.invalid_examples or [],
        "started_at": camp.created_at.isoformat(), "finished_at": now.isoformat(),
        "seconds": round((now - camp.created_at).total_seconds(), 3),
    }
    outbox.save_campaign(camp.id, status=CampaignStatus.DONE, summary=summary, finished_at=now)
    planned = sum(counts.values())
    task.progress(planned, planned, f"done: sent {summary['sent']}, failed {summary['failed']}, "
                                    f"unknown {summary['unknown']}")
    return summary
