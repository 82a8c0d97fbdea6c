"""Build the MIME message: multipart/alternative bodies, attachments, headers, Message-ID.

Attachments are files other jobs produced or operators dropped in: a path must resolve (with
symlinks followed) inside `settings.data_dir` or `settings.results_dir`, so a payload cannot
mail `/etc/passwd` or `../../secrets`. They are checked when the job is enqueued and again
when the message is built, in case a file was swapped in between.
"""

from __future__ import annotations

import binascii
import mimetypes
import random
import re
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email import policy, quoprimime
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

from config import Settings
from tasks.email.addresses import RESERVED_HEADERS, Mailbox, parse_address
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
    """The message as SMTP-ready bytes (CRLF line ends, 7-bit safe headers).

    The standard library's `EmailMessage` parses every header it is given and refolds it on
    output: 0.6 ms for a plain-text message, 1.1 ms with an HTML alternative, more than the rest
    of a send. A message without attachments whose headers are short ASCII (most job mail) is
    written directly instead, byte for byte what `EmailMessage` writes, bodies encoded by the
    same rules with the same standard-library encoders (tests/email/test_email_perf_compose.py
    compares the two on generated messages). Anything else goes through `EmailMessage`."""
    return _direct(content, settings, message_id, date) or _mime(content, settings,
                                                                 message_id=message_id, date=date)


# --- the direct writer: only what it writes exactly as EmailMessage would -------------------
#: A header value policy.SMTP writes unchanged: printable ASCII words separated by single
#: spaces (and nothing that could read as an RFC 2047 encoded word, checked apart).
_PLAIN_VALUE = re.compile(r"[!-~]+(?: [!-~]+)*")
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_ADDR_SPEC = rf"{_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
#: An address policy.SMTP writes unchanged: a bare addr-spec, or a display name of plain atoms.
_PLAIN_ADDRESS = re.compile(rf"{_ATOM}(?: {_ATOM})* <{_ADDR_SPEC}>|{_ADDR_SPEC}")
_PLAIN_MESSAGE_ID = re.compile(r"<[A-Za-z0-9.-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*>")
_FIELD_NAME = re.compile(r"[!-9;-~]+")
_NEWLINES = re.compile(r"\r\n|\r|\n")
_POLICY = policy.SMTP
_WIDTH: int = _POLICY.max_line_length or 78  # policy.SMTP folds and picks 7bit at 78
_BOUNDARY_DIGITS = len(repr(sys.maxsize - 1))  # as email.generator draws its boundaries


def _direct(content: Content, settings: Settings, message_id: str, date: datetime) -> bytes | None:
    """The message written directly; None unless every header is short plain ASCII and there
    are no attachments. A text body, or text and HTML as multipart/alternative."""
    if content.attachments:
        return None
    head = _direct_headers(content, settings, message_id, date)
    if head is None:
        return None
    text = _part("plain", content.text or "")
    if content.html is None:  # set_content: Content-Type, -Transfer-Encoding, then MIME-Version
        return head + text[0] + b"MIME-Version: 1.0\r\n\r\n" + text[1]
    html = _part("html", content.html)  # add_alternative: the new part gets its own MIME-Version
    boundary = _boundary(text[1] + html[1])
    return b"".join((
        head, b"MIME-Version: 1.0\r\nContent-Type: multipart/alternative;\r\n boundary=\"", boundary,
        b'"\r\n\r\n--', boundary, b"\r\n", text[0], b"\r\n", text[1],
        b"\r\n--", boundary, b"\r\n", html[0], b"MIME-Version: 1.0\r\n\r\n", html[1],
        b"\r\n--", boundary, b"--\r\n"))


