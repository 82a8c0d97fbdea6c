"""Enqueue-time validation, template rendering and MIME composition (no SMTP server needed).

Bad input is refused by `Client.enqueue` with `PayloadInvalid` before anything is recorded
or published: the job store and the broker stay empty.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from email import message_from_bytes, policy
from pathlib import Path

import pytest
import redis as redis_lib

from jobs.errors import InvalidInput, PayloadInvalid
from tasks.email import compose
from tasks.email.errors import TemplateNotFound, TemplateVariableMissing
from tasks.email.inputs import CampaignInput, SendInput
from tasks.email.render import render_template, template_names
from tests.conftest import settings_env

DIGEST = {"date": "2026-01-01", "stats": {"jobs_run": 12}}
RECON = {"run_id": "r-42", "ledger": "ledger.csv", "statement": "camt.xml",
         "counts": {"matched": 10, "unmatched_ledger": 2}, "totals": {"ledger": "1250.00", "bank": "1248.50"},
         "unexplained_difference": "1.50", "report_path": "results/r-42.csv"}
ANALYSIS = {"title": "Sales <Q1> & more", "summary": ["Revenue up 4%", "Churn flat"],
            "dataset": "sales.parquet", "generated_at": "2026-01-01T07:00:00Z", "chart": "chart.png"}


@pytest.fixture
def env(make_settings, redis_url, sqlite_url):
    """This process's settings (what the validators read) on a temp data dir, Redis and SQLite."""
    from config import get_settings

    settings = make_settings(broker_url=redis_url, result_backend=redis_url, database_url=sqlite_url,
                             attachment_max_bytes=1000, mail_from="Conveyor <conveyor@example.org>")
    saved = dict(os.environ)
    os.environ.update(settings_env(settings))
    get_settings.cache_clear()
    yield settings
    os.environ.clear()
    os.environ.update(saved)
    get_settings.cache_clear()


@pytest.fixture
def client(env):
    from jobs.client import Client
    from worker.factory import create_app

    return Client(create_app(env))


def ok(**payload):
    return {"to": ["ann@example.org"], "subject": "Hi", "text": "hello", **payload}


BAD = {
    "invalid address": (ok(to=["not-an-address"]), "to.0", "not a valid email address"),
    "address with a line break": (ok(cc=["ann@example.org\r\nBcc: eve@example.org"]), "cc.0", "line break"),
    "subject with a line break": (ok(subject="Hi\r\nBcc: eve@example.org"), "subject", "line break"),
    "header with a line break": (ok(headers={"X-Note": "a\nBcc: eve@example.org"}), "headers", "line break"),
    "reserved header": (ok(headers={"Bcc": "eve@example.org"}), "headers", "set by Conveyor"),
    "bad header name": (ok(headers={"X Note": "a"}), "headers", "not a valid header name"),
    "missing template": (ok(text=None, subject=None, template="no_such_template"), "", "no mail template"),
    "missing variable": (ok(text=None, template="daily_digest", context={"date": "x"}), "",
                         "'stats' is undefined"),
    "template and text": (ok(template="daily_digest", context=DIGEST), "", "not both"),
    "no body": (ok(text=None), "", "give a template"),
    "no recipient": (ok(to=[]), "", "at least one recipient"),
    "no subject": (ok(subject=None), "", "give a subject"),
    "naive send_at": (ok(send_at="2030-01-01T07:00:00"), "send_at", "timezone"),
    "unknown field": (ok(password="x"), "password", "Extra inputs"),
    "attachment outside": (ok(attachments=["/etc/hostname"]), "", "outside the data directory"),
    "attachment escaping with ..": (ok(attachments=["../../../etc/hostname"]), "", "attachment"),
    "missing attachment": (ok(attachments=["nope.pdf"]), "", "does not exist"),
}


@pytest.mark.parametrize("payload,field,message", BAD.values(), ids=BAD.keys())
def test_bad_input_is_refused_before_anything_is_written(client, env, payload, field, message):
    with pytest.raises(PayloadInvalid) as err:
        client.enqueue("email.send", payload)
    assert isinstance(err.value, InvalidInput)
    assert message in str(err.value)
    if field:
        assert field in err.value.fields
    assert client.list_jobs() == []  # nothing recorded
    assert redis_lib.Redis.from_url(env.broker_url).llen("email") == 0  # nothing published


