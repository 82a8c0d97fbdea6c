"""`conveyor`: the operator's command line. Thin: parse, call the client API or the store, print."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from functools import wraps
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from celery import Celery

    from config import Settings
    from jobs.client import Client, Job

F = TypeVar("F", bound=Callable[..., Any])

#: Commands that job families and the other parts contribute: name -> "module:attribute".
#: Imported only when used, so `conveyor --help` stays fast and one family cannot break another.
FAMILY_COMMANDS: dict[str, str] = {
    "email": "tasks.email.cli:email",
    "analyze": "tasks.analysis.cli:analyze",
    "reconcile": "tasks.reconciliation.cli:reconcile",
    "recon": "tasks.reconciliation.cli:recon",
    "schedule": "scheduler.cli:schedule",
    "beat": "scheduler.cli:beat",
    "up": "worker.cli:up",
    "flower": "worker.cli:flower",
    "stats": "worker.cli:stats",
}

EXIT_INVALID = 2
EXIT_UNAVAILABLE = 3


class Context:
    """Loads settings, the app and the client on first use, not at start-up."""

    def __init__(self) -> None:
        self._client: Client | None = None

    @property
    def settings(self) -> Settings:
        from config import get_settings

        return get_settings()

    @property
    def app(self) -> Celery:
        return self.client.app

    @property
    def client(self) -> Client:
        if self._client is None:
            from jobs.client import default_client

            self._client = default_client()
        return self._client


pass_ctx = click.make_pass_decorator(Context, ensure=True)


def fail(message: str, code: int = 1) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


def handle_errors(fn: F) -> F:
    """Turn Conveyor's errors into one line on stderr and an exit code; no tracebacks."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from kombu.exceptions import OperationalError as KombuError
        from pydantic import ValidationError
        from sqlalchemy.exc import OperationalError as SQLError

        from config import mask_url
        from jobs.errors import ConveyorError, InvalidInput, ServiceUnavailable

        try:
            return fn(*args, **kwargs)
        except InvalidInput as exc:
            fail(str(exc), EXIT_INVALID)
        except ServiceUnavailable as exc:
            fail(str(exc), EXIT_UNAVAILABLE)
        except ConveyorError as exc:
            fail(str(exc))
        except ValidationError as exc:
            fail(f"invalid settings: {exc}", EXIT_INVALID)
        except KombuError as exc:
            from config import get_settings

            fail(f"broker {mask_url(get_settings().broker_url)} is unreachable: {exc}", EXIT_UNAVAILABLE)
        except SQLError as exc:
            from config import get_settings

            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            fail(f"job store {mask_url(get_settings().database_url)} is unavailable: {reason}",
                 EXIT_UNAVAILABLE)

    return wrapper  # type: ignore[return-value]


# --- output helpers ---------------------------------------------------------------------------
def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


def print_table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, header_style="bold")
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*["" if v is None else str(v) for v in row])
    Console().print(table)


STATUS_COLOURS = {"succeeded": "green", "failed": "red", "dead": "red", "revoked": "yellow",
                  "retrying": "yellow", "started": "cyan", "queued": "blue"}


def coloured(status: str) -> str:
    return f"[{STATUS_COLOURS.get(status, 'white')}]{status}[/]"


def when(dt: datetime | None) -> str:
    return dt.astimezone().strftime("%Y-%m-%d %H:%M:%S") if dt else ""


