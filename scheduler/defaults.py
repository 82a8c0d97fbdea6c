"""The schedules that ship with Conveyor, created by `conveyor schedule seed`.

All are disabled until an operator enables them, except the release of due mail, which is
useless off, and the recovery of jobs whose message Redis lost, the safety net behind "no job
lost" (docs/reliability.md). Seeding is idempotent: an existing schedule of the same name is
left as it is (an operator may have changed it). A default whose task is not registered in this
installation, or whose payload its task refuses, is skipped with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jobs.errors import InvalidInput
from scheduler.errors import ScheduleExists
from scheduler.models import CatchupPolicy, OverlapPolicy

if TYPE_CHECKING:
    from config import Settings
    from scheduler.service import Schedules
    from tasks.registry import TaskSpec

Payload = Callable[["TaskSpec", "Settings"], "dict[str, Any] | None"]


def empty(spec: TaskSpec, settings: Settings) -> dict[str, Any]:
    return {}


def example(spec: TaskSpec, settings: Settings) -> dict[str, Any] | None:
    """The family's own example payload (the one `make demo` runs on the sample data)."""
    return dict(spec.example) if spec.example is not None else None


def mailed_report(spec: TaskSpec, settings: Settings) -> dict[str, Any] | None:
    """The analysis family's example report, mailed (with its chart) to CONVEYOR_SCHEDULE_REPORT_EMAIL."""
    payload = example(spec, settings)
    if payload is None:
        return None
    return {**payload, "email": [settings.schedule_report_email]}


@dataclass(frozen=True)
class Default:
    name: str
    task: str
    description: str
    cron: str | None = None
    every: str | None = None
    payload: Payload = empty
    enabled: bool = False
    overlap: str = OverlapPolicy.SKIP
    catchup: str = CatchupPolicy.ONCE
    tz: str = "UTC"


DEFAULTS: tuple[Default, ...] = (
    Default("prune-jobs", "maintenance.prune_jobs", cron="30 3 * * *",
            description="nightly: delete finished job records older than CONVEYOR_JOB_RETENTION_DAYS"),
    Default("recover-lost", "maintenance.recover_lost", every="5m", enabled=True, catchup=CatchupPolicy.SKIP,
            description="every 5 min: publish again (or mark lost) jobs queued CONVEYOR_LOST_AFTER seconds "
                        "whose message left Redis"),
    Default("release-due-mail", "email.release_due", every="30s", enabled=True, catchup=CatchupPolicy.SKIP,
            description="every 30 s: send the mail whose send time has come"),
    Default("nightly-reconciliation", "reconciliation.reconcile", cron="0 2 * * *", payload=example,
            description="nightly: reconcile the sample ledger against the sample statements"),
    Default("daily-analysis-report", "analysis.report", cron="0 7 * * *", payload=mailed_report,
            description="daily: the analysis report of the sample data, mailed with its chart"),
)


@dataclass(frozen=True)
class SeedResult:
    name: str
    task: str
    action: str  # created | exists | skipped
    message: str


def seed(schedules: Schedules, defaults: tuple[Default, ...] = DEFAULTS) -> list[SeedResult]:
    """Create the default schedules that are missing; say what happened to each."""
    from tasks.registry import REGISTRY

    existing = schedules.store.names()
    app_tasks = schedules.client.app.tasks
    out = []
    for d in defaults:
        if d.name in existing:
            out.append(SeedResult(d.name, d.task, "exists", "left as it is"))
            continue
        spec = REGISTRY.get(d.task)
        if spec is None or d.task not in app_tasks:
            out.append(SeedResult(d.name, d.task, "skipped", f"task {d.task} is not registered here"))
            continue
        payload = d.payload(spec, schedules.settings)
        if payload is None:
            out.append(SeedResult(d.name, d.task, "skipped", f"{d.task} has no example payload to schedule"))
            continue
        try:
            schedules.add(d.name, d.task, cron=d.cron, every=d.every, payload=payload, tz=d.tz,
                          enabled=d.enabled, overlap=d.overlap, catchup=d.catchup, description=d.description)
        except ScheduleExists:  # seeded at the same moment elsewhere
            out.append(SeedResult(d.name, d.task, "exists", "left as it is"))
            continue
        except InvalidInput as exc:
            out.append(SeedResult(d.name, d.task, "skipped", f"refused: {exc}"))
            continue
        state = "enabled" if d.enabled else "disabled until you run: conveyor schedule enable " + d.name
        out.append(SeedResult(d.name, d.task, "created", state))
    return out
