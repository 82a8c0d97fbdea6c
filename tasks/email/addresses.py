"""Email addresses and headers: parsed, validated and formatted once, at enqueue time.

An address is `jane@example.org` or `Jane Doe <jane@example.org>` (the display name may be
quoted). The address itself is checked by `email_validator` (syntax only, no DNS lookups:
validation must not depend on the network), the domain is stored IDNA-encoded, and local parts
that need SMTPUTF8 are refused, since relays that do not announce it would bounce them later.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.headerregistry import Address
from functools import lru_cache

import email_validator

from tasks.email.errors import InvalidAddress, InvalidHeader

_NAMED = re.compile(r'^\s*(?:"((?:[^"\\]|\\.)*)"|([^<>"]*?))\s*<([^<>]+)>\s*$')
_FIELD_NAME = re.compile(r"^[!-9;-~]+$")  # RFC 5322: printable ASCII except ':'
_LOCAL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*$")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

#: Headers the message builds itself; a payload sets them through their own fields.
RESERVED_HEADERS = frozenset({
    "from", "sender", "to", "cc", "bcc", "reply-to", "subject", "date", "message-id",
    "mime-version", "content-type", "content-transfer-encoding", "content-disposition",
    "return-path", "received", "dkim-signature",
})
MAX_HEADER_VALUE = 998


@dataclass(frozen=True)
class Mailbox:
    """One parsed address: `formatted` goes in headers, `addr_spec` in the SMTP envelope."""

    name: str
    addr_spec: str

    @property
    def domain(self) -> str:
        return self.addr_spec.rsplit("@", 1)[1]

    @property
    def formatted(self) -> str:
        if not self.name:
            return self.addr_spec
        local, domain = self.addr_spec.rsplit("@", 1)
        return str(Address(display_name=self.name, username=local, domain=domain))


@lru_cache(maxsize=8192)
def parse_address(value: str, *, deliverable: bool = True) -> Mailbox:
    """Parse and validate one address; raise `InvalidAddress` with the reason (cached: a
    message's addresses are parsed by the validator, the limiter and the composer).

    Recipients must be globally deliverable; the configured sender may use a local domain
    (`conveyor@localhost`), so it is parsed with `deliverable=False`."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidAddress("an email address must be a non-empty string")
    if "\r" in value or "\n" in value:
        raise InvalidAddress(f"{value!r}: an address must not contain a line break")
    name = ""
    addr = value.strip()
    m = _NAMED.match(value)
    if m:
        quoted, bare, addr = m.groups()
        name = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare.strip()
        addr = addr.strip()
    elif "<" in value or ">" in value:
        raise InvalidAddress(f"{value!r} is not an address (expected 'Name <user@example.org>')")
    if _CONTROL.search(name):
        raise InvalidAddress(f"{value!r}: the display name contains a control character")
    if len(name) > 200:
        raise InvalidAddress(f"{value!r}: the display name is longer than 200 characters")
    try:
        info = email_validator.validate_email(addr, check_deliverability=False,
                                              globally_deliverable=deliverable)
    except email_validator.EmailNotValidError as exc:
        if not deliverable and _LOCAL.match(addr):  # conveyor@localhost, ops@mail.internal
            return Mailbox(name, addr)
        raise InvalidAddress(f"{addr!r} is not a valid email address: {exc}") from None
    if info.smtputf8:
        raise InvalidAddress(f"{addr!r}: non-ASCII local parts are not supported (they need SMTPUTF8)")
    return Mailbox(name, f"{info.local_part}@{info.ascii_domain}")


def check_header(name: str, value: str) -> None:
    """Refuse a custom header that could break the message: CR/LF, bad names, reserved names."""
    if not _FIELD_NAME.match(name or ""):
        raise InvalidHeader(f"{name!r} is not a valid header name (printable ASCII, no spaces or ':')")
    if name.lower() in RESERVED_HEADERS:
        raise InvalidHeader(f"the header {name!r} is set by Conveyor; use the payload's own field")
    check_header_value(name, value)


def check_header_value(name: str, value: str) -> None:
    if "\r" in value or "\n" in value:
        raise InvalidHeader(f"the {name} header must not contain a line break")
    if _CONTROL.search(value):
        raise InvalidHeader(f"the {name} header contains a control character")
    if len(value) > MAX_HEADER_VALUE:
        raise InvalidHeader(f"the {name} header is longer than {MAX_HEADER_VALUE} characters")
