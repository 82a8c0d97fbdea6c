"""The email tasks: `email.send`, `email.campaign`, `email.release_due` and `email.deliver`."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from config import Settings
from jobs.db import utcnow
from tasks.email import campaign
from tasks.email.delivery import Sender, stale_after
from tasks.email.inputs import CampaignInput, DeliverInput, ReleaseDueInput, SendInput
from tasks.email.outbox import Outbox
from tasks.registry import job
from worker.base import ConveyorTask
from worker.ratelimit import Limit


def _campaign_rate(settings: Settings, data: SendInput | DeliverInput) -> float | None:
    return data.rate if isinstance(data, SendInput) else None


def _campaign(data: SendInput | DeliverInput) -> str | None:
    return data.campaign if isinstance(data, SendInput) else None


def _domains(data: SendInput | DeliverInput) -> list[str] | None:
    return (data.recipient_domains() if isinstance(data, SendInput) else data.domains) or None


#: Narrowest first (see worker.ratelimit): a campaign's own pace, then the recipient's domain,
#: then all mail. A limit whose rate or key is None does not apply to the message.
LIMITS = [
    Limit("email.campaign", rate=_campaign_rate, key=_campaign),
    Limit("email.domain", rate="email_domain_rate_limit", key=_domains),
    Limit("email", rate="email_rate_limit"),
]


@job("email.send", input=SendInput, rate_limit=LIMITS, example={
    "to": ["Demo <demo@example.org>"], "template": "daily_digest",
    "context": {"date": "2026-01-01", "stats": {"jobs_run": 1204, "jobs_failed": 3}},
})
def send(task: ConveyorTask, data: SendInput) -> dict[str, Any]:
    """Send one message (a template with context, or text/HTML) exactly once over SMTP."""
    return Sender(task).send(data)


@job("email.deliver", input=DeliverInput, rate_limit=LIMITS)
def deliver(task: ConveyorTask, data: DeliverInput) -> dict[str, Any]:
    """Send an outbox message already rendered: released when due, or resent by an operator."""
    return Sender(task).deliver(data.outbox_id)


@job("email.campaign", input=CampaignInput, example={
    "template": "daily_digest", "rate": 5,
    "context": {"date": "2026-01-01", "stats": {"jobs_run": 1204}},
    "recipients": ["Ann <ann@example.org>",
                   {"email": "Bob <bob@example.org>", "context": {"note": "Hi Bob"}}],
})
def send_campaign(task: ConveyorTask, data: CampaignInput) -> dict[str, Any]:
    """Send one template to a recipient list at a global rate; returns sent/failed/skipped."""
    return campaign.run(task, data)


@job("email.release_due", input=ReleaseDueInput, example={})
def release_due(task: ConveyorTask, data: ReleaseDueInput) -> dict[str, Any]:
    """Enqueue the scheduled messages whose send_at has come (the scheduler runs it every 30 s)."""
    from jobs.client import Client

    outbox = Outbox(task.settings.database_url)
    client = Client(task.app)
    now = utcnow()
    # A release whose job never ran (the broker lost it) is released again after this long.
    stale = now - stale_after(task.settings) - timedelta(seconds=task.settings.retry_backoff_max)
    released: list[int] = []
    for row in outbox.due(now, stale, data.limit):
        if not outbox.mark_released(row):
            continue  # another release_due took it
        domains = sorted({a.rsplit("@", 1)[-1].rstrip(">").lower()
                          for v in row.recipients.values() for a in v})
        client.enqueue("email.deliver", {"outbox_id": row.id, "domains": domains}, source="workflow")
        released.append(row.id)
    return {"released": len(released), "outbox_ids": released[:100]}