def _direct_headers(content: Content, settings: Settings, message_id: str, date: datetime) -> bytes | None:
    """From ... Auto-Submitted and the custom headers, as EmailMessage writes them; None if
    one of them would be encoded, folded, or moved or dropped by `set_content` (Content-*)."""
    headers: dict[str, tuple[str, str | None]] = {  # lower-case name -> (name, value), in order
        "from": ("From", _plain_addresses([sender(settings)])),
    }
    for label, values in (("To", content.to), ("Cc", content.cc), ("Reply-To", content.reply_to)):
        if values:
            headers[label.lower()] = (label, _plain_addresses([parse_address(a) for a in values]))
    headers["subject"] = ("Subject", content.subject)
    headers["date"] = ("Date", format_datetime(date))
    headers["message-id"] = ("Message-ID", message_id if _PLAIN_MESSAGE_ID.fullmatch(message_id) else None)
    headers["auto-submitted"] = ("Auto-Submitted", "auto-generated")
    for custom, text in (content.headers or {}).items():
        lower = custom.lower()
        if lower in RESERVED_HEADERS or lower.startswith("content-") or not _FIELD_NAME.fullmatch(custom):
            return None
        headers.pop(lower, None)  # as `del msg[name]` then `msg[name] = value`: moved last
        headers[lower] = (custom, text)
    lines = []
    for name, value in headers.values():
        if value is None or not _PLAIN_VALUE.fullmatch(value) or "=?" in value:
            return None
        line = f"{name}: {value}\r\n"
        if len(line) - 2 > _WIDTH:
            return None  # EmailMessage would fold it
        lines.append(line)
    return "".join(lines).encode("ascii")


def _plain_addresses(mailboxes: Sequence[Mailbox]) -> str | None:
    """The header value of these addresses, or None if EmailMessage could write it otherwise."""
    formatted = [m.formatted for m in mailboxes]
    if all(_PLAIN_ADDRESS.fullmatch(f) for f in formatted):
        return ", ".join(formatted)
    return None


def _part(subtype: str, text: str) -> tuple[bytes, bytes]:
    """A text part's Content-Type and -Transfer-Encoding headers, and its body, as
    `set_content(text, subtype=...)` and the generator write them."""
    cte, payload = _encode_text(text)
    head = f'Content-Type: text/{subtype}; charset="utf-8"\r\nContent-Transfer-Encoding: {cte}\r\n'
    return head.encode("ascii"), _NEWLINES.sub("\r\n", payload).encode("ascii", "surrogateescape")


def _encode_text(text: str) -> tuple[str, str]:
    """(Content-Transfer-Encoding, payload) of `text` in UTF-8 under policy.SMTP: the rules of
    email.contentmanager.set_text_content, step for step (7bit when it can, else 8bit as the
    policy allows, else the shorter of quoted-printable and base64 on the first ten lines)."""
    lines = text.encode("utf-8").splitlines()
    width = _WIDTH
    if max((len(line) for line in lines), default=0) <= width:
        if all(line.isascii() for line in lines):
            return "7bit", (b"\n".join(lines) + b"\n").decode("ascii")
        if _POLICY.cte_type == "8bit":
            return "8bit", (b"\n".join(lines) + b"\n").decode("ascii", "surrogateescape")
    linesep = _POLICY.linesep.encode("ascii")
    sniff = linesep.join(lines[:10]) + linesep
    sniff_qp = quoprimime.body_encode(sniff.decode("latin-1"), width)
    if len(sniff_qp) > len(binascii.b2a_base64(sniff)):
        data = linesep.join(lines) + linesep
        step = width // 4 * 3
        return "base64", "".join(binascii.b2a_base64(data[i:i + step]).decode("ascii")
                                 for i in range(0, len(data), step))
    if len(lines) <= 10:
        return "quoted-printable", sniff_qp
    return "quoted-printable", quoprimime.body_encode((b"\n".join(lines) + b"\n").decode("latin-1"), width)


def _boundary(text: bytes) -> bytes:
    """A multipart boundary drawn like email.generator's, not found in the parts."""
    while True:
        boundary = ("=" * 15 + f"{random.randrange(sys.maxsize):0{_BOUNDARY_DIGITS}d}" + "==").encode()
        if boundary not in text:
            return boundary


def _mime(content: Content, settings: Settings, *, message_id: str, date: datetime) -> bytes:
    """The message built by the standard library's `EmailMessage` (any content)."""
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