def test_attachments_are_confined_and_sized(client, env):
    data, results = Path(env.data_dir), Path(env.results_dir)
    (data / "ok.txt").write_text("fine")
    (results / "chart.png").write_bytes(b"\x89PNG" + b"0" * 100)
    (data / "big.bin").write_bytes(b"0" * 1001)
    outside = data.parent / "secret.txt"
    outside.write_text("secret")
    (data / "link.txt").symlink_to(outside)
    (data / "sub").mkdir()

    # relative to the data dir, relative to the results dir, absolute inside either: fine
    for name in ("ok.txt", "chart.png", str(results / "chart.png")):
        SendInput.model_validate(ok(attachments=[name]))
    refused = {
        "link.txt": "outside the data directory",  # a symlink out is followed, then refused
        "sub/../../secret.txt": "outside the data directory",
        "big.bin": "the limit is 1,000",
        "sub": "not a regular file",
    }
    for name, message in refused.items():
        with pytest.raises(PayloadInvalid, match=message):
            client.enqueue("email.send", ok(attachments=[name]))
    with pytest.raises(PayloadInvalid, match="attachments total 1,040 bytes"):  # 10 x 104: each fits
        client.enqueue("email.send", ok(attachments=["chart.png"] * 10))


def test_campaign_input_is_checked_at_enqueue(client, env):
    data = Path(env.data_dir)
    (data / "list.csv").write_text("email,name,note\nann@example.org,Ann,hi\n")
    (data / "nocolumn.csv").write_text("who\nann@example.org\n")
    (data / "empty.csv").write_text("email,name\n")
    good = {"template": "daily_digest", "context": DIGEST}
    CampaignInput.model_validate({**good, "recipients_file": "list.csv"})
    CampaignInput.model_validate({**good, "recipients": ["ann@example.org",
                                                          {"email": "Bob <bob@example.org>"}]})
    cases = [
        ({**good, "recipients_file": "nocolumn.csv"}, "needs an 'email' column"),
        ({**good, "recipients_file": "empty.csv"}, "has no recipients"),
        ({**good, "recipients_file": "/etc/hostname"}, "outside the data directory"),
        ({**good, "recipients": ["nope"]}, "not a valid email address"),
        ({**good, "recipients": ["a@example.org"], "recipients_file": "list.csv"}, "one of them"),
        ({"template": "daily_digest", "context": {"date": "x"}, "recipients": ["a@example.org"]},
         "'stats' is undefined"),
        ({**good, "recipients": ["a@example.org"], "subject": "Hi {{ nobody }}"}, "'nobody' is undefined"),
        ({**good, "recipients": ["a@example.org"], "rate": 0}, "greater than 0"),
    ]
    for payload, message in cases:
        with pytest.raises(PayloadInvalid, match=message):
            client.enqueue("email.campaign", payload)
    assert client.list_jobs() == []


# --- templates --------------------------------------------------------------------------------
@pytest.mark.parametrize("name,context", [("daily_digest", DIGEST), ("reconciliation_report", RECON),
                                          ("analysis_report", ANALYSIS)])
def test_shipped_templates_render_with_their_documented_context(name, context):
    r = render_template(name, context)
    assert r.subject and "\n" not in r.subject
    assert r.html and r.text
    expected = (context.get("run_id"), context.get("date"), (context.get("summary") or [None])[0])
    for value in expected:
        if value:
            assert value in r.text and value in r.html


OPTIONAL = {"reconciliation_report": ("unexplained_difference", "report_path"),
            "analysis_report": ("dataset", "generated_at", "chart"), "daily_digest": ()}


@pytest.mark.parametrize("name,context", [("daily_digest", DIGEST), ("reconciliation_report", RECON),
                                          ("analysis_report", ANALYSIS)])
def test_shipped_templates_render_without_optional_keys_and_refuse_without_required(name, context):
    minimal = {k: v for k, v in context.items() if k not in OPTIONAL[name]}
    r = render_template(name, minimal)
    assert r.text and r.subject
    for key in minimal:
        with pytest.raises(TemplateVariableMissing, match=f"'{key}' is undefined"):
            render_template(name, {k: v for k, v in minimal.items() if k != key})


