"""The email tasks' input models. Their validators are the enqueue-time checks.

`Client.validate` runs `spec.input.model_validate(payload)` before anything is recorded or
published, so everything a caller can get wrong is caught here: addresses, header injection,
a missing template or template variable, an attachment outside the data directories or over
the size limit. The worker validates again when it runs the job (files may have changed).
Validators read `config.get_settings()`: the process's own settings, as the worker's are.
"""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from config import Settings, get_settings
from tasks.email.addresses import check_header, check_header_value, parse_address
from tasks.email.compose import Attachment, Content, resolve_attachment, resolve_attachments
from tasks.email.errors import InvalidAddress, RecipientsInvalid
from tasks.email.render import Rendered, check_name, render_subject, render_template


def _listify(value: Any) -> Any:
    """One address may be given as a string instead of a list of one."""
    return [value] if isinstance(value, str) else value


def _address(value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidAddress(f"an address must be a string, not {type(value).__name__}")
    return parse_address(value).formatted


Address = Annotated[str, BeforeValidator(_address)]
Addresses = Annotated[list[Address], BeforeValidator(_listify)]


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ValueError("send_at must carry a timezone (for example 2026-01-01T07:00:00+00:00)")
    return value.astimezone(UTC) if value is not None else None


class MessageFields(BaseModel):
    """What a single message and a campaign's messages share."""

    model_config = ConfigDict(extra="forbid")

    subject: str | None = Field(default=None, max_length=998,
                                description="may use {{ variables }} with a template")
    template: str | None = Field(default=None, max_length=200,
                                 description="a template name (see `conveyor email templates`)")
    context: dict[str, Any] = Field(default_factory=dict, description="the template's variables")
    attachments: list[str] = Field(default_factory=list, max_length=50,
                                   description="files under the data or results directory")
    reply_to: Addresses = Field(default_factory=list, max_length=10)
    headers: dict[str, str] = Field(default_factory=dict, max_length=50, description="extra headers")

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, v in value.items():
            check_header(name, v)
        return value

    @field_validator("subject")
    @classmethod
    def _subject(cls, value: str | None) -> str | None:
        if value is not None:
            check_header_value("Subject", value)
        return value

    @field_validator("template")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        if value is not None:
            check_name(value)
        return value


class SendInput(MessageFields):
    """One message: to/cc/bcc, a subject, and a template with context or text and/or HTML."""

    to: Addresses = Field(default_factory=list, description="'jane@example.org' or 'Jane <jane@example.org>'")
    cc: Addresses = Field(default_factory=list)
    bcc: Addresses = Field(default_factory=list)
    text: str | None = Field(default=None, description="the plain-text body (instead of a template)")
    html: str | None = Field(default=None, description="the HTML body (instead of a template)")
    send_at: datetime | None = Field(default=None, description="send no sooner than this (ISO, with offset)")
    key: str | None = Field(default=None, min_length=1, max_length=200,
                            description="deduplication key: a key already sent is not sent again")
    campaign: str | None = Field(default=None, max_length=64, description="set by email.campaign: its run")
    rate: float | None = Field(default=None, gt=0, le=100_000, description="set by email.campaign: its rate")

    _rendered: Rendered = PrivateAttr()
    _attachments: list[Attachment] = PrivateAttr(default_factory=list)

    @field_validator("send_at")
    @classmethod
    def _send_at(cls, value: datetime | None) -> datetime | None:
        return _aware(value)

    @field_validator("key")
    @classmethod
    def _key(cls, value: str | None) -> str | None:
        if value is not None and (not value.isprintable() or value != value.strip()):
            raise ValueError("the key must be printable, without leading or trailing spaces")
        return value

    @model_validator(mode="after")
    def _message(self) -> SendInput:
        settings = get_settings()
        recipients = len(self.to) + len(self.cc) + len(self.bcc)
        if recipients == 0:
            raise ValueError("give at least one recipient in to, cc or bcc")
        if recipients > settings.email_max_recipients:
            raise ValueError(f"{recipients} recipients; the limit is {settings.email_max_recipients} "
                             "(CONVEYOR_EMAIL_MAX_RECIPIENTS); use email.campaign for lists")
        if self.template and (self.text is not None or self.html is not None):
            raise ValueError("give a template or text/html, not both")
        if self.template:
            rendered = render_template(self.template, self.context, settings.templates_dir)
        elif self.text is not None or self.html is not None:
            from tasks.email.render import html_to_text

            text = self.text if self.text is not None else html_to_text(self.html or "")
            rendered = Rendered(None, self.html, text)
        else:
            raise ValueError("give a template (with context) or a text and/or html body")
        subject = self.subject
        if subject is not None and self.template:
            subject = render_subject(subject, self.context)
        subject = subject or rendered.subject
        if not subject:
            raise ValueError("give a subject (the template has no .subject.txt)")
        check_header_value("Subject", subject)
        self._rendered = Rendered(subject, rendered.html, rendered.text)
        self._attachments = resolve_attachments(self.attachments, settings)
        return self

    def content(self) -> Content:
        """The rendered message, ready for `compose.build`."""
        r = self._rendered
        return Content(to=self.to, cc=self.cc, bcc=self.bcc, subject=r.subject or "", text=r.text,
                       html=r.html, reply_to=self.reply_to, headers=self.headers,
                       attachments=[str(a.path) for a in self._attachments])

    def recipient_domains(self) -> list[str]:
        """The recipients' domains, for per-domain rate limits."""
        return sorted({parse_address(a).domain for a in (*self.to, *self.cc, *self.bcc)})


class Recipient(BaseModel):
    """One campaign recipient with the context only this recipient gets."""

    model_config = ConfigDict(extra="forbid")
    email: Address
    context: dict[str, Any] = Field(default_factory=dict)


RecipientItem = Annotated[Recipient, BeforeValidator(lambda v: {"email": v} if isinstance(v, str) else v)]
EMAIL_COLUMNS = ("email", "to", "address")


def recipient_column(fields: list[str] | None) -> str:
    """The CSV column that holds the address."""
    names = [f.strip().lower() for f in fields or []]
    for candidate in EMAIL_COLUMNS:
        if candidate in names:
            return (fields or [])[names.index(candidate)]
    found = ", ".join(fields or []) or "none"
    raise RecipientsInvalid(f"the recipients file needs an 'email' column; it has {found}")


def read_recipients(path: Path) -> tuple[str, csv.DictReader[str], Any]:
    """Open a recipients CSV: (the address column, a reader of its rows, the open file)."""
    fh = path.open(newline="", encoding="utf-8-sig")
    try:
        reader = csv.DictReader(fh)
        column = recipient_column(list(reader.fieldnames or []))
    except (csv.Error, UnicodeDecodeError) as exc:
        fh.close()
        raise RecipientsInvalid(f"{path} is not a readable UTF-8 CSV file: {exc}") from None
    except RecipientsInvalid:
        fh.close()
        raise
    return column, reader, fh


def row_recipient(row: dict[str, Any], column: str) -> tuple[str, dict[str, Any]]:
    """A CSV row as (address, context): every other non-empty column is a template variable."""
    address = (row.get(column) or "").strip()
    context = {k.strip(): v for k, v in row.items() if k and k != column and v not in (None, "")}
    name = (row.get("name") or "").strip()
    if name and "<" not in address:
        quoted = name.replace("\\", "\\\\").replace('"', '\\"')
        address = f'"{quoted}" <{address}>'
    return address, context


class CampaignInput(MessageFields):
    """One template to many recipients, at a rate shared by every worker."""

    template: str = Field(max_length=200, description="a template name (see `conveyor email templates`)")
    recipients: list[RecipientItem] | None = Field(
        default=None, max_length=100_000, description="addresses, or {email, context} objects")
    recipients_file: str | None = Field(
        default=None, description="a CSV under the data or results directory: an email column, "
        "other columns are per-recipient variables")
    rate: float | None = Field(default=None, gt=0, le=100_000,
                               description="messages per second (default CONVEYOR_EMAIL_RATE_LIMIT)")
    key: str | None = Field(default=None, min_length=1, max_length=150,
                            description="re-running with the same key skips recipients who got it")

    _file: Path | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _campaign(self) -> CampaignInput:
        settings = get_settings()
        if (self.recipients is None) == (self.recipients_file is None):
            raise ValueError("give recipients (a list) or recipients_file (a CSV), one of them")
        first: dict[str, Any] | None = None
        if self.recipients is not None:
            if not self.recipients:
                raise ValueError("the recipient list is empty")
            first = self.recipients[0].context
        else:
            self._file = resolve_attachment(self.recipients_file or "", settings).path
            column, reader, fh = read_recipients(self._file)
            with fh:
                row = next(reader, None)
            if row is None:
                raise RecipientsInvalid(f"{self.recipients_file} has no recipients")
            first = row_recipient(row, column)[1]
        # Render once for the first recipient: a variable no recipient can give fails here.
        context = {**self.context, **(first or {})}
        rendered = render_template(self.template, context, settings.templates_dir)
        if self.subject is not None:
            render_subject(self.subject, context)
        elif not rendered.subject:
            raise ValueError("give a subject (the template has no .subject.txt)")
        resolve_attachments(self.attachments, settings)
        return self

    def recipients_path(self, settings: Settings) -> Path:
        return self._file or resolve_attachment(self.recipients_file or "", settings).path


class DeliverInput(BaseModel):
    """Send an outbox message that is already rendered (released, or resent by an operator)."""

    model_config = ConfigDict(extra="forbid")
    outbox_id: int = Field(ge=1)
    domains: list[str] = Field(default_factory=list, max_length=100, description="for per-domain rate limits")


class ReleaseDueInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    limit: int = Field(default=1000, ge=1, le=100_000, description="messages released per run at most")
