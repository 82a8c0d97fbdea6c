"""The SMTP conversation against real aiosmtpd servers: TLS and AUTH modes, and how each kind
of failure is classified (temporary before the handover, permanent on 5xx, unknown after)."""

from __future__ import annotations

import asyncio
import socket
import threading
from email import message_from_bytes, policy

import pytest
from pydantic import SecretStr

from config import Settings
from tasks.email.errors import DeliveryUnknown, SmtpPermanentError, SmtpTemporaryError
from tasks.email.sink import Sink
from tasks.email.smtp import Connection, dot_stuff
from tests.conftest import free_port
from tests.email.conftest import ScriptedHandler, tls_contexts

MESSAGE = (b"From: conveyor@example.org\r\nTo: ann@example.org\r\nSubject: Hello\r\n"
           b"Message-ID: <m1@example.org>\r\n\r\nfirst line\r\n.leading dot\r\n..two dots\r\n")


def settings(port: int, **kw) -> Settings:
    return Settings(_env_file=None, smtp_host="127.0.0.1", smtp_port=port, smtp_timeout=5, **kw)


def send(conn: Connection, to=("ann@example.org",), data: bytes = MESSAGE, handover=None):
    calls = []
    result = conn.send("conveyor@example.org", list(to), data, handover or (lambda: calls.append(1)))
    return result, calls


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return tls_contexts(tmp_path_factory.mktemp("tls"))


def test_plain_delivery_dot_stuffing_and_connection_reuse():
    handler = ScriptedHandler()
    with Sink(handler=handler) as sink:
        conn = Connection(settings(sink.port))
        result, calls = send(conn)
        send(conn, to=("bob@example.org",))
        conn.close()
    assert result.code == 250 and "accepted" in result.response and calls == [1]
    first, second = handler.messages
    assert first.data == MESSAGE and first.rcpt_tos == ["ann@example.org"]
    assert message_from_bytes(first.data, policy=policy.default).get_content().splitlines()[1:] == [
        ".leading dot", "..two dots"]
    assert first.peer == second.peer  # one connection, two messages
    assert dot_stuff(b"a\n.b") == b"a\r\n..b\r\n.\r\n"


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_tls_with_auth(tls, mode):
    server_ctx, ca_file = tls
    handler = ScriptedHandler()
    kw = {"starttls": server_ctx} if mode == "starttls" else {"implicit_tls": server_ctx}
    with Sink(handler=handler, users={"conveyor": "pw"}, **kw) as sink:
        s = settings(sink.port, smtp_user="conveyor", smtp_password="pw", smtp_ca_file=ca_file,
                     **({"smtp_starttls": True} if mode == "starttls" else {"smtp_ssl": True}))
        conn = Connection(s)
        send(conn)
        conn.close()
        [received] = handler.messages
        assert received.authenticated and received.data == MESSAGE

        wrong = Connection(s.model_copy(update={"smtp_password": SecretStr("nope")}))
        with pytest.raises(SmtpPermanentError, match="535") as err:
            send(wrong)
        assert "nope" not in str(err.value)  # the password never lands in an error
        untrusted = Connection(s.model_copy(update={"smtp_ca_file": None}))
        with pytest.raises(SmtpPermanentError, match="certificate"):
            send(untrusted)
        # without TLS the server does not offer AUTH: a configuration error, not retried
        if mode == "starttls":
            plain = Connection(s.model_copy(update={"smtp_starttls": False}))
            with pytest.raises(SmtpPermanentError):
                send(plain)
    assert len(handler.messages) == 1


def test_connection_refused_is_temporary():
    with pytest.raises(SmtpTemporaryError, match="cannot connect"):
        send(Connection(settings(free_port())))


