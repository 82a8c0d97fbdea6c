"""The SMTP conversation, split at the one moment that matters: the handover of the data.

Before the server answers `354` to DATA nothing was handed over: a refused connection, a
timeout or a 4xx reply is `SmtpTemporaryError` (retried), a 5xx reply `SmtpPermanentError`.
After it, the message may be out: a lost connection is `DeliveryUnknown`, never retried
blindly. `on_handover` runs between the two (the outbox records the moment), and a failure
there aborts before a byte of the message is sent.

Each process keeps one connection open between messages (`CONVEYOR_SMTP_KEEPALIVE` seconds),
since connecting, STARTTLS and AUTH cost more than a message. A completed transaction leaves
the session ready for the next MAIL FROM (RFC 5321 4.1.1.4), so no RSET is spent between
messages; RSET follows a refused transaction. A reused session is not probed (a NOOP would
cost a round trip per message): if it turns out dead or closing (421) at the first reply,
nothing was sent, and the message goes on a new session. With a server that offers
PIPELINING, the envelope (MAIL, RCPT..., DATA) goes in one write. The password comes from
the settings (a `SecretStr`) and is never logged, stored or put in an error.
"""

from __future__ import annotations

import logging
import re
import smtplib
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from config import Settings
from tasks.email.errors import DeliveryUnknown, SmtpPermanentError, SmtpTemporaryError

log = logging.getLogger("conveyor.email.smtp")

CRLF = b"\r\n"


@dataclass(frozen=True)
class Delivered:
    code: int
    response: str
    refused: dict[str, str] = field(default_factory=dict)

    @property
    def reply(self) -> str:
        return f"{self.code} {self.response}".strip()


def _text(resp: bytes | str) -> str:
    text = resp.decode("utf-8", "replace") if isinstance(resp, bytes) else str(resp)
    return " ".join(text.split())[:2000]


def _refuse(stage: str, code: int, resp: bytes | str) -> None:
    """Raise the error a non-success reply at `stage` calls for."""
    text = _text(resp)
    if 400 <= code < 500:
        raise SmtpTemporaryError(f"{stage}: the server answered {code} {text}", code, text)
    raise SmtpPermanentError(f"{stage}: the server answered {code} {text}", code, text)


def dot_stuff(data: bytes) -> bytes:
    """The DATA payload: CRLF line ends, leading dots doubled, ended by CRLF.CRLF (RFC 5321)."""
    data = re.sub(rb"(?:\r\n|\n|\r(?!\n))", CRLF, data)
    data = re.sub(rb"(?m)^\.", b"..", data)
    if not data.endswith(CRLF):
        data += CRLF
    return data + b"." + CRLF


