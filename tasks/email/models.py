"""The outbox (one row per message) and the campaigns table.

The outbox is what makes a send exactly-once: a job claims its message's row (a conditional
update from `queued` to `sending`) before it talks SMTP, marks the moment the message data is
handed over (`data_at`), and marks it `sent` before the task acks. A job that comes back finds
the row and knows what happened; see `tasks.email.delivery.decide`.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Float, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from jobs.db import Base, JSONType


class OutboxStatus(StrEnum):
    SCHEDULED = "scheduled"  # waits for send_at; email.release_due releases it
    QUEUED = "queued"  # waits for a job to send it (first time, or after a transient failure)
    SENDING = "sending"  # claimed by a job that is talking to the SMTP server
    SENT = "sent"  # the server accepted the message
    FAILED = "failed"  # refused for good, or out of retries: nothing was handed over
    UNKNOWN = "unknown"  # lost after the data was handed over: may have gone out; an operator decides

    @property
    def final(self) -> bool:
        return self in FINAL


FINAL = frozenset({OutboxStatus.SENT, OutboxStatus.FAILED, OutboxStatus.UNKNOWN})


class OutboxMessage(Base):
    __tablename__ = "email_outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    #: The deduplication key: a second job with the same key never sends again.
    key: Mapped[str] = mapped_column(String(255), unique=True)
    #: The Message-ID header, with its angle brackets; fixed when the row is created.
    message_id: Mapped[str] = mapped_column(String(255), unique=True)
    status: Mapped[str] = mapped_column(String(16), default=OutboxStatus.QUEUED)
    sender: Mapped[str] = mapped_column(String(320))
    #: {"to": [...], "cc": [...], "bcc": [...]} as formatted addresses.
    recipients: Mapped[dict[str, Any]]
    subject: Mapped[str | None] = mapped_column(Text)
    template: Mapped[str | None] = mapped_column(String(200))
    campaign: Mapped[str | None] = mapped_column(String(255), index=True)
    #: The campaign job (run) that owns the row now; a re-run takes over unsent rows.
    campaign_run: Mapped[str | None] = mapped_column(String(64))
    #: What to enqueue for a row not yet rendered (a campaign's recipient).
    payload: Mapped[dict[str, Any] | None] = mapped_column(deferred=True)
    #: The rendered message (RFC 5322 bytes), kept for resends.
    raw: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    size: Mapped[int | None]
    send_at: Mapped[datetime | None]
    released_at: Mapped[datetime | None]
    enqueued_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: The job holding (or that last held) the claim.
    job_id: Mapped[str | None] = mapped_column(String(64))
    claimed_at: Mapped[datetime | None]
    #: Set when the server said "354 go ahead": from then on a lost connection means unknown.
    data_at: Mapped[datetime | None]
    last_response: Mapped[str | None] = mapped_column(Text)
    #: Recipients the server refused while taking the message for the others.
    refused: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]

    __table_args__ = (
        Index("ix_email_outbox_status_send_at", "status", "send_at"),
        Index("ix_email_outbox_campaign_run_status", "campaign_run", "status"),
        Index("ix_email_outbox_created_at", "created_at"),
    )


class CampaignStatus(StrEnum):
    PLANNING = "planning"  # reading recipients, writing their outbox rows
    SENDING = "sending"  # enqueueing send jobs at the campaign's pace, counting outcomes
    DONE = "done"


class Campaign(Base):
    """One run of `email.campaign`; its id is the campaign job's id."""

    __tablename__ = "email_campaigns"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), index=True)
    template: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default=CampaignStatus.PLANNING)
    rate: Mapped[float] = mapped_column(Float)
    recipients: Mapped[int] = mapped_column(Integer, default=0)
    planned: Mapped[int] = mapped_column(Integer, default=0)
    skipped_duplicates: Mapped[int] = mapped_column(Integer, default=0)
    skipped_in_doubt: Mapped[int] = mapped_column(Integer, default=0)
    invalid: Mapped[int] = mapped_column(Integer, default=0)
    invalid_examples: Mapped[list[Any] | None] = mapped_column(JSONType)
    summary: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
