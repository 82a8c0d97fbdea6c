"""`conveyor email ...`: send mail, run campaigns, look at the outbox, settle doubtful messages.

The top-level `cli` module is imported inside the commands, not here: `python -m cli` runs it as
`__main__`, and a module-level `import cli` would load it a second time while it adds these.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from config import Settings
    from jobs.client import Client
    from tasks.email.models import OutboxMessage

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(fn: F) -> F:
    """`cli.handle_errors`, looked up when the command runs."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from cli import handle_errors as handle

        return handle(fn)(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _client() -> Client:
    from jobs.client import default_client

    return default_client()


def _settings() -> Settings:
    from config import get_settings

    return get_settings()


def _pairs(pairs: tuple[str, ...]) -> dict[str, Any]:
    from cli import parse_pairs

    return parse_pairs(pairs)

STATUSES = ("scheduled", "queued", "sending", "sent", "failed", "unknown")
ROW_FIELDS = ("id", "key", "message_id", "status", "sender", "recipients", "subject", "template",
              "campaign", "campaign_run", "size", "send_at", "attempts", "job_id", "claimed_at", "data_at",
              "last_response", "refused", "created_at", "updated_at", "sent_at")
OUTBOX_COLOURS = {"sent": "green", "failed": "red", "unknown": "magenta", "sending": "cyan",
                  "queued": "blue", "scheduled": "yellow"}


def _local_path(value: str) -> str:
    """A path the user typed: absolute if it exists from here, else as given (the worker looks
    for it under the data and results directories)."""
    p = Path(value).expanduser()
    return str(p.resolve()) if p.exists() else value


def _body(value: str | None) -> str | None:
    """`@file` reads the body from a file, `-` from stdin."""
    if value is None:
        return None
    if value == "-":
        return sys.stdin.read()
    if value.startswith("@"):
        return Path(value[1:]).expanduser().read_text(encoding="utf-8")
    return value


def _headers(values: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition(":")
        if not sep:
            raise click.BadParameter(f"{item!r} is not 'Name: value'", param_hint="--header")
        out[name.strip()] = value.strip()
    return out


def _finish(job: Any, wait: bool, timeout: float | None, as_json: bool, what: str) -> None:
    from cli import print_json, show_outcome, wait_for

    if wait:
        show_outcome(wait_for(job, timeout, as_json), as_json)
    elif as_json:
        print_json(job.to_dict())
    else:
        click.echo(f"enqueued {what} as job {job.id}")


@click.group()
def email() -> None:
    """Send mail, run campaigns, look at the outbox.

    \b
    Every message goes through the outbox (one row per message) and is sent once, even when
    its job is retried or redelivered. Configure the server with CONVEYOR_SMTP_HOST, _PORT,
    _STARTTLS or _SSL, _USER, _PASSWORD and CONVEYOR_MAIL_FROM; see docs/email.md.
    """


@email.command("send")
@click.option("--to", "to", multiple=True, metavar="ADDR",
              help="Recipient, 'a@x.org' or 'Ann <a@x.org>' (repeatable).")
@click.option("--cc", multiple=True, metavar="ADDR", help="Copy to (repeatable).")
@click.option("--bcc", multiple=True, metavar="ADDR", help="Blind copy to (repeatable).")
@click.option("--subject", help="The subject (may use {{ variables }} with --template).")
@click.option("--template", help="A template name (conveyor email templates).")
@click.option("-c", "context", multiple=True, metavar="KEY=VALUE",
              help="A template variable; JSON values allowed (repeatable).")
@click.option("--context-json", metavar="JSON", help="Template variables as one JSON object.")
@click.option("--text", help="Plain-text body (or @file, or - for stdin).")
@click.option("--html", help="HTML body (or @file).")
@click.option("--attach", multiple=True, metavar="FILE",
              help="A file under the data or results directory (repeatable).")
@click.option("--reply-to", multiple=True, metavar="ADDR")
@click.option("--header", "headers", multiple=True, metavar="'NAME: VALUE'",
              help="An extra header (repeatable).")
@click.option("--send-at", type=click.DateTime(["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S",
                                                "%Y-%m-%d %H:%M"]),
              help="Send no sooner than this time (ISO; UTC without an offset).")
@click.option("--key", help="Deduplication key: a message with a key already sent is not sent again.")
@click.option("--wait", is_flag=True, help="Wait until the message is sent (or fails) and print the outcome.")
@click.option("--timeout", type=float, default=None, help="With --wait: give up after this many seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@handle_errors
def send_cmd(to: tuple[str, ...], cc: tuple[str, ...], bcc: tuple[str, ...], subject: str | None,
             template: str | None, context: tuple[str, ...], context_json: str | None, text: str | None,
             html: str | None, attach: tuple[str, ...], reply_to: tuple[str, ...], headers: tuple[str, ...],
             send_at: datetime | None, key: str | None, wait: bool, timeout: float | None,
             as_json: bool) -> None:
    """Send one message, from a template or from text/HTML.

    \b
    Examples:
      conveyor email send --to ann@example.org --template daily_digest \\
          -c date=2026-01-01 -c 'stats={"jobs": 12}' --wait
      conveyor email send --to 'Ann <ann@example.org>' --subject "Report" \\
          --text @body.txt --attach results/report.csv --key report-2026-01-01
      conveyor email send --to ops@example.org --subject Hi --text hello --send-at 2026-01-02T07:00:00
    """
    if not to and not cc and not bcc:
        raise click.UsageError("give at least one of --to, --cc, --bcc")
    variables: dict[str, Any] = {}
    if context_json:
        try:
            variables = json.loads(context_json)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--context-json") from None
    variables.update(_pairs(context))
    payload: dict[str, Any] = {"to": list(to), "cc": list(cc), "bcc": list(bcc)}
    if template:
        payload.update(template=template, context=variables)
    elif variables:
        raise click.UsageError("-c/--context-json go with --template")
    for name, value in (("subject", subject), ("text", _body(text)), ("html", _body(html)), ("key", key)):
        if value is not None:
            payload[name] = value
    if attach:
        payload["attachments"] = [_local_path(a) for a in attach]
    if reply_to:
        payload["reply_to"] = list(reply_to)
    if headers:
        payload["headers"] = _headers(headers)
    if send_at is not None:
        payload["send_at"] = (send_at if send_at.tzinfo else send_at.replace(tzinfo=UTC)).isoformat()
    job = _client().enqueue("email.send", payload, source="cli")
    _finish(job, wait, timeout, as_json, "the message")


@email.command("campaign")
@click.option("--template", required=True, help="The template every recipient gets.")
@click.option("--recipients", required=True, metavar="FILE.csv",
              help="CSV with an 'email' column (and 'name'); other columns are template variables.")
@click.option("--subject", help="Overrides the template's subject; may use {{ variables }}.")
@click.option("-c", "context", multiple=True, metavar="KEY=VALUE",
              help="A variable every recipient gets (repeatable).")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True),
              help="Messages per second (default CONVEYOR_EMAIL_RATE_LIMIT).")
@click.option("--key", help="Campaign key: running again with it skips recipients who got the message.")
@click.option("--attach", multiple=True, metavar="FILE", help="A file every recipient gets (repeatable).")
@click.option("--wait", is_flag=True,
              help="Wait for the last message, with a progress bar; print the summary.")
@click.option("--timeout", type=float, default=None, help="With --wait: give up after this many seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@handle_errors
def campaign_cmd(template: str, recipients: str, subject: str | None, context: tuple[str, ...],
                 rate: float | None, key: str | None, attach: tuple[str, ...], wait: bool,
                 timeout: float | None,
                 as_json: bool) -> None:
    """Send TEMPLATE to every recipient of a CSV file, at a rate shared by all workers.

    \b
    Examples:
      conveyor email campaign --template daily_digest --recipients data/team.csv \\
          -c date=2026-01-01 -c 'stats={"jobs": 12}' --rate 5 --key digest-2026-01-01 --wait
      conveyor email outbox --campaign digest-2026-01-01 --status failed
    """
    payload: dict[str, Any] = {"template": template, "recipients_file": _local_path(recipients),
                               "context": _pairs(context)}
    for name, value in (("subject", subject), ("rate", rate), ("key", key)):
        if value is not None:
            payload[name] = value
    if attach:
        payload["attachments"] = [_local_path(a) for a in attach]
    job = _client().enqueue("email.campaign", payload, source="cli")
    _finish(job, wait, timeout, as_json, "the campaign")


def _row_dict(row: OutboxMessage) -> dict[str, Any]:
    out = {c: getattr(row, c) for c in ROW_FIELDS}
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in out.items()}


def _to(row: OutboxMessage) -> str:
    everyone = [a for part in ("to", "cc", "bcc") for a in (row.recipients or {}).get(part, [])]
    return ", ".join(everyone[:3]) + (f" (+{len(everyone) - 3})" if len(everyone) > 3 else "")


@email.command("outbox")
@click.option("--status", multiple=True, type=click.Choice(STATUSES),
              help="Only messages in this status (repeatable).")
@click.option("--campaign", help="Only messages of this campaign key.")
@click.option("--since", help="Only messages created since: 30m, 2h, 7d or an ISO time.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@handle_errors
def outbox_cmd(status: tuple[str, ...], campaign: str | None, since: str | None, limit: int,
               as_json: bool) -> None:
    """List outbox messages, newest first.

    \b
    Examples:
      conveyor email outbox --status unknown      messages that may or may not have gone out
      conveyor email outbox --status failed --since 1d --json
    """
    from cli import parse_since, print_json, print_table, when
    from tasks.email.outbox import Outbox

    rows = Outbox(_settings().database_url).messages(status=list(status) or None, campaign=campaign,
                                                  since=parse_since(since), limit=limit)
    if as_json:
        print_json([_row_dict(r) for r in rows])
        return
    print_table(None, ["id", "status", "to", "subject", "attempts", "created", "sent", "last response"],
                [(r.id, f"[{OUTBOX_COLOURS.get(r.status, 'white')}]{r.status}[/]", _to(r),
                  (r.subject or "")[:50], r.attempts, when(r.created_at), when(r.sent_at),
                  (r.last_response or "")[:60]) for r in rows])


@email.command("show")
@click.argument("ref")
@click.option("--raw", is_flag=True, help="Print the message itself (RFC 5322) instead.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@handle_errors
def show_cmd(ref: str, raw: bool, as_json: bool) -> None:
    """Show one outbox message, by id, key or Message-ID."""
    from cli import coloured, print_json, print_table
    from tasks.email.outbox import Outbox

    row = Outbox(_settings().database_url).lookup(ref, raw=raw)
    if raw:
        if row.raw is None:
            click.echo("(not rendered yet)", err=True)
            sys.exit(1)
        click.echo(row.raw.decode("utf-8", "replace"))
        return
    data = _row_dict(row)
    if as_json:
        print_json(data)
        return
    print_table(f"message {row.id}", ["field", "value"],
                [(k, coloured(v) if k == "status" else json.dumps(v) if isinstance(v, (dict, list)) else v)
                 for k, v in data.items()])


@email.command("resend")
@click.argument("refs", nargs=-1, required=True)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@handle_errors
def resend_cmd(refs: tuple[str, ...], yes: bool, as_json: bool) -> None:
    """Send unknown or failed messages again (same Message-ID), each as a new job.

    An `unknown` message may have been delivered already: check with the recipient or the
    server's logs first; resending may deliver it twice. `conveyor email settle` records the
    answer instead when it did arrive.
    """
    from cli import print_json
    from tasks.email.models import OutboxStatus
    from tasks.email.outbox import Outbox

    outbox = Outbox(_settings().database_url)
    rows = [outbox.lookup(r) for r in refs]
    doubtful = [r for r in rows if r.status == OutboxStatus.UNKNOWN]
    if doubtful and not yes:
        click.confirm(f"{len(doubtful)} message(s) may have been delivered already; send them again?",
                      abort=True)
    out = []
    for row in rows:
        reopened = outbox.reopen(row.id, (OutboxStatus.UNKNOWN, OutboxStatus.FAILED))
        domains = sorted({a.rsplit("@", 1)[-1].rstrip(">").lower()
                          for v in reopened.recipients.values() for a in v})
        job = _client().enqueue("email.deliver", {"outbox_id": row.id, "domains": domains}, source="cli")
        out.append({"outbox_id": row.id, "job_id": job.id, "was": row.status})
    if as_json:
        print_json(out)
    else:
        for item in out:
            click.echo(f"message {item['outbox_id']} ({item['was']}) queued again as job {item['job_id']}")


@email.command("settle")
@click.argument("ref")
@click.option("--delivered/--not-delivered", required=True,
              help="What you found out: it arrived (mark sent) or it did not (mark failed).")
@click.option("--note", default="settled by an operator", show_default=True)
@handle_errors
def settle_cmd(ref: str, delivered: bool, note: str) -> None:
    """Record what happened to an `unknown` message, without sending anything."""
    from tasks.email.models import OutboxStatus
    from tasks.email.outbox import Outbox

    outbox = Outbox(_settings().database_url)
    row = outbox.resolve(outbox.lookup(ref).id, OutboxStatus.SENT if delivered else OutboxStatus.FAILED, note)
    click.echo(f"message {row.id} is now {row.status}")


@email.command("templates")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@handle_errors
def templates_cmd(as_json: bool) -> None:
    """List the mail templates and the variables each uses."""
    from cli import print_json, print_table
    from tasks.email.render import template_names

    found = template_names(_settings().templates_dir)
    if as_json:
        print_json(found)
        return
    print_table("Mail templates", ["name", "parts", "variables"],
                [(n, ", ".join(e["parts"]), ", ".join(e["variables"])) for n, e in found.items()])


@email.command("preview")
@click.argument("template")
@click.option("-c", "context", multiple=True, metavar="KEY=VALUE", help="A template variable (repeatable).")
@click.option("--context-json", metavar="JSON", help="Template variables as one JSON object.")
@click.option("--html", "show_html", is_flag=True, help="Print the HTML body instead of the text.")
@handle_errors
def preview_cmd(template: str, context: tuple[str, ...], context_json: str | None,
                show_html: bool) -> None:
    """Render TEMPLATE with a context and print it: nothing is sent."""
    from tasks.email.render import render_template

    variables = json.loads(context_json) if context_json else {}
    variables.update(_pairs(context))
    r = render_template(template, variables, _settings().templates_dir)
    click.echo(f"Subject: {r.subject or '(none: give --subject when sending)'}\n")
    click.echo(r.html if show_html else r.text)


@email.command("sink")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=1025, show_default=True)
def sink_cmd(host: str, port: int) -> None:
    """Run a local SMTP server that prints what it receives (for development; sends nothing on)."""
    import time

    from tasks.email.sink import Handler, Sink

    handler = Handler(on_message=lambda m: click.echo(
        f"{datetime.now():%H:%M:%S} {m.mail_from} -> {', '.join(m.rcpt_tos)}: {m.subject!r} "
        f"({len(m.data)} bytes)"))
    with Sink(host, port, handler=handler) as sink:
        click.echo(f"listening on {sink.host}:{sink.port}; point CONVEYOR_SMTP_HOST/PORT here. Ctrl-C stops.")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