class Connection:
    """One SMTP session: connect, optionally TLS, optionally AUTH; then messages one by one."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.smtp: smtplib.SMTP | None = None
        self.last_used = 0.0

    def _tls_context(self) -> ssl.SSLContext:
        s = self.settings
        ctx = ssl.create_default_context(cafile=str(s.smtp_ca_file) if s.smtp_ca_file else None)
        if not s.smtp_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def open(self) -> smtplib.SMTP:
        s = self.settings
        where = f"{s.smtp_host}:{s.smtp_port}"
        try:
            if s.smtp_ssl:
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout,
                                                      context=self._tls_context())
            else:
                smtp = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout)
        except smtplib.SMTPConnectError as exc:
            _refuse(f"connecting to {where}", exc.smtp_code, exc.smtp_error)
            raise  # unreachable: _refuse always raises
        except ssl.SSLCertVerificationError as exc:
            raise SmtpPermanentError(f"TLS with {where}: {exc.verify_message or exc}") from None
        except (OSError, smtplib.SMTPException) as exc:
            raise SmtpTemporaryError(f"cannot connect to {where}: {exc}") from None
        try:
            code, resp = smtp.ehlo()
            if code != 250:
                code, resp = smtp.helo()
                if code != 250:
                    _refuse("HELO", code, resp)
            if s.smtp_starttls and not s.smtp_ssl:
                if not smtp.has_extn("starttls"):
                    raise SmtpPermanentError(f"{where} offers no STARTTLS (CONVEYOR_SMTP_STARTTLS is on)")
                code, resp = smtp.starttls(context=self._tls_context())
                if code != 220:
                    _refuse("STARTTLS", code, resp)
                smtp.ehlo()
            if s.smtp_user:
                password = s.smtp_password.get_secret_value() if s.smtp_password else ""
                try:
                    smtp.login(s.smtp_user, password)
                except smtplib.SMTPAuthenticationError as exc:
                    _refuse(f"AUTH as {s.smtp_user}", exc.smtp_code, exc.smtp_error)
                except smtplib.SMTPNotSupportedError:
                    raise SmtpPermanentError(f"{where} offers no AUTH (CONVEYOR_SMTP_USER is set)") from None
                except smtplib.SMTPException as exc:  # no mechanism both sides support
                    raise SmtpPermanentError(f"AUTH with {where}: {exc}") from None
        except ssl.SSLCertVerificationError as exc:
            _close(smtp)
            raise SmtpPermanentError(f"TLS with {where}: {exc.verify_message or exc}") from None
        except (SmtpTemporaryError, SmtpPermanentError):
            _close(smtp)
            raise
        except (OSError, smtplib.SMTPException) as exc:
            _close(smtp)
            raise SmtpTemporaryError(f"setting up the session with {where}: {exc}") from None
        self.smtp = smtp
        return smtp

    def close(self) -> None:
        if self.smtp is not None:
            _close(self.smtp, quit=True)
            self.smtp = None

    def send(self, sender: str, recipients: Sequence[str], data: bytes,
             on_handover: Callable[[], None]) -> Delivered:
        """Send one message; raise by the rules in the module docstring."""
        keepalive = self.settings.smtp_keepalive
        reused = self.smtp is not None and time.monotonic() - self.last_used <= keepalive
        if self.smtp is not None and not reused:
            self.close()
        try:
            if reused and self.smtp is not None:
                try:
                    return self._transaction(self.smtp, sender, recipients, data, on_handover, reused=True)
                except _StaleConnection:
                    self.close()  # the server dropped the idle connection: nothing was sent
            return self._transaction(self.open(), sender, recipients, data, on_handover, reused=False)
        finally:
            self.last_used = time.monotonic()
            if keepalive <= 0:
                self.close()

    def _envelope(self, smtp: smtplib.SMTP, sender: str, recipients: Sequence[str], size: int,
                  *, reused: bool) -> list[tuple[int, bytes]]:
        """MAIL FROM, each RCPT TO, DATA: their replies, in order, up to the first that ends the
        transaction. A server that offers PIPELINING (RFC 2920) gets the commands in one write and
        answers them together: one round trip instead of 2 + recipients. The message itself is
        never pipelined: it goes only after the server's 354 is read.

        On a reused connection, a first reply that never comes (the server closed the idle
        connection) or says 421 (it is closing it) raises `_StaleConnection`: nothing was sent."""
        options = f" SIZE={size}" if smtp.has_extn("size") else ""
        commands = [f"MAIL FROM:{smtplib.quoteaddr(sender)}{options}",
                    *(f"RCPT TO:{smtplib.quoteaddr(r)}" for r in recipients), "DATA"]
        if any("\r" in c or "\n" in c for c in commands):
            raise SmtpPermanentError("an address contains a line break")
        pipelined = smtp.has_extn("pipelining")
        replies: list[tuple[int, bytes]] = []
        try:
            if pipelined:
                smtp.send("".join(f"{c}\r\n" for c in commands))
            else:
                smtp.putcmd(commands[0])
            replies.append(smtp.getreply())
        except (OSError, smtplib.SMTPServerDisconnected):
            if reused:
                raise _StaleConnection() from None
            raise
        if reused and replies[0][0] == 421:
            if pipelined:
                _close(smtp)  # the rest of the replies may never come: do not wait for them
            raise _StaleConnection()
        for command in commands[1:]:
            if not pipelined:
                code = replies[-1][0]
                if len(replies) == 1 and code != 250 or 400 <= code < 500:
                    break  # MAIL FROM refused, or a recipient refused for now: stop here
                if command == "DATA" and all(c not in (250, 251) for c, _ in replies[1:]):
                    break  # every recipient refused: no DATA
                smtp.putcmd(command)
            replies.append(smtp.getreply())
        return replies

    def _transaction(self, smtp: smtplib.SMTP, sender: str, recipients: Sequence[str], data: bytes,
                     on_handover: Callable[[], None], *, reused: bool) -> Delivered:
        handed_over = False
        in_data = False  # the server said 354: only the message or a closed connection may follow
        try:
            replies = self._envelope(smtp, sender, recipients, len(data), reused=reused)
            in_data = len(replies) == len(recipients) + 2 and replies[-1][0] == 354
            code, resp = replies[0]
            if code != 250:
                _refuse("MAIL FROM", code, resp)
            refused: dict[str, str] = {}
            for rcpt, (code, resp) in zip(recipients, replies[1:], strict=False):  # may stop early
                if 400 <= code < 500:
                    _refuse(f"RCPT TO {rcpt}", code, resp)  # retry the whole message later
                if code not in (250, 251):
                    refused[rcpt] = f"{code} {_text(resp)}"
            if len(refused) == len(recipients):
                detail = "; ".join(f"{r}: {why}" for r, why in refused.items())
                first, _, text = next(iter(refused.values())).partition(" ")
                error = SmtpPermanentError(f"every recipient was refused: {detail}", int(first), text)
                error.refused = refused
                raise error
            code, resp = replies[-1]
            if code != 354:
                _refuse("DATA", code, resp)
            on_handover()
            handed_over = True
            smtp.send(dot_stuff(data))
            code, resp = smtp.getreply()
        except (SmtpTemporaryError, SmtpPermanentError):
            if in_data and not handed_over:  # RSET would be read as the message: hang up instead;
                self.smtp = None  # a server drops a message whose end it never received
                _close(smtp)
            else:
                self._reset(smtp)
            raise
        except _StaleConnection:
            raise
        except (OSError, smtplib.SMTPException) as exc:
            self.smtp = None
            _close(smtp)
            if handed_over:
                raise DeliveryUnknown(f"the connection was lost after the message was handed over: {exc}; "
                                      "it may have been delivered") from None
            raise SmtpTemporaryError(
                f"the connection failed before the message was handed over: {exc}") from None
        except BaseException:
            self.smtp = None  # on_handover failed (the database?): drop the half-done session
            _close(smtp)
            raise
        if code == 250:
            self.smtp = smtp
            return Delivered(code, _text(resp), refused)
        self._reset(smtp)
        _refuse("end of DATA", code, resp)  # the server said so: nothing was accepted
        raise AssertionError("unreachable")

    def _reset(self, smtp: smtplib.SMTP) -> None:
        """After a refusal, RSET to use the session again; drop it if that fails."""
        try:
            code, _ = smtp.rset()
            self.smtp = smtp if code == 250 else None
        except (OSError, smtplib.SMTPException):
            self.smtp = None
        if self.smtp is None:
            _close(smtp)


class _StaleConnection(Exception):
    pass


def _close(smtp: smtplib.SMTP, quit: bool = False) -> None:
    try:
        if quit:
            smtp.quit()
        else:
            smtp.close()
    except (TimeoutError, OSError, smtplib.SMTPException):
        smtp.close()


_local = threading.local()


def connection(settings: Settings) -> Connection:
    """This thread's connection for `settings` (a new one when the settings change)."""
    conn: Connection | None = getattr(_local, "conn", None)
    if conn is None or conn.settings is not settings:
        if conn is not None:
            conn.close()
        conn = _local.conn = Connection(settings)
        _close_at_shutdown()
    return conn


def _close_at_shutdown() -> None:
    """Say QUIT when a pool process ends (it leaves through os._exit: atexit would not run)."""
    from celery import signals

    def close(**_: object) -> None:
        conn = getattr(_local, "conn", None)
        if conn is not None:
            conn.close()

    signals.worker_process_shutdown.connect(close, weak=False, dispatch_uid="conveyor.email.smtp")