# --- parsing helpers --------------------------------------------------------------------------
def parse_pairs(pairs: Sequence[str]) -> dict[str, Any]:
    """`key=value` pairs; a value that reads as JSON (2, true, [1,2]) is taken as JSON."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not key=value", param_hint="-d")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(value: str | None) -> datetime | None:
    """`30m`, `2h`, `7d` ago, or an ISO timestamp."""
    if not value:
        return None
    m = _DURATION.match(value.strip())
    if m:
        return datetime.now(UTC) - timedelta(**{_UNITS[m.group(2)]: float(m.group(1))})
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither a duration (30m, 2h, 7d) nor an ISO time",
                                 param_hint="--since") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def wait_for(job: Job, timeout: float | None, as_json: bool) -> Job:
    """Wait for `job`, with a progress bar while it reports progress; return the final record."""
    if as_json:
        return job.wait_finished(timeout)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TimeElapsedColumn(), transient=True) as bar:
        tid = bar.add_task(f"{job.task} {job.status}", total=None)

        def update(j: Job) -> None:
            p = j.progress or {}
            total = p.get("total")
            bar.update(tid, description=f"{j.task} {j.status} {p.get('message') or ''}".rstrip(),
                       total=total, completed=p.get("current") or 0)

        return job.wait_finished(timeout, on_update=update)


def show_outcome(job: Job, as_json: bool) -> None:
    if as_json:
        print_json(job.to_dict())
    elif job.status == "succeeded":
        click.secho(f"job {job.id} succeeded in {job.runtime or 0:.3f}s", fg="green")
        click.echo(json.dumps(job.result, indent=2, default=str))
    else:
        click.secho(f"job {job.id} {job.status}: {job.error_type}: {job.error_message}", fg="red")
    if job.status != "succeeded":
        sys.exit(1)


# --- commands ---------------------------------------------------------------------------------
class LazyGroup(click.Group):
    """A group whose contributed commands are imported when first used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *FAMILY_COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in FAMILY_COMMANDS and name not in self.commands:
            import importlib

            module, _, attr = FAMILY_COMMANDS[name].partition(":")
            self.add_command(getattr(importlib.import_module(module), attr), name)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="conveyor")
def cli() -> None:
    """Conveyor: hand slow or scheduled work to background workers, and watch it happen.

    Settings come from CONVEYOR_* environment variables (or a .env file): CONVEYOR_BROKER_URL,
    CONVEYOR_DATABASE_URL, ... See README.md for the full table.

    \b
    Quick start:
      conveyor db upgrade                      create or migrate the job store
      conveyor worker                          run a worker on every queue
      conveyor enqueue system.ping --wait      run a job and print its result
      conveyor jobs list --status failed       what went wrong lately
    """


@cli.command("tasks")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@handle_errors
def tasks_cmd(as_json: bool) -> None:
    """List the registered tasks and the input fields each takes."""
    from tasks import load_all
    from tasks.registry import input_fields

    specs = sorted(load_all().values(), key=lambda s: s.name)
    if as_json:
        print_json([{"name": s.name, "queue": s.queue, "description": s.description,
                     "sensitive": sorted(s.sensitive), "fields": input_fields(s)} for s in specs])
        return

    def describe(spec: Any) -> str:
        parts = []
        for f in input_fields(spec):
            flag = "" if f["required"] else f"={f['default']!r}"
            parts.append(f"{f['name']}: {f['type']}{flag}")
        return "\n".join(parts)

    print_table("Registered tasks", ["task", "queue", "input fields", "what it does"],
                [(s.name, s.queue, describe(s), s.description) for s in specs])


@cli.command()
@click.argument("task")
@click.option("--data", "data_json", metavar="JSON", help="The payload as a JSON object.")
@click.option("-d", "pairs", multiple=True, metavar="KEY=VALUE", help="A payload field (repeatable).")
@click.option("--queue", help="Override the task's queue.")
@click.option("--countdown", type=float, metavar="SECONDS", help="Run no sooner than this many seconds from now.")
@click.option("--eta", type=click.DateTime(["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S"]),
              help="Run no sooner than this time (ISO; UTC if no offset).")