def test_replies_are_classified_and_nothing_is_handed_over_before_354():
    handler = ScriptedHandler()
    handler.rcpt_replies["slow@example.org"] = ["451 4.7.1 greylisted, try later"]
    handler.rcpt_replies["gone@example.org"] = ["550 5.1.1 no such user", "550 5.1.1 no such user"]
    handler.data_replies["full@example.org"] = ["452 4.3.1 mailbox full"]
    handler.data_replies["spam@example.org"] = ["554 5.7.1 rejected as spam"]
    with Sink(handler=handler) as sink:
        conn = Connection(settings(sink.port))
        with pytest.raises(SmtpTemporaryError) as err:
            send(conn, to=("slow@example.org",))
        assert err.value.reply == "451 4.7.1 greylisted, try later"
        with pytest.raises(SmtpPermanentError) as err:
            _, calls = send(conn, to=("gone@example.org",))
        assert err.value.code == 550 and "no such user" in err.value.reply
        # some recipients refused: sent to the others, the refusals reported
        result, calls = send(conn, to=("gone@example.org", "ann@example.org"))
        assert result.code == 250 and result.refused == {"gone@example.org": "550 5.1.1 no such user"}
        # refused after the data: the server said so, nothing was accepted
        with pytest.raises(SmtpTemporaryError, match="452"):
            send(conn, to=("full@example.org",))
        with pytest.raises(SmtpPermanentError, match="554"):
            send(conn, to=("spam@example.org",))
        result, _ = send(conn, to=("slow@example.org",))  # the connection is still usable
        assert result.code == 250
        conn.close()
    assert sorted(r for m in handler.messages for r in m.rcpt_tos) == ["ann@example.org", "slow@example.org"]


class DropAfterData:
    """A bare server that reads the whole message and hangs up instead of answering 250."""

    def __init__(self, drop_at: str) -> None:
        self.drop_at = drop_at
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.got_message = threading.Event()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        conn, _ = self.sock.accept()
        f = conn.makefile("rb")
        conn.sendall(b"220 test ESMTP\r\n")
        while line := f.readline():
            cmd = line.strip().upper()
            if cmd.startswith(b"EHLO") or cmd.startswith(b"HELO"):
                conn.sendall(b"250 test\r\n")
            elif cmd == b"DATA":
                if self.drop_at == "data":
                    break  # gone before 354: nothing handed over
                conn.sendall(b"354 go ahead\r\n")
                while (chunk := f.readline()) and chunk != b".\r\n":
                    pass
                self.got_message.set()
                break  # gone after the data: did it go out? the client cannot know
            else:
                conn.sendall(b"250 ok\r\n")
        conn.close()
        self.sock.close()


def test_connection_lost_after_the_handover_is_unknown():
    server = DropAfterData("end")
    calls = []
    with pytest.raises(DeliveryUnknown, match="may have been delivered"):
        send(Connection(settings(server.port)), handover=lambda: calls.append("handover"))
    assert calls == ["handover"] and server.got_message.is_set()


def test_connection_lost_before_the_handover_is_temporary():
    server = DropAfterData("data")
    calls = []
    with pytest.raises(SmtpTemporaryError, match="before the message was handed over"):
        send(Connection(settings(server.port)), handover=lambda: calls.append("handover"))
    assert calls == []


def test_a_failing_handover_aborts_before_any_data():
    handler = ScriptedHandler()
    with Sink(handler=handler) as sink:
        conn = Connection(settings(sink.port))

        def broken() -> None:
            raise RuntimeError("database down")

        with pytest.raises(RuntimeError):
            send(conn, handover=broken)
        send(conn)  # a fresh session works
    assert len(handler.messages) == 1


def test_an_idle_connection_the_server_dropped_is_replaced():
    class Closer(ScriptedHandler):
        async def handle_DATA(self, server, session, envelope):
            reply = await super().handle_DATA(server, session, envelope)
            asyncio.get_running_loop().call_later(0.05, server.transport.close)  # idle timeout
            return reply

    handler = Closer()
    with Sink(handler=handler) as sink:
        conn = Connection(settings(sink.port, smtp_keepalive=60))
        send(conn)
        import time

        time.sleep(0.3)
        send(conn, to=("bob@example.org",))  # MAIL fails on the dead connection: reconnect, send
        conn.close()
    first, second = handler.messages
    assert (first.rcpt_tos, second.rcpt_tos) == (["ann@example.org"], ["bob@example.org"])
    assert first.peer != second.peer  # a new connection
