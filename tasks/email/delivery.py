"""Send a message exactly once, whatever retries, redeliveries and duplicate jobs do.

A job (an `email.send` or `email.deliver` attempt) finds its message's outbox row, decides
from the row alone what to do (`decide`), claims it with a compare-and-set, and only then
talks SMTP. The outcome is written before the task returns, so before Celery acks:

- `sent`: the server took it; a job that comes back returns the same result.
- `queued` again: a transient failure before the handover; the job's retry claims it again.
- `failed`: refused for good, or out of retries; nothing was handed over.
- `unknown`: the connection (or the worker) was lost after the handover. The job that comes
  back sees `sending` with `data_at` set and records `unknown` instead of sending again.

A worker killed before the handover leaves `sending` without `data_at`: its job comes back
(Celery requeues it) and sends. A claim older than `stale_after` whose job never came back
is treated the same way by any job with the message's key.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from config import Settings
from jobs.db import utcnow
from jobs.errors import PermanentError, StoreUnavailable
from tasks.email import compose, smtp
from tasks.email.addresses import parse_address
from tasks.email.errors import DeliveryUnknown, SmtpPermanentError, SmtpTemporaryError
from tasks.email.models import OutboxMessage, OutboxStatus
from tasks.email.outbox import Outbox

if TYPE_CHECKING:
    from tasks.email.inputs import SendInput
    from worker.base import ConveyorTask

log = logging.getLogger("conveyor.email")
S = OutboxStatus


class Action(StrEnum):
    CLAIM = "claim"  # take the row and send
    DONE = "done"  # sent already: report it
    WAIT = "wait"  # scheduled for later: nothing to do now
    BUSY = "busy"  # another live job is sending it
    UNKNOWN = "unknown"  # lost after the handover: record unknown, do not send
    REFUSE = "refuse"  # failed for this job, or unknown: raise, do not send


def stale_after(settings: Settings) -> timedelta:
    """How long a claim may last before its job is presumed dead: longer than any SMTP
    conversation can take (each step is bounded by the SMTP timeout)."""
    return timedelta(seconds=max(300.0, 10 * settings.smtp_timeout))


def decide(row: OutboxMessage, job_id: str, now: datetime, stale: timedelta) -> Action:
    """What job `job_id` does with `row`, from the row alone."""
    status = S(row.status)
    if status is S.SENT:
        return Action.DONE
    if status is S.SCHEDULED:
        return Action.WAIT if row.send_at and row.send_at > now else Action.CLAIM
    if status is S.QUEUED:
        return Action.CLAIM
    if status is S.FAILED:
        return Action.REFUSE if row.job_id == job_id else Action.CLAIM  # another job asks again
    if status is S.UNKNOWN:
        return Action.REFUSE
    # SENDING: ours (we came back after our worker was lost), or abandoned, or someone else's.
    abandoned = row.claimed_at is None or row.claimed_at < now - stale
    if row.job_id == job_id or abandoned:
        return Action.UNKNOWN if row.data_at is not None else Action.CLAIM
    return Action.BUSY


def result(row: OutboxMessage, *, duplicate: bool, **extra: Any) -> dict[str, Any]:
    out = {"outbox_id": row.id, "key": row.key, "message_id": row.message_id, "status": row.status,
           "duplicate": duplicate, "response": row.last_response,
           "sent_at": row.sent_at.isoformat() if row.sent_at else None}
    if row.refused:
        out["refused"] = row.refused
    return {**out, **extra}


class Sender:
    """Runs the outbox protocol for one job attempt."""

    def __init__(self, task: ConveyorTask) -> None:
        self.task = task
        self.settings: Settings = task.settings
        self.outbox = Outbox(self.settings.database_url)
        self.job_id: str = task.request.id or f"direct-{time.monotonic_ns()}"
        self.final = task.request.retries >= task.effective_max_retries()

    # --- entry points -------------------------------------------------------------------------
    def send(self, data: SendInput) -> dict[str, Any]:
        key = data.key or f"job:{self.job_id}"
        # A campaign's rows exist (the campaign planned them): read first. Other mail is new but
        # for a retry or a duplicate: insert first, and read only if the key is taken.
        insert_first = data.campaign is None
        for turn in range(5):  # each turn re-reads the row after losing a race
            row = None if insert_first and turn == 0 else self.outbox.find(key)
            if row is None:
                row = self._create(key, data)
                if row is None:
                    continue
                if row.status == S.SCHEDULED:
                    return result(row, duplicate=False,
                                  send_at=row.send_at.isoformat() if row.send_at else None)
                return self._transmit(row, data, row.raw)
            outcome = self._existing(row, data)
            if outcome is not None:
                return outcome
        raise PermanentError(f"message {key!r} kept changing under this job; giving up")

    def deliver(self, outbox_id: int) -> dict[str, Any]:
        for _ in range(5):
            row = self.outbox.get(outbox_id)
            outcome = self._existing(row, None)
            if outcome is not None:
                return outcome
        raise PermanentError(f"outbox message {outbox_id} kept changing under this job; giving up")

    # --- steps --------------------------------------------------------------------------------
    def _create(self, key: str, data: SendInput) -> OutboxMessage | None:
        s = self.settings
        now = utcnow()
        message_id = compose.new_message_id(s)
        scheduled = data.send_at is not None and data.send_at > now
        content = data.content()
        date = data.send_at if scheduled and data.send_at else now
        raw = compose.build(content, s, message_id=message_id, date=date)
        values: dict[str, Any] = {
            "key": key, "message_id": message_id, "sender": compose.sender(s).addr_spec,
            "recipients": {"to": list(data.to), "cc": list(data.cc), "bcc": list(data.bcc)},
            "subject": content.subject, "template": data.template, "raw": raw, "size": len(raw),
            "send_at": data.send_at, "campaign_run": data.campaign,
        }
        if scheduled:
            values.update(status=S.SCHEDULED)
        else:
            values.update(status=S.SENDING, job_id=self.job_id, claimed_at=now, attempts=1)
        return self.outbox.create(values)

    def _existing(self, row: OutboxMessage, data: SendInput | None) -> dict[str, Any] | None:
        """Act on a row that exists; None means the row changed meanwhile: read it again."""
        action = decide(row, self.job_id, utcnow(), stale_after(self.settings))
        if action is Action.DONE:
            return result(row, duplicate=row.job_id != self.job_id)
        if action is Action.WAIT:
            return result(row, duplicate=True, send_at=row.send_at.isoformat() if row.send_at else None)
        if action is Action.BUSY:
            return result(row, duplicate=True)
        if action is Action.REFUSE:
            if row.status == S.UNKNOWN:
                raise DeliveryUnknown(
                    f"message {row.id} ({row.key}) may have been delivered already (status unknown: "
                    f"{row.last_response}); an operator decides: conveyor email resend {row.id}")
            raise SmtpPermanentError(f"message {row.id} failed: {row.last_response}")
        if action is Action.UNKNOWN:
            reply = "the worker was lost after the message data was handed over"
            self.outbox.mark_unknown(row.id, row.job_id or "", reply)
            raise DeliveryUnknown(f"message {row.id} ({row.key}): {reply}; it may have been delivered. "
                                  f"An operator decides: conveyor email resend {row.id}")
        claimed = self.outbox.claim(row, self.job_id)
        if claimed is None:
            return None
        return self._transmit(claimed, data, claimed.raw)

    def _transmit(self, row: OutboxMessage, data: SendInput | None, raw: bytes | None) -> dict[str, Any]:
        """Talk SMTP for a row this job holds; record the outcome before returning."""
        s = self.settings
        extra: dict[str, Any] = {}
        if raw is None:  # a campaign row: rendered now, stored with the handover
            if data is None:
                self.outbox.mark_failed(row.id, self.job_id, "nothing to send: never rendered")
                raise PermanentError(f"outbox message {row.id} was never rendered")
            content = data.content()
            raw = compose.build(content, s, message_id=row.message_id, date=utcnow())
            extra = {"raw": raw, "size": len(raw), "subject": content.subject, "template": data.template}
        recipients = [parse_address(a).addr_spec
                      for a in (*row.recipients.get("to", ()), *row.recipients.get("cc", ()),
                                *row.recipients.get("bcc", ()))]
        recipients = list(dict.fromkeys(recipients))

        def handover() -> None:
            if not self.outbox.handover(row.id, self.job_id, **extra):
                raise PermanentError(f"message {row.id} is no longer claimed by this job")

        try:
            delivered = smtp.connection(s).send(row.sender, recipients, raw, handover)
        except SmtpTemporaryError as exc:
            if self.final:
                self.outbox.mark_failed(row.id, self.job_id,
                                        f"gave up after {row.attempts} attempts: {exc.reply}")
            else:
                self.outbox.requeue(row.id, self.job_id, exc.reply)
            raise
        except SmtpPermanentError as exc:
            self.outbox.mark_failed(row.id, self.job_id, exc.reply, exc.refused)
            raise
        except DeliveryUnknown as exc:
            self.outbox.mark_unknown(row.id, self.job_id, exc.reply)
            raise
        sent_at = utcnow()
        self._mark_sent(row, delivered, sent_at)
        row.status, row.last_response, row.sent_at = S.SENT, delivered.reply, sent_at
        row.refused = delivered.refused or None
        return result(row, duplicate=False)

    def _mark_sent(self, row: OutboxMessage, delivered: smtp.Delivered, sent_at: datetime) -> None:
        """The server has the message: write `sent` before the task acks, trying a little harder
        than usual (a row left `sending` would be recorded `unknown` by the job's next run)."""
        for attempt in range(4):
            try:
                if not self.outbox.mark_sent(row.id, self.job_id, delivered.reply, delivered.refused,
                                             sent_at):
                    log.error("message %s was sent but its claim had moved on; check for a duplicate", row.id)
                return
            except StoreUnavailable:
                if attempt == 3:
                    raise
                time.sleep(0.5 * (attempt + 1))
