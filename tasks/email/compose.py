"""Build the MIME message: multipart/alternative bodies, attachments, headers, Message-ID.

Attachments are files other jobs produced or operators dropped in: a path must resolve (with
symlinks followed) inside `settings.data_dir` or `settings.results_dir`, so a payload cannot
mail `/etc/passwd` or `../../secrets`. They are checked when the job is enqueued and again
when the message is built, in case a file was swapped in between.
"""

from __future__ import annotations

import mimetypes
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

from config import Settings
from tasks.email.addresses import Mailbox, parse_address
from tasks.email.errors import AttachmentRejected


@dataclass(frozen=True)
class Attachment:
    path: Path
    size: int


def resolve_attachment(value: str, settings: Settings) -> Attachment:
    """The file `value` names, confined to the data and results directories."""
    roots = [settings.data_dir.resolve(), settings.results_dir.resolve()]
    raw = Path(value).expanduser()
    candidates = [raw] if raw.is_absolute() else [root / raw for root in roots]
    for candidate in candidates:
        try:
            real = candidate.resolve(strict=True)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except (OSError, RuntimeError) as exc:  # a symlink loop, a permission error
            raise AttachmentRejected(f"attachment {value!r} cannot be read: {exc}") from None
        if not any(real.is_relative_to(root) for root in roots):
            raise AttachmentRejected(
                f"attachment {value!r} is outside the data directory ({roots[0]}) and the results "
                f"directory ({roots[1]})"
            )
        if not real.is_file():
            raise AttachmentRejected(f"attachment {value!r} is not a regular file")
        return Attachment(real, real.stat().st_size)
    where = "" if raw.is_absolute() else f" in {roots[0]} or {roots[1]}"
    raise AttachmentRejected(f"attachment {value!r} does not exist{where}")


def resolve_attachments(values: Sequence[str], settings: Settings) -> list[Attachment]:
    """Every attachment, checked; their total size must stay within the configured limit."""
    found = [resolve_attachment(v, settings) for v in values]
    total = sum(a.size for a in found)
    if total > settings.attachment_max_bytes:
        raise AttachmentRejected(
            f"attachments total {total:,} bytes; the limit is {settings.attachment_max_bytes:,} "
            "(CONVEYOR_ATTACHMENT_MAX_BYTES)"
        )
    return found


def sender(settings: Settings) -> Mailbox:
    return parse_address(settings.mail_from, deliverable=False)


def new_message_id(settings: Settings) -> str:
    """A globally unique Message-ID on the sender's domain, fixed when the outbox row is made."""
    return f"<{uuid.uuid4().hex}@{sender(settings).domain}>"


@dataclass(frozen=True)
class Content:
    """What a message says, whatever produced it (a template, or text/HTML from the payload)."""

    to: Sequence[str]
    cc: Sequence[str]
    bcc: Sequence[str]
    subject: str
    text: str
    html: str | None = None
    reply_to: Sequence[str] = ()
    headers: dict[str, str] | None = None
    attachments: Sequence[str] = ()

    def envelope(self) -> list[str]:
        """The envelope recipients (to, cc and bcc), each once, in order."""
        seen: dict[str, None] = {}
        for value in (*self.to, *self.cc, *self.bcc):
            seen.setdefault(parse_address(value).addr_spec, None)
        return list(seen)


def build(content: Content, settings: Settings, *, message_id: str, date: datetime) -> bytes:
    """The message as SMTP-ready bytes (CRLF line ends, 7-bit safe headers and bodies)."""
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = sender(settings).formatted
    if content.to:
        msg["To"] = ", ".join(parse_address(a).formatted for a in content.to)
    if content.cc:
        msg["Cc"] = ", ".join(parse_address(a).formatted for a in content.cc)
    if content.reply_to:
        msg["Reply-To"] = ", ".join(parse_address(a).formatted for a in content.reply_to)
    msg["Subject"] = content.subject
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = message_id
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to job mail
    for name, value in (content.headers or {}).items():
        if name.lower() in msg:
            del msg[name]
        msg[name] = value
    msg.set_content(content.text or "")
    if content.html is not None:
        msg.add_alternative(content.html, subtype="html")
    for attachment in resolve_attachments(content.attachments, settings):
        ctype, encoding = mimetypes.guess_type(attachment.path.name)
        if ctype is None or encoding is not None:
            ctype = "application/octet-stream"
        maintype, subtype = ctype.split("/", 1)
        msg.add_attachment(attachment.path.read_bytes(), maintype=maintype, subtype=subtype,
                           filename=attachment.path.name)
    return msg.as_bytes()
