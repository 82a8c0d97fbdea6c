"""The direct message writer (`compose._direct`) against the standard library's `EmailMessage`
(`compose._mime`): whenever the direct writer takes a message, its bytes are exactly the ones
`EmailMessage` writes (multipart boundaries are random in both: compared as one token).
Generated messages (hypothesis) mix what it must take with what it must leave to the standard
library: non-ASCII headers, long lines, quoted names, encoded-word lookalikes, and bodies of
every transfer encoding (7bit, 8bit, quoted-printable, base64)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from email import message_from_bytes, policy

from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from config import Settings
from tasks.email import compose

SENDERS = ["Conveyor <conveyor@localhost>", "reports@acme.example", "Acme Reports <reports@acme.example>",
           '"Acme, Inc." <reports@acme.example>', "Zoë Reports <z@acme.example>"]
NAMES = ["", "Ann", "Ann Example", "Ann E. Example", "O'Brien", "Zoë", 'Ann "Q" Example', "=?utf-8?q?x?=",
         "a,b", "Dr Who?", "x" * 70]
DOMAINS = ["example.org", "mail.example.com", "xn--bcher-kva.example", "EXAMPLE.ORG"]
LINES = ["Thanks for your order.", "", ".", "..leading dots", "From the team", "x" * 78, "y" * 79,
         "tabs\there", "trailing space ", "Grüße", "naïve café", "=?utf-8?q?hi?=", "a=3Db", "\x0c"]
SEPARATORS = ["\n", "\r\n", "\r"]

local = st.from_regex(r"[a-z][a-z0-9]{0,8}(\.[a-z0-9+_-]{1,5})?", fullmatch=True)


@st.composite
def address(draw: st.DrawFn) -> str:
    addr = f"{draw(local)}@{draw(st.sampled_from(DOMAINS))}"
    name = draw(st.sampled_from(NAMES) | st.from_regex(r"[A-Za-z][A-Za-z ]{0,20}[a-z]", fullmatch=True))
    if not name:
        return addr
    quoted = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{quoted}" <{addr}>'


header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=90) | st.sampled_from(
    ["Your receipt #7", "Grüße aus Köln", "=?utf-8?q?encoded?=", "two  spaces", " leading", "trailing ",
     "Daily digest for 2026-01-01", "x" * 69, "x" * 70])
body = st.lists(st.sampled_from(LINES) | st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=90),
                max_size=8).flatmap(lambda lines: st.sampled_from(SEPARATORS).map(lambda sep: sep.join(lines)))
custom = st.dictionaries(st.sampled_from(["X-Report-Id", "X-Tag", "x-tag", "Auto-Submitted", "List-Id", "X-Bad Name",
                                         "Content-Language"]), header_text, max_size=3)
HTML = ['<p style="margin:0;padding:24px;font-family:Helvetica,Arial,sans-serif">Hello</p>', "<p>short</p>",
        "<td>Grüße</td>", "<b>" + "x" * 90 + "</b>", "=3D==", "", "<p>€ 1.204,00</p>", "\t<li>tab</li>"]
html_body = st.lists(st.sampled_from(HTML) | st.text(max_size=40), max_size=14).map("\n".join)
BOUNDARY = re.compile(rb"={15}\d{19}==(?:\.\d+)?")
zone = st.sampled_from([UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5, minutes=-30))])


def both(content: compose.Content, mail_from: str, message_id: str, date: datetime) -> tuple[bytes | None, bytes]:
    """What the direct writer makes of the message (None: not for it) and what EmailMessage makes."""
    s = Settings(_env_file=None, mail_from=mail_from)
    fast = compose._direct(content, s, message_id, date)
    slow = compose._mime(content, s, message_id=message_id, date=date)
    return (None if fast is None else BOUNDARY.sub(b"BOUNDARY", fast)), BOUNDARY.sub(b"BOUNDARY", slow)


@hsettings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(to=st.lists(address(), min_size=1, max_size=3), cc=st.lists(address(), max_size=2),
       reply_to=st.lists(address(), max_size=1), subject=header_text, text=body | st.none(), headers=custom,
       html=st.none() | html_body,
       mail_from=st.sampled_from(SENDERS), stamp=st.integers(0, 2_000_000_000), tz=zone,
       message_id=st.sampled_from(["<0123abcd@acme.example>", "<a.b-c@localhost>", "<x@[127.0.0.1]>"]))
def test_the_direct_writer_writes_what_emailmessage_writes(to, cc, reply_to, subject, text, headers, html,
                                                            mail_from, stamp, tz, message_id):
    content = compose.Content(to=to, cc=cc, bcc=[], subject=subject, text=text, html=html, reply_to=reply_to,
                              headers=headers)
    date = datetime.fromtimestamp(stamp, tz)
    fast, slow = both(content, mail_from, message_id, date)
    if fast is not None:
        assert fast == slow


any_body = st.lists(st.text(max_size=120) | st.sampled_from(LINES + HTML), max_size=25).flatmap(
    lambda lines: st.sampled_from(SEPARATORS).map(lambda sep: sep.join(lines)))


@hsettings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=any_body, html=st.none() | any_body)
def test_bodies_of_any_text_are_encoded_as_emailmessage_encodes_them(text, html):
    content = compose.Content(to=["ann@example.org"], cc=[], bcc=[], subject="Hello", text=text, html=html)
    fast, slow = both(content, "reports@acme.example", "<1@acme.example>", datetime(2026, 1, 1, tzinfo=UTC))
    assert fast is not None and fast == slow


def test_common_job_mail_takes_the_direct_writer():
    content = compose.Content(to=["Ann Example <ann@example.org>", "bob@example.org"], cc=["ops@example.org"],
                              bcc=["audit@example.org"], subject="Your receipt #42",
                              text="Thanks for order 42.\n" * 20, reply_to=["help@example.org"],
                              headers={"X-Report-Id": "r-42"})
    fast, slow = both(content, "Acme Reports <reports@acme.example>", "<0123abcd@acme.example>",
                      datetime(2026, 1, 1, 7, 30, tzinfo=UTC))
    assert fast is not None and fast == slow
    msg = message_from_bytes(fast, policy=policy.default)
    assert msg["To"] == "Ann Example <ann@example.org>, bob@example.org" and "Bcc" not in msg
    assert msg.get_content().replace("\r\n", "\n") == "Thanks for order 42.\n" * 20


def test_templated_mail_takes_the_direct_writer_in_every_transfer_encoding():
    from tasks.email.render import render_template

    r = render_template("daily_digest", {"date": "2026-01-01", "stats": {"jobs_run": 1204, "failed": 3}})
    encodings = set()
    for text, html in [(r.text, r.html), ("Grüße\n", "<p>Grüße</p>"), ("x" * 100, "é" * 100 + "\n" * 20)]:
        content = compose.Content(to=["ann@example.org"], cc=[], bcc=[], subject="Digest", text=text, html=html)
        fast, slow = both(content, "reports@acme.example", "<1@acme.example>", datetime(2026, 1, 1, tzinfo=UTC))
        assert fast is not None and fast == slow
        msg = message_from_bytes(fast, policy=policy.default)
        plain, rich = msg.iter_parts()
        assert plain.get_content().replace("\r\n", "\n") == text.rstrip("\n") + "\n"
        assert rich.get_content().replace("\r\n", "\n").rstrip("\n") == html.rstrip("\n")
        encodings |= {plain["Content-Transfer-Encoding"], rich["Content-Transfer-Encoding"]}
    assert encodings == {"7bit", "8bit", "quoted-printable", "base64"}


def test_what_the_direct_writer_leaves_to_the_standard_library(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("attached")
    s = Settings(_env_file=None, mail_from="reports@acme.example", data_dir=tmp_path / "data",
                 results_dir=tmp_path / "results")
    base = {"to": ["ann@example.org"], "cc": [], "bcc": [], "subject": "Hello", "text": "hi\n"}
    cases = [
        {"subject": "Grüße"},  # RFC 2047
        {"subject": "x" * 80},  # folded
        {"to": ['"Ann E. Example" <ann@example.org>']},  # a quoted display name
        {"headers": {"X-Tag": "=?utf-8?q?x?="}},  # an encoded word lookalike
        {"headers": {"Content-Language": "en"}},  # set_content drops Content-* headers
        {"attachments": ["a.txt"]},
    ]
    for change in cases:
        content = compose.Content(**{**base, **change})
        date = datetime(2026, 1, 1, tzinfo=UTC)
        assert compose._direct(content, s, "<1@acme.example>", date) is None, change
        built = compose.build(content, s, message_id="<1@acme.example>", date=date)
        assert BOUNDARY.sub(b"B", built) == BOUNDARY.sub(b"B", compose._mime(content, s, message_id="<1@acme.example>",
                                                                             date=date))