@click.option("--priority", type=click.IntRange(0, 9), help="0 runs first, 9 last.")
@click.option("--key", "idempotency_key", help="Idempotency key: the same key returns the same job.")
@click.option("--wait", is_flag=True, help="Wait for the job to finish and print its result.")
@click.option("--timeout", type=float, default=None, help="With --wait: give up after this many seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_ctx
@handle_errors
def enqueue(ctx: Context, task: str, data_json: str | None, pairs: tuple[str, ...], queue: str | None,
            countdown: float | None, eta: datetime | None, priority: int | None,
            idempotency_key: str | None, wait: bool, timeout: float | None, as_json: bool) -> None:
    """Enqueue one job of TASK.

    \b
    Examples:
      conveyor enqueue system.ping -d message=hello --wait
      conveyor enqueue system.sleep --data '{"seconds": 5}' --wait --timeout 30
      conveyor enqueue system.ping --key nightly-2026-01-01     # enqueued at most once
    """
    payload: dict[str, Any] = {}
    if data_json:
        try:
            payload = json.loads(data_json)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--data") from None
        if not isinstance(payload, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--data")
    payload.update(parse_pairs(pairs))
    if eta is not None and eta.tzinfo is None:
        eta = eta.replace(tzinfo=UTC)
    job = ctx.client.enqueue(task, payload, queue=queue, countdown=countdown, eta=eta,
                             priority=priority, idempotency_key=idempotency_key, source="cli")
    if wait:
        show_outcome(wait_for(job, timeout, as_json), as_json)
    elif as_json:
        print_json(job.to_dict())
    else:
        click.echo(f"enqueued {job.task} as job {job.id} ({job.status})")


@cli.group()
def jobs() -> None:
    """Look at jobs, retry them, cancel them."""


@jobs.command("list")
@click.option("--status", multiple=True, help="Only jobs in this status (repeatable).")
@click.option("--task", help="Only jobs of this task.")
@click.option("--since", help="Only jobs created since: 30m, 2h, 7d or an ISO time.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_ctx
@handle_errors
def jobs_list(ctx: Context, status: tuple[str, ...], task: str | None, since: str | None, limit: int,
              as_json: bool) -> None:
    """List jobs, newest first."""
    found = ctx.client.list_jobs(status=list(status) or None, task=task, since=parse_since(since),
                                 limit=limit)
    if as_json:
        print_json([j.to_dict() for j in found])
        return
    print_table(None, ["id", "task", "status", "source", "attempts", "created", "runtime", "error"],
                [(j.id, j.task, coloured(j.status), j.source, j.attempts, when(j.created_at),
                  f"{j.runtime:.3f}s" if j.runtime is not None else "",
                  (j.error_message or "")[:60]) for j in found])


@jobs.command("show")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_ctx
@handle_errors
def jobs_show(ctx: Context, job_id: str, as_json: bool) -> None:
    """Show a job's record, its attempts, and its result or traceback."""
    job = ctx.client.get_job(job_id)
    attempts = ctx.client.attempts(job_id)
    if as_json:
        print_json({**job.to_dict(), "attempt_history": [
            {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in vars(a).items()}
            for a in attempts]})
        return
    print_table(f"job {job.id}", ["field", "value"], [
        ("task", job.task), ("status", coloured(job.status)), ("queue", job.queue),
        ("source", job.source), ("payload", json.dumps(job.kwargs)), ("idempotency key", job.idempotency_key),
        ("priority", job.priority), ("eta", when(job.eta)), ("parent / root", f"{job.parent_id} / {job.root_id}"),
        ("retry of", job.retry_of), ("progress", json.dumps(job.progress) if job.progress else None),
        ("created", when(job.created_at)), ("started", when(job.started_at)),
        ("finished", when(job.finished_at)), ("runtime", job.runtime), ("worker", job.worker),
        ("attempts", job.attempts),
    ])
    if attempts:
        print_table("attempts", ["#", "why", "worker", "pid", "started", "finished", "outcome", "error"],
                    [(a.number, a.reason, a.worker, a.pid, when(a.started_at), when(a.finished_at),
                      a.outcome, a.error) for a in attempts])
    if job.status == "succeeded":
        click.echo("result:\n" + json.dumps(job.result, indent=2, default=str))
    elif job.error_type:
        click.secho(f"{job.error_type}: {job.error_message}", fg="red")
        if job.traceback:
            click.echo(job.traceback)


@jobs.command("retry")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_ctx
@handle_errors
def jobs_retry(ctx: Context, job_id: str, as_json: bool) -> None:
    """Enqueue a failed, dead or cancelled job again, as a new job linked to it."""
    job = ctx.client.retry(job_id)
    if as_json:
        print_json(job.to_dict())
    else:
        click.echo(f"enqueued {job.task} again as job {job.id} (retry of {job_id})")


@jobs.command("cancel")
@click.argument("job_id")
@click.option("--terminate", is_flag=True, help="Also stop the job if it is running (SIGTERM).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_ctx
@handle_errors
def jobs_cancel(ctx: Context, job_id: str, terminate: bool, yes: bool) -> None:
    """Cancel a job. The cancellation is stored, so it holds through worker restarts."""
    if terminate and not yes:
        click.confirm(f"Stop job {job_id} even if it is running now?", abort=True)
    job = ctx.client.cancel(job_id, terminate=terminate)
    click.echo(f"job {job.id} cancelled" + (" and terminated if it was running" if terminate else ""))


@cli.command(context_settings={"ignore_unknown_options": True})
@click.option("-Q", "--queues", default=None, help="Comma-separated queues (default: all of Conveyor's).")
@click.option("-c", "--concurrency", type=click.IntRange(1), default=None,
              help="Worker processes (default: CONVEYOR_WORKER_CONCURRENCY).")
@click.option("-l", "--loglevel", default="INFO", show_default=True)
@click.option("-n", "--hostname", default=None, help="Worker name, e.g. worker1@%h.")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@handle_errors
def worker(queues: str | None, concurrency: int | None, loglevel: str, hostname: str | None,
           celery_args: tuple[str, ...]) -> None:
    """Run a worker (Celery's prefork worker on Conveyor's app); extra args go to Celery."""
    from tasks.registry import QUEUES
    from worker.app import app

    argv = ["worker", "-Q", queues or ",".join(QUEUES), "-l", loglevel]
    if concurrency:
        argv += ["-c", str(concurrency)]
    if hostname:
        argv += ["-n", hostname]
    app.worker_main(argv + list(celery_args))


@cli.group()
def db() -> None:
    """Manage the job store's schema."""


@db.command("upgrade")
@click.option("--revision", default="heads", show_default=True)
@pass_ctx
@handle_errors
def db_upgrade(ctx: Context, revision: str) -> None:
    """Create or migrate the job store's tables (idempotent)."""
    from config import mask_url
    from jobs.migrate import upgrade

    upgrade(ctx.settings.database_url, revision)
    click.echo(f"job store {mask_url(ctx.settings.database_url)} is at {revision}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.option("--timeout", type=float, default=2.0, show_default=True, help="Seconds to wait for workers.")
@pass_ctx
@handle_errors
def status(ctx: Context, as_json: bool, timeout: float) -> None:
    """Quick health check: broker, job store, migrations, workers online, queue depths."""
    from worker.health import check

    report = check(ctx.settings, timeout=timeout)
    if as_json:
        print_json(report)
    else:
        ok = lambda b: "[green]ok[/]" if b else "[red]DOWN[/]"  # noqa: E731
        rows = [
            ("broker", report["broker"]["url"], ok(report["broker"]["ok"]), report["broker"].get("error", "")),
            ("job store", report["database"]["url"], ok(report["database"]["ok"]),
             report["database"].get("error", "")),
            ("migrations", "", ok(report["database"].get("migrations_current", False)),
             "" if report["database"].get("migrations_current") else "run: conveyor db upgrade"),
            ("workers", ", ".join(report["workers"]) or "none online", ok(bool(report["workers"])), ""),
        ]
        if report.get("stalled"):
            rows.append(("stalled", ", ".join(report["stalled"]), "[red]STALLED[/]",
                         "connected but not taking jobs while work waits: restart them"))
        print_table("Conveyor status", ["part", "where", "state", "note"], rows)
        if report["queues"]:
            print_table("Queues", ["queue", "waiting"], sorted(report["queues"].items()))
    if not report["ok"]:
        sys.exit(EXIT_UNAVAILABLE)


def main() -> None:
    cli(prog_name="conveyor")


if __name__ == "__main__":
    main()
