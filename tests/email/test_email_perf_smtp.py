"""The SMTP session kept per worker process: pipelined envelopes (RFC 2920) when the server
offers PIPELINING, and reused connections that died or are closing (421). Whatever the path,
nothing is handed over before the server's 354, and a message refused before it is never left
half sent: the connection is dropped rather than RSET once the server waits for data."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from tasks.email.errors import DeliveryUnknown, SmtpPermanentError, SmtpTemporaryError
from tasks.email.sink import Sink
from tasks.email.smtp import Connection
from tests.email.conftest import ScriptedHandler
from tests.email.test_email_smtp import MESSAGE, send, settings


class Relay(ScriptedHandler):
    """aiosmtpd that may offer PIPELINING (it reads commands in order either way), counts
    sessions, and answers MAIL FROM from a script when told to."""

    def __init__(self, pipelining: bool = True) -> None:
        super().__init__()
        self.pipelining = pipelining
        self.sessions = 0
        self.mail_replies: list[str] = []

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        with self.lock:
            self.sessions += 1
        return [*responses[:-1], "250-PIPELINING", responses[-1]] if self.pipelining else responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        with self.lock:
            reply = self.mail_replies.pop(0) if self.mail_replies else None
        if reply:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"


class BareServer:
    """A bare SMTP server on a socket, for what aiosmtpd cannot be made to do.

    `withhold`: answer nothing of the envelope until DATA has arrived (only a pipelining client
    gets through). `drop_at`: hang up on DATA before 354 ("data"), or after reading the whole
    message instead of answering 250 ("end"). `defer`: answer 451 to RCPT TO that address, and
    354 to DATA all the same (as a pipelining server does when another recipient was taken);
    what the client sends after that 354 without ending the message is kept in `unfinished`."""

    def __init__(self, *, withhold: bool = False, drop_at: str | None = None, defer: str | None = None) -> None:
        self.withhold, self.drop_at, self.defer = withhold, drop_at, defer
        self.unfinished: bytes | None = None
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.messages: list[bytes] = []
        self.done = threading.Event()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        conn, _ = self.sock.accept()
        f = conn.makefile("rb")
        conn.sendall(b"220 bare ESMTP\r\n")
        held = 0
        while line := f.readline():
            cmd = line.strip().upper()
            if cmd.startswith(b"EHLO"):
                conn.sendall(b"250-bare\r\n250-SIZE 1000000\r\n250 PIPELINING\r\n")
            elif cmd == b"DATA":
                if self.drop_at == "data":
                    break
                conn.sendall(b"250 ok\r\n" * held + b"354 go ahead\r\n")
                held = 0
                data = b""
                while (chunk := f.readline()) and chunk != b".\r\n":
                    data += chunk
                if chunk != b".\r\n":
                    self.unfinished = data  # the client hung up mid-message: nothing to deliver
                    break
                self.messages.append(data)
                if self.drop_at == "end":
                    break
                conn.sendall(b"250 2.0.0 queued\r\n")
            elif cmd == b"QUIT":
                conn.sendall(b"221 bye\r\n")
                break
            elif self.withhold and cmd.startswith((b"MAIL", b"RCPT")):
                held += 1
            elif self.defer and cmd == f"RCPT TO:<{self.defer}>".upper().encode():
                conn.sendall(b"451 4.7.1 later\r\n")
            else:
                conn.sendall(b"250 ok\r\n")
        conn.close()
        self.sock.close()
        self.done.set()


def test_a_pipelining_server_gets_the_envelope_in_one_write():
    server = BareServer(withhold=True)  # a client waiting for each reply would time out here
    conn = Connection(settings(server.port))
    result, calls = send(conn, to=("ann@example.org", "bob@example.org"))
    conn.close()
    assert result.reply == "250 2.0.0 queued" and calls == [1]
    assert server.done.wait(5) and server.messages == [MESSAGE.replace(b"\n.", b"\n..")]


@pytest.mark.parametrize("pipelining", [True, False])
def test_one_session_carries_many_messages(pipelining):
    relay = Relay(pipelining)
    with Sink(handler=relay) as sink:
        conn = Connection(settings(sink.port))
        for i in range(3):
            send(conn, to=(f"r{i}@example.org", "ops@example.org"))
        conn.close()
    assert relay.sessions == 1 and len(relay.messages) == 3
    assert all(m.data == MESSAGE and m.rcpt_tos[1] == "ops@example.org" for m in relay.messages)


def test_pipelined_refusals_send_nothing_and_keep_the_stream_in_step():
    relay = Relay()
    relay.rcpt_replies["slow@example.org"] = ["451 4.7.1 greylisted"]
    relay.rcpt_replies["gone@example.org"] = ["550 5.1.1 no such user"] * 2
    relay.mail_replies = []
    with Sink(handler=relay) as sink:
        conn = Connection(settings(sink.port))
        calls: list[int] = []
        # one recipient deferred while the other was taken: the server said 354 to the
        # pipelined DATA; the message is not sent and the session is dropped, not RSET
        with pytest.raises(SmtpTemporaryError, match="451"):
            send(conn, to=("ann@example.org", "slow@example.org"), handover=lambda: calls.append(1))
        assert calls == [] and conn.smtp is None
        # every recipient refused: no 354, RSET keeps the session
        with pytest.raises(SmtpPermanentError) as err:
            send(conn, to=("gone@example.org",))
        assert err.value.refused == {"gone@example.org": "550 5.1.1 no such user"}
        relay.mail_replies.append("550 5.7.1 sender refused")
        with pytest.raises(SmtpPermanentError, match="MAIL FROM: the server answered 550"):
            send(conn)
        result, calls = send(conn, to=("gone@example.org", "bob@example.org"))
        conn.close()
    assert result.refused == {"gone@example.org": "550 5.1.1 no such user"} and calls == [1]
    assert [m.rcpt_tos for m in relay.messages] == [["bob@example.org"]]  # the only one sent
    assert relay.sessions == 2


@pytest.mark.parametrize("pipelining", [True, False])
def test_a_reused_session_the_server_is_closing_is_replaced(pipelining):
    relay = Relay(pipelining)
    with Sink(handler=relay) as sink:
        conn = Connection(settings(sink.port, smtp_keepalive=60))
        send(conn)
        relay.mail_replies.append("421 4.4.2 idle too long, closing")
        result, calls = send(conn, to=("bob@example.org",))  # 421 on reuse: a new session sends it
        assert result.code == 250 and calls == [1]
        fresh = Connection(settings(sink.port))
        relay.mail_replies.append("421 4.3.2 too busy")
        with pytest.raises(SmtpTemporaryError, match="421"):  # on a new session 421 is an answer
            send(fresh, handover=lambda: calls.append(2))
        conn.close()
        fresh.close()
    assert calls == [1] and [m.rcpt_tos for m in relay.messages] == [["ann@example.org"], ["bob@example.org"]]
    assert relay.sessions == 3


def test_a_pipelined_session_the_server_dropped_is_replaced():
    class Closer(Relay):
        async def handle_DATA(self, server, session, envelope):
            reply = await super().handle_DATA(server, session, envelope)
            asyncio.get_running_loop().call_later(0.05, server.transport.close)  # idle timeout
            return reply

    relay = Closer()
    with Sink(handler=relay) as sink:
        conn = Connection(settings(sink.port, smtp_keepalive=60))
        send(conn)
        time.sleep(0.3)
        send(conn, to=("bob@example.org",))
        conn.close()
    first, second = relay.messages
    assert (first.rcpt_tos, second.rcpt_tos) == (["ann@example.org"], ["bob@example.org"])
    assert first.peer != second.peer and relay.sessions == 2


def test_after_a_354_it_cannot_use_the_client_hangs_up_without_a_byte():
    server = BareServer(defer="slow@example.org")
    calls: list[int] = []
    with pytest.raises(SmtpTemporaryError, match="451"):
        send(Connection(settings(server.port)), to=("ann@example.org", "slow@example.org"),
             handover=lambda: calls.append(1))
    assert server.done.wait(5)
    assert calls == [] and server.messages == [] and server.unfinished == b""  # no RSET, no data


def test_pipelined_losses_before_and_after_the_handover():
    calls: list[str] = []
    before = BareServer(drop_at="data")
    with pytest.raises(SmtpTemporaryError, match="before the message was handed over"):
        send(Connection(settings(before.port)), handover=lambda: calls.append("before"))
    after = BareServer(drop_at="end")
    with pytest.raises(DeliveryUnknown, match="may have been delivered"):
        send(Connection(settings(after.port)), handover=lambda: calls.append("after"))
    assert calls == ["after"] and before.messages == [] and len(after.messages) == 1