def test_html_is_autoescaped_and_text_is_not():
    r = render_template("analysis_report", ANALYSIS)
    assert "Sales &lt;Q1&gt; &amp; more" in r.html and "<Q1>" not in r.html
    assert "Sales <Q1> & more" in r.text and r.subject == "Sales <Q1> & more (sales.parquet)"


def test_operator_templates_override_and_text_is_derived_from_html(tmp_path):
    (tmp_path / "welcome.html").write_text("<h1>Hello {{ name }}</h1>"
                                           "<p>See <a href='https://x.org/a'>the docs</a></p>"
                                           "<ul><li>one</li><li>two</li></ul>")
    (tmp_path / "welcome.subject.txt").write_text("Welcome,\n {{ name }}!\n")
    r = render_template("welcome", {"name": "Ann & Bob"}, tmp_path)
    assert r.subject == "Welcome, Ann & Bob!"
    assert "Hello Ann & Bob" in r.text and "https://x.org/a" in r.text and "* one" in r.text
    assert "<h1>" not in r.text
    assert "welcome" in template_names(tmp_path) and "daily_digest" in template_names(tmp_path)
    with pytest.raises(TemplateNotFound):
        render_template("../welcome", {}, tmp_path)


# --- the message itself -------------------------------------------------------------------------
def test_message_structure_headers_and_bcc(env):
    (Path(env.results_dir) / "chart.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    data = SendInput.model_validate({
        "to": ["Ann Example <ann@example.org>", "bob@example.org"], "cc": ['"Doe, Jane" <jane@example.org>'],
        "bcc": ["audit@example.org"], "reply_to": "Support <support@example.org>",
        "template": "analysis_report", "context": ANALYSIS, "attachments": ["chart.png"],
        "headers": {"X-Report-Id": "r-42"}, "subject": "Report {{ dataset }}: Zürich"})
    mid = compose.new_message_id(env)
    raw = compose.build(data.content(), env, message_id=mid, date=datetime(2026, 1, 1, tzinfo=UTC))
    assert raw.isascii() and b"\r\n" in raw and b"\n\n" not in raw.replace(b"\r\n", b"")
    msg = message_from_bytes(raw, policy=policy.default)
    assert msg.get_content_type() == "multipart/mixed"
    alternative, attachment = msg.get_payload()
    assert alternative.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in alternative.get_payload()] == ["text/plain", "text/html"]
    assert attachment.get_filename() == "chart.png" and attachment.get_content_type() == "image/png"
    assert attachment.get_content() == b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    assert msg["Subject"] == "Report sales.parquet: Zürich"
    assert msg["From"] == "Conveyor <conveyor@example.org>"
    assert msg["To"] == "Ann Example <ann@example.org>, bob@example.org"
    assert msg["Cc"] == '"Doe, Jane" <jane@example.org>'
    assert msg["Reply-To"] == "Support <support@example.org>"
    assert msg["Bcc"] is None and b"audit@example.org" not in raw  # Bcc is envelope only
    assert msg["Message-ID"] == mid and mid.endswith("@example.org>")
    assert msg["X-Report-Id"] == "r-42" and msg["Date"] == "Thu, 01 Jan 2026 00:00:00 +0000"
    assert data.content().envelope() == ["ann@example.org", "bob@example.org", "jane@example.org",
                                         "audit@example.org"]


def test_text_only_and_html_only_bodies(env):
    text_only = SendInput.model_validate(ok(text="line one\n.dot line\n"))
    msg = message_from_bytes(compose.build(text_only.content(), env, message_id="<a@b.org>",
                                           date=datetime.now(UTC)), policy=policy.default)
    assert msg.get_content_type() == "text/plain" and ".dot line" in msg.get_content()
    html_only = SendInput.model_validate(ok(text=None, html="<p>Hello <b>there</b></p>"))
    msg = message_from_bytes(compose.build(html_only.content(), env, message_id="<a@b.org>",
                                           date=datetime.now(UTC)), policy=policy.default)
    plain, html = msg.get_payload()
    assert msg.get_content_type() == "multipart/alternative"
    assert plain.get_content().strip() == "Hello there" and "<b>there</b>" in html.get_content()
