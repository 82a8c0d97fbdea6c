"""A local SMTP server that keeps what it receives: for `make demo`, development and tests.

`Sink` runs aiosmtpd in a thread. It can require AUTH (any of `users`), offer STARTTLS or
speak implicit TLS with a given certificate; it records every message it accepts. Nothing
here is used to send real mail. `conveyor email sink` runs one in the foreground.
"""

from __future__ import annotations

import ssl
import threading
import warnings
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    peer: str = ""
    authenticated: bool = False

    @property
    def message(self) -> EmailMessage:
        msg = message_from_bytes(self.data, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        return msg

    @property
    def subject(self) -> str:
        return str(self.message["Subject"] or "")

    @property
    def message_id(self) -> str:
        return str(self.message["Message-ID"] or "")


@dataclass
class Handler:
    """aiosmtpd handler: accepts everything and records it. Subclass to refuse or delay."""

    messages: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    on_message: Any = None

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.record(session, envelope)
        return "250 2.0.0 Message accepted for delivery"

    def record(self, session: Session, envelope: Envelope) -> Received:
        data = envelope.original_content or envelope.content or b""
        received = Received(str(envelope.mail_from), list(envelope.rcpt_tos),
                            data if isinstance(data, bytes) else data.encode(),
                            str(session.peer), bool(session.authenticated))
        with self.lock:
            self.messages.append(received)
        if self.on_message is not None:
            self.on_message(received)
        return received


class _Authenticator:
    def __init__(self, users: dict[str, str]) -> None:
        self.users = users

    def __call__(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                 auth_data: Any) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            user, password = auth_data.login.decode(), auth_data.password.decode()
            if self.users.get(user) == password:
                return AuthResult(success=True)
        return AuthResult(success=False, handled=False)


class _Controller(Controller):
    def factory(self) -> SMTP:
        # With implicit TLS, AUTH is safe without STARTTLS; aiosmtpd warns on each connection.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            smtp: SMTP = super().factory()  # type: ignore[no-untyped-call]
            return smtp


class Sink:
    """An SMTP server on `host:port` (0: a free port) in a background thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, handler: Handler | None = None,
                 users: dict[str, str] | None = None, starttls: ssl.SSLContext | None = None,
                 implicit_tls: ssl.SSLContext | None = None, data_size_limit: int = 50_000_000) -> None:
        self.handler = handler or Handler()
        kwargs: dict[str, Any] = {"data_size_limit": data_size_limit, "enable_SMTPUTF8": False}
        if users is not None:
            kwargs.update(authenticator=_Authenticator(users), auth_required=True,
                          auth_require_tls=starttls is not None)  # implicit TLS is TLS from the start
        if starttls is not None:
            kwargs.update(tls_context=starttls, require_starttls=True)
        self.controller = _Controller(self.handler, hostname=host, port=port or _free_port(host),
                                      ssl_context=implicit_tls, server_hostname="localhost", **kwargs)

    @property
    def host(self) -> str:
        return str(self.controller.hostname)

    @property
    def port(self) -> int:
        return int(self.controller.port)

    @property
    def messages(self) -> list[Received]:
        with self.handler.lock:
            return list(self.handler.messages)

    def start(self) -> Sink:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def __enter__(self) -> Sink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
