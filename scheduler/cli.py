"""`conveyor schedule ...` and `conveyor beat`: parse, call `scheduler.service.Schedules`, print.

The top-level `cli` module is imported inside the commands, not at import time: `cli` imports
this module while it builds the command tree (and `python -m cli` would otherwise load it twice).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from scheduler.service import Schedules, ScheduleView

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(fn: F) -> F:
    """`cli.handle_errors`, looked up when the command runs."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from cli import handle_errors as handle

        return handle(fn)(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _schedules() -> Schedules:
    from jobs.client import default_client
    from scheduler.service import Schedules

    return Schedules(default_client())


def _payload(data_json: str | None, pairs: tuple[str, ...]) -> dict[str, Any] | None:
    from cli import parse_pairs

    if data_json is None and not pairs:
        return None
    payload: dict[str, Any] = {}
    if data_json is not None:
        try:
            payload = json.loads(data_json)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--data") from None
        if not isinstance(payload, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--data")
    payload.update(parse_pairs(pairs))
    return payload


def _timing(cron: str | None, every: str | None, at: str | None, tz: str | None,
            required: bool) -> dict[str, Any]:
    from scheduler.timing import parse_at

    given = [name for name, v in (("--cron", cron), ("--every", every), ("--at", at)) if v is not None]
    if len(given) > 1:
        raise click.UsageError(f"give one of --cron, --every, --at (not {' and '.join(given)})")
    if required and not given:
        raise click.UsageError("say when: --cron '0 7 * * *', --every 10m or --at 2026-01-01T07:00:00")
    return {"cron": cron, "every": every, "at": parse_at(at, tz or "UTC") if at is not None else None}


def _show(view: ScheduleView, as_json: bool, verb: str) -> None:
    from cli import print_json, when

    if as_json:
        print_json(view.to_dict())
        return
    state = "enabled" if view.enabled else "disabled"
    nxt = f", next run {when(view.next_run_at)}" if view.next_run_at else ""
    click.echo(f"{verb} schedule {view.name}: {view.task} {view.timing} ({state}{nxt})")


# Options shared by add and update.
def _definition_options(fn: F) -> F:
    options = [
        click.option("--cron", metavar="EXPR", help="A 5-field cron expression, read in --tz: '0 7 * * *'."),
        click.option("--every", metavar="DURATION",
                     help="An interval: 30s, 10m, 1h30m, 1d (aligned to UTC)."),
        click.option("--at", metavar="ISO", help="Once, at this time (read in --tz without an offset)."),
        click.option("--data", "data_json", metavar="JSON", help="The payload as a JSON object."),
        click.option("-d", "pairs", multiple=True, metavar="KEY=VALUE", help="A payload field (repeatable)."),
        click.option("--tz", help="Timezone of --cron and --at, e.g. Europe/Paris (default UTC)."),
        click.option("--queue", help="Send the jobs to this queue instead of the task's."),
        click.option("--priority", type=click.IntRange(0, 9), help="0 runs first, 9 last."),
        click.option("--overlap", type=click.Choice(["allow", "skip"]),
                     help="skip: no new job while the previous one is queued or running."),
        click.option("--catchup", type=click.Choice(["once", "skip"]),
                     help="After beat was down: fire once for the missed ticks, or skip them."),
        click.option("--description", help="A note for operators."),
        click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@click.group()
def schedule() -> None:
    """Schedules kept in the database: beat fires each tick exactly once.

    \b
    Examples:
      conveyor schedule add nightly-ping --task system.ping --cron "0 3 * * *" -d message=hi
      conveyor schedule add heartbeat --task system.ping --every 10m --overlap skip
      conveyor schedule add new-year --task system.ping --at 2027-01-01T00:00 --tz Europe/Paris
      conveyor schedule list                      next run, last run, last job, warnings
      conveyor schedule run-now nightly-ping --wait
      conveyor schedule seed                      create the default schedules (disabled)
    Run `conveyor beat` (one or more, one leads) to fire them.
    """


@schedule.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@handle_errors
def list_cmd(as_json: bool) -> None:
    """List schedules: next run, last run, last job's status and warnings.

    A warning appears when runs keep failing, when a tick is overdue (is beat running?), when
    the last tick was skipped because the previous job was still going, or refused.
    """
    from cli import coloured, print_json, print_table, when

    views = _schedules().list()
    if as_json:
        print_json([v.to_dict() for v in views])
        return
    print_table(None, ["name", "task", "when", "on", "next run", "last run", "last job", "runs", "warnings"],
                [(v.name, v.task, v.timing, "[green]yes[/]" if v.enabled else "[yellow]no[/]",
                  when(v.next_run_at), when(v.last_run_at),
                  coloured(v.last_job_status) if v.last_job_status else (v.last_outcome or ""),
                  v.run_count, "[red]" + "\n".join(v.flags) + "[/]" if v.flags else "") for v in views])


@schedule.command("show")
@click.argument("name")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="Firings to show.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@handle_errors
def show_cmd(name: str, limit: int, as_json: bool) -> None:
    """Show one schedule and its latest firings (one per tick: job, skipped, missed or refused)."""
    from cli import print_json, print_table, when

    s = _schedules()
    view = s.show(name)
    firings = s.store.firings(name, limit)
    if as_json:
        print_json({**view.to_dict(), "firings": [
            {"slot": f.slot.isoformat(), "fired_at": f.fired_at.isoformat(), "fired_by": f.fired_by,
             "outcome": f.outcome, "job_id": f.job_id, "job_status": status, "error": f.error}
            for f, status in firings]})
        return
    print_table(f"schedule {view.name}", ["field", "value"], [
        ("task", view.task), ("when", view.timing), ("enabled", view.enabled),
        ("payload", json.dumps(view.payload)), ("queue / priority", f"{view.queue or '-'} / {view.priority}"),
        ("overlap / catch-up", f"{view.overlap} / {view.catchup}"), ("next run", when(view.next_run_at)),
        ("last run", when(view.last_run_at)), ("last success", when(view.last_success_at)),
        ("runs", view.run_count), ("failed in a row", view.failure_streak),
        ("description", view.description), ("warnings", "\n".join(view.flags)),
    ])
    print_table("firings", ["tick", "fired", "by", "outcome", "job", "error"],
                [(when(f.slot), when(f.fired_at), f.fired_by, status or f.outcome, f.job_id,
                  (f.error or "")[:80]) for f, status in firings])


@schedule.command("add")
@click.argument("name")
@click.option("--task", required=True, help="The task to run, e.g. system.ping (see `conveyor tasks`).")
@_definition_options
@click.option("--disabled", is_flag=True, help="Create it switched off.")
@handle_errors
def add_cmd(name: str, task: str, cron: str | None, every: str | None, at: str | None, data_json: str | None,
            pairs: tuple[str, ...], tz: str | None, queue: str | None, priority: int | None,
            overlap: str | None, catchup: str | None, description: str | None, as_json: bool,
            disabled: bool) -> None:
    """Add a schedule NAME running TASK on a cron expression, an interval, or once.

    The payload is checked against the task's input model; an invalid cron, an unknown task
    or a bad payload is refused and nothing is saved. The first run is the first tick after now.

    \b
    Examples:
      conveyor schedule add morning-report --task analysis.report --cron "0 7 * * 1-5" \\
          --tz Europe/Paris --data '{"dataset": "sales.csv"}'
      conveyor schedule add poll --task system.ping --every 30s --overlap skip
      conveyor schedule add once --task system.sleep --at 2026-12-24T18:00:00+01:00 -d seconds=1
    """
    s = _schedules()
    timing = _timing(cron, every, at, tz, required=True)
    row = s.add(name, task, **timing, payload=_payload(data_json, pairs) or {}, tz=tz or "UTC",
                enabled=not disabled, queue=queue, priority=priority, overlap=overlap or "allow",
                catchup=catchup or "once", description=description)
    _show(s.view(row, None), as_json, "added")


@schedule.command("update")
@click.argument("name")
@click.option("--task", help="Run another task (the payload is checked against it).")
@_definition_options
@handle_errors
def update_cmd(name: str, task: str | None, cron: str | None, every: str | None, at: str | None,
               data_json: str | None, pairs: tuple[str, ...], tz: str | None, queue: str | None,
               priority: int | None, overlap: str | None, catchup: str | None, description: str | None,
               as_json: bool) -> None:
    """Change a schedule; beat picks the change up within seconds, no restart.

    --data/-d replace the whole payload. A new --cron/--every/--at counts from now: ticks the
    old timing missed are not caught up.

    \b
    Examples:
      conveyor schedule update heartbeat --every 5m
      conveyor schedule update nightly-ping --data '{"message": "still here"}'
    """
    from scheduler.service import UNSET

    s = _schedules()
    timing = _timing(cron, every, at, tz, required=False)
    row = s.update(name, task=task, **timing, payload=_payload(data_json, pairs), tz=tz,
                   queue=UNSET if queue is None else queue, priority=UNSET if priority is None else priority,
                   overlap=overlap, catchup=catchup,
                   description=UNSET if description is None else description)
    _show(s.view(row, None), as_json, "updated")


@schedule.command("remove")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@handle_errors
def remove_cmd(name: str, yes: bool) -> None:
    """Delete a schedule and its firing history (its jobs stay in the job store)."""
    s = _schedules()
    s.get(name)  # a clear error before the question
    if not yes:
        click.confirm(f"Delete schedule {name} and its history?", abort=True)
    s.remove(name)
    click.echo(f"removed schedule {name}")


@schedule.command("enable")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@handle_errors
def enable_cmd(name: str, as_json: bool) -> None:
    """Switch a schedule on; it fires from its next tick (the time it was off is not caught up)."""
    s = _schedules()
    _show(s.view(s.enable(name), None), as_json, "enabled")


@schedule.command("disable")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@handle_errors
def disable_cmd(name: str, as_json: bool) -> None:
    """Switch a schedule off; beat stops firing it within seconds."""
    s = _schedules()
    _show(s.view(s.disable(name), None), as_json, "disabled")


@schedule.command("run-now")
@click.argument("name")
@click.option("--wait", is_flag=True, help="Wait for the job to finish and print its result.")
@click.option("--timeout", type=float, default=None, help="With --wait: give up after this many seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@handle_errors
def run_now_cmd(name: str, wait: bool, timeout: float | None, as_json: bool) -> None:
    """Enqueue the schedule's job now, outside its timing (enabled or not).

    \b
    Example:
      conveyor schedule run-now prune-jobs --wait
    """
    from cli import print_json, show_outcome, wait_for

    job = _schedules().run_now(name)
    if wait:
        show_outcome(wait_for(job, timeout, as_json), as_json)
    elif as_json:
        print_json(job.to_dict())
    else:
        click.echo(f"enqueued {job.task} as job {job.id} (source {job.source})")


@schedule.command("seed")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@handle_errors
def seed_cmd(as_json: bool) -> None:
    """Create the default schedules that are missing (idempotent; most start disabled).

    Defaults: prune-jobs (nightly), release-due-mail (every 30 s, enabled), nightly-reconciliation
    and daily-analysis-report. One whose task is not installed here is skipped, with the reason.
    """
    from cli import print_json, print_table
    from scheduler.defaults import seed

    results = seed(_schedules())
    if as_json:
        print_json([vars(r) for r in results])
        return
    colour = {"created": "green", "exists": "white", "skipped": "yellow"}
    print_table("Default schedules", ["schedule", "task", "result", "note"],
                [(r.name, r.task, f"[{colour[r.action]}]{r.action}[/]", r.message) for r in results])


@click.command()
@click.option("-l", "--loglevel", default="INFO", show_default=True)
@click.option("--max-interval", type=float, default=None, metavar="SECONDS",
              help="Longest sleep between ticks (default CONVEYOR_BEAT_MAX_INTERVAL).")
@handle_errors
def beat(loglevel: str, max_interval: float | None) -> None:
    """Run the beat scheduler: fire the schedules of the database as jobs.

    Run two or more for high availability: a leader lock in Redis lets one fire while the
    others stand by; if the leader dies, a standby takes over within CONVEYOR_BEAT_LOCK_TTL
    seconds. Each tick is claimed in the database, so it never fires twice. SIGTERM or Ctrl-C
    stops beat cleanly and hands the lock over at once.

    \b
    Examples:
      conveyor beat
      CONVEYOR_BEAT_LOCK_TTL=5 conveyor beat -l DEBUG
    """
    from jobs.client import default_client
    from scheduler.runner import run_beat

    run_beat(default_client().app, loglevel=loglevel, max_interval=max_interval)
    sys.exit(0)
