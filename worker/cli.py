"""`conveyor up`, `conveyor flower`, `conveyor stats`: parse, delegate, print.

`cli` (the top-level module) is imported inside the commands, not here: `python -m cli` runs it
as `__main__`, and a module-level `import cli` would import it a second time while it is still
adding these commands.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def _handled(fn: F) -> F:
    """`cli.handle_errors`, looked up when the command runs."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from cli import handle_errors

        return handle_errors(fn)(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _settings() -> Any:
    from config import get_settings

    return get_settings()


@click.command()
@click.option("-w", "--workers", type=click.IntRange(1, 32), default=None,
              help="Worker processes (default: CONVEYOR_UP_WORKERS, 1).")
@click.option("-c", "--concurrency", type=click.IntRange(1), default=None,
              help="Jobs each worker runs at once (default: CONVEYOR_WORKER_CONCURRENCY).")
@click.option("-Q", "--queues", default=None, help="Comma-separated queues (default: all of Conveyor's).")
@click.option("-l", "--loglevel", default="INFO", show_default=True)
@click.option("--no-beat", is_flag=True, help="Do not run the beat scheduler.")
@click.option("--no-flower", is_flag=True, help="Do not run Flower.")
@click.option("--flower-port", type=click.IntRange(1, 65535), default=None,
              help="Flower's port (default: CONVEYOR_FLOWER_PORT).")
@click.option("--insecure-local", is_flag=True,
              help="With no Flower credentials configured: run Flower without any, on 127.0.0.1 only.")
@click.option("--no-migrate", is_flag=True, help="Do not migrate the job store first.")
@_handled
def up(workers: int | None, concurrency: int | None, queues: str | None, loglevel: str, no_beat: bool,
       no_flower: bool, flower_port: int | None, insecure_local: bool, no_migrate: bool) -> None:
    """Run the whole stack in one process tree: worker(s), beat and Flower.

    Each part's output is shown with its name in front. `up` waits until every part answers
    (workers a ping, Flower its health check), prints Flower's URL, restarts a part that exits
    (backing off up to CONVEYOR_UP_RESTART_BACKOFF_MAX seconds), and on Ctrl-C or SIGTERM stops
    everything: beat first, then the workers, which finish their running jobs (up to
    CONVEYOR_UP_SHUTDOWN_TIMEOUT seconds; Ctrl-C again forces), then Flower.

    Flower is never open: it uses CONVEYOR_FLOWER_USER/CONVEYOR_FLOWER_PASSWORD, or, with none
    configured, a password made for this run and printed once.

    \b
    Examples:
      conveyor up                               one worker, beat, Flower on 127.0.0.1:5555
      conveyor up -w 2 -c 4                     two workers of four processes each
      conveyor up --no-beat --flower-port 8080
      CONVEYOR_FLOWER_USER=admin CONVEYOR_FLOWER_PASSWORD=... conveyor up
    """
    from worker.supervisor import run_up

    settings = _settings()
    sys.exit(run_up(settings, workers=workers or settings.up_workers,
                    concurrency=concurrency or settings.worker_concurrency, queues=queues,
                    loglevel=loglevel, beat=not no_beat, flower=not no_flower, flower_port=flower_port,
                    insecure_local=insecure_local, migrate=not no_migrate))


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Port (default: CONVEYOR_FLOWER_PORT, 5555).")
@click.option("--address", default=None,
              help="Address to bind (default: CONVEYOR_FLOWER_ADDRESS, 127.0.0.1).")
@click.option("--url-prefix", default=None, help="Serve under this path, behind a proxy (e.g. flower).")
@click.option("--insecure-local", is_flag=True,
              help="Run without authentication, on the loopback interface only.")
@click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
@_handled
def flower(port: int | None, address: str | None, url_prefix: str | None, insecure_local: bool,
           flower_args: tuple[str, ...]) -> None:
    """Run Flower on Conveyor's app, always behind authentication.

    Settings: CONVEYOR_FLOWER_USER and CONVEYOR_FLOWER_PASSWORD (basic auth), or Flower's
    OAuth (CONVEYOR_FLOWER_AUTH, CONVEYOR_FLOWER_AUTH_PROVIDER, CONVEYOR_FLOWER_OAUTH2_KEY,
    CONVEYOR_FLOWER_OAUTH2_SECRET, CONVEYOR_FLOWER_OAUTH2_REDIRECT_URI). Without any it refuses
    to start, unless given --insecure-local, which binds 127.0.0.1 only. Secrets reach Flower
    through its environment, never its command line. Task history survives a restart
    (CONVEYOR_FLOWER_PERSISTENT, CONVEYOR_FLOWER_DB). Other arguments go to Flower unchanged.
    Prometheus metrics are at /metrics.

    \b
    Examples:
      CONVEYOR_FLOWER_USER=admin CONVEYOR_FLOWER_PASSWORD=... conveyor flower
      conveyor flower --port 8080 --url-prefix flower       behind a proxy at /flower/
      conveyor flower --insecure-local                       a quick look, this machine only
    """
    from worker.flower import describe, flower_command, prepare

    settings = _settings()
    cmd = flower_command(settings, port=port, address=address, url_prefix=url_prefix,
                         insecure_local=insecure_local, extra_args=flower_args)
    prepare(settings, cmd)
    click.secho(describe(cmd), fg="yellow" if cmd.auth == "none" else "green", err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.umask(0o077)  # Flower's state file holds job arguments and results
    os.execve(cmd.argv[0], cmd.argv, cmd.env)  # Flower becomes this process: signals reach it


@click.command()
@click.option("--since", default="1h", show_default=True,
              help="Jobs created since: 30m, 2h, 7d or an ISO time.")
@click.option("--timeout", type=click.FloatRange(0.1, 60), default=1.0, show_default=True,
              help="Seconds to wait for workers to say what they run.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@_handled
def stats(since: str, timeout: float, as_json: bool) -> None:
    """Per-task figures from the job store, queue depths and ages, and what workers run now.

    Per task, for jobs created in the window: how many, by outcome, retries (attempts beyond
    the first), success rate (succeeded of those that ran to an end), runtime p50/p95/max, and
    throughput (jobs that ran to an end per minute). Per queue: messages waiting and how long
    the oldest has waited. Per worker online: the jobs it is running. `conveyor status` is
    the quick health check; this is the deeper look. Exits 3 if Redis or the workers could not
    be asked.

    \b
    Examples:
      conveyor stats                    the last hour
      conveyor stats --since 7d --json
    """
    from cli import EXIT_UNAVAILABLE, parse_since, print_json
    from jobs.client import default_client
    from jobs.db import utcnow
    from jobs.stats import collect
    from tasks.registry import QUEUES

    start = parse_since(since)
    if start is None or start >= utcnow():
        raise click.BadParameter("must be a time in the past", param_hint="--since")
    report = collect(_settings(), default_client().app, start, queues=QUEUES, timeout=timeout)
    if as_json:
        print_json(report.to_dict())
    else:
        _print_report(report)
    if report.errors:
        sys.exit(EXIT_UNAVAILABLE)


def seconds(value: float | None) -> str:
    """0.0042 -> 4.2ms, 75 -> 1m15s: runtimes and ages at a glance."""
    if value is None:
        return ""
    if value < 1:
        return f"{value * 1000:.1f}ms"
    if value < 60:
        return f"{value:.2f}s"
    minutes, secs = divmod(int(value), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _print_report(report: Any) -> None:
    from cli import print_table, when

    def rate(r: float | None) -> str:
        if r is None:
            return ""
        colour = "green" if r >= 0.99 else "yellow" if r >= 0.9 else "red"
        return f"[{colour}]{r:.1%}[/]"

    print_table(
        f"Jobs created {when(report.since)} .. {when(report.until)}",
        ["task", "jobs", "succeeded", "failed", "dead", "revoked", "running", "queued", "retries",
         "success", "p50", "p95", "max", "per min"],
        [(t.task, t.jobs, t.succeeded, t.failed, t.dead, t.revoked, t.running, t.queued, t.retries,
          rate(t.success_rate), seconds(t.runtime_p50), seconds(t.runtime_p95), seconds(t.runtime_max),
          f"{t.throughput:.2f}") for t in report.tasks] or [("no jobs in this window",)],
    )
    if report.queues is not None:
        print_table(f"Queues ({report.unacked} handed to workers, not yet acknowledged)",
                    ["queue", "waiting", "oldest job", "waiting for"],
                    [(q.queue, q.depth, q.oldest_job or "", seconds(q.oldest_age)) for q in report.queues])
    if report.workers is not None:
        rows: list[tuple[str, ...]] = []
        for w in report.workers:
            if not w.running:
                rows.append((w.worker, "idle", "", "", ""))
            for j in w.running:
                rows.append((w.worker, j.task, j.id, seconds(j.running_for), j.progress or ""))
        print_table("Workers online", ["worker", "running", "job", "for", "progress"],
                    rows or [("none online",)])
    for part, error in report.errors.items():
        click.secho(f"{part}: {error}", fg="red", err=True)
