"""What operators do with schedules: add, update, remove, enable, disable, run now.

Everything is validated before anything is written: the name, the timing (cron syntax,
interval, a one-off time in the future, the timezone), the task (registered) and the payload
(against the task's input model, through the same `Client.validate` that `enqueue` uses), the
queue and the policies. A refused schedule raises an `InvalidInput` and leaves no trace.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from jobs.db import utcnow
from jobs.errors import BrokerUnavailable, InvalidInput, StoreUnavailable
from scheduler.errors import InvalidSchedule
from scheduler.health import flags
from scheduler.models import CatchupPolicy, OverlapPolicy, Schedule
from scheduler.store import ScheduleStore
from scheduler.timing import Timing, parse_every
from tasks.registry import QUEUES

if TYPE_CHECKING:
    from jobs.client import Client, Job

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$")
TIMING_FIELDS = ("cron", "every", "run_at", "timezone")
UNSET: Any = object()


def timing_of(row: Schedule) -> Timing:
    return Timing(cron=row.cron, every=row.every, at=row.run_at, tz=row.timezone)


def source_of(name: str) -> str:
    """The `source` of every job a schedule enqueues, as recorded in the job store."""
    return f"schedule:{name}"


def next_run(row: Schedule, timing: Timing, now: datetime | None = None) -> datetime | None:
    """When the schedule ticks next, or None (disabled, or a one-off that is past)."""
    if not row.enabled:
        return None
    now = now or utcnow()
    after = max(t for t in (now, row.armed_at, row.last_slot) if t is not None)
    return timing.next_after(after)


@dataclass
class ScheduleView:
    """One schedule as `conveyor schedule list` shows it."""

    name: str
    task: str
    timing: str
    enabled: bool
    payload: dict[str, Any]
    queue: str | None
    priority: int | None
    overlap: str
    catchup: str
    next_run_at: datetime | None
    last_run_at: datetime | None
    last_slot: datetime | None
    last_outcome: str | None
    last_job_id: str | None
    last_job_status: str | None
    last_success_at: datetime | None
    failure_streak: int
    run_count: int
    description: str | None
    flags: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in vars(self).items()}


class Schedules:
    """Schedule use cases on top of a `Client` (for task validation and `run_now`)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.settings = client.settings
        self.store = ScheduleStore(self.settings.database_url)

    # --- validation ----------------------------------------------------------------------------
    def _timing(self, cron: str | None, every: int | str | None, at: datetime | None, tz: str) -> Timing:
        if isinstance(every, str):
            every = parse_every(every)
        if at is not None and at.tzinfo is None:
            from scheduler.timing import zone

            at = at.replace(tzinfo=zone(tz))
        timing = Timing(cron=cron or None, every=every, at=at, tz=tz or "UTC")
        if timing.at is not None and timing.at <= utcnow():
            raise InvalidSchedule(f"the time {timing.at.isoformat()} is in the past")
        return timing

    def _options(self, fields: dict[str, Any]) -> None:
        queue = fields.get("queue")
        if queue is not None and queue not in QUEUES:
            raise InvalidSchedule(f"unknown queue {queue!r}; one of {', '.join(QUEUES)}")
        priority = fields.get("priority")
        if priority is not None and not (isinstance(priority, int) and 0 <= priority <= 9):
            raise InvalidSchedule("priority must be between 0 (first) and 9 (last)")
        for key, enum in (("overlap", OverlapPolicy), ("catchup", CatchupPolicy)):
            if key in fields and fields[key] not in set(enum):
                raise InvalidSchedule(f"{key} must be one of {', '.join(enum)}, not {fields[key]!r}")

    # --- use cases -----------------------------------------------------------------------------
    def add(self, name: str, task: str, *, cron: str | None = None, every: int | str | None = None,
            at: datetime | None = None, payload: dict[str, Any] | None = None, tz: str = "UTC",
            enabled: bool = True, queue: str | None = None, priority: int | None = None,
            overlap: str = OverlapPolicy.ALLOW, catchup: str = CatchupPolicy.ONCE,
            description: str | None = None) -> Schedule:
        """Create a schedule; it first fires at its first tick after now."""
        if not NAME.match(name or ""):
            raise InvalidSchedule(
                f"invalid schedule name {name!r}: letters, digits and . _ : - (up to 200), e.g. nightly-prune"
            )
        timing = self._timing(cron, every, at, tz)
        data = self.client.validate(task, payload or {})
        fields: dict[str, Any] = {
            "name": name, "task": task, "payload": data, "cron": timing.cron, "every": timing.every,
            "run_at": timing.at, "timezone": timing.tz, "enabled": enabled, "queue": queue,
            "priority": priority, "overlap": str(overlap), "catchup": str(catchup),
            "description": description,
        }
        self._options(fields)
        now = utcnow()
        probe = Schedule(**fields, armed_at=now, last_slot=None)
        fields["next_run_at"] = next_run(probe, timing, now)
        return self.store.create(fields)

    def update(self, name: str, *, task: str | None = None, cron: str | None = None,
               every: int | str | None = None, at: datetime | None = None,
               payload: dict[str, Any] | None = None, tz: str | None = None, queue: Any = UNSET,
               priority: Any = UNSET, overlap: str | None = None, catchup: str | None = None,
               description: Any = UNSET) -> Schedule:
        """Change some fields; a new timing counts from now (missed ticks of the old are not caught up)."""
        row = self.store.get(name)
        changes: dict[str, Any] = {}
        retimed = any(v is not None for v in (cron, every, at)) or (tz is not None and tz != row.timezone)
        if retimed:
            if any(v is not None for v in (cron, every, at)):
                timing = self._timing(cron, every, at, tz or row.timezone)
            else:  # only the timezone changes
                timing = Timing(cron=row.cron, every=row.every, at=row.run_at, tz=tz or row.timezone)
            changes |= {"cron": timing.cron, "every": timing.every, "run_at": timing.at,
                        "timezone": timing.tz, "armed_at": utcnow()}
        if task is not None or payload is not None:
            new_task = task or row.task
            new_payload = payload if payload is not None else row.payload
            changes |= {"task": new_task, "payload": self.client.validate(new_task, new_payload)}
        for key, value in (("queue", queue), ("priority", priority), ("description", description)):
            if value is not UNSET:
                changes[key] = value
        for key, value in (("overlap", overlap), ("catchup", catchup)):
            if value is not None:
                changes[key] = str(value)
        self._options(changes)
        if not changes:
            raise InvalidInput("nothing to change: give at least one option (see --help)")
        return self._save(row, changes)

    def _save(self, row: Schedule, changes: dict[str, Any]) -> Schedule:
        probe = Schedule(**{c.key: getattr(row, c.key) for c in Schedule.__table__.columns})
        for key, value in changes.items():
            setattr(probe, key, value)
        changes["next_run_at"] = next_run(probe, timing_of(probe))
        return self.store.update(row.name, changes)

    def remove(self, name: str) -> None:
        self.store.delete(name)

    def enable(self, name: str) -> Schedule:
        """Turn a schedule on; it fires from its next tick (the time it was off is not caught up)."""
        row = self.store.get(name)
        if row.run_at is not None and (row.run_at <= utcnow() or row.last_slot is not None):
            raise InvalidSchedule(
                f"{name} ran or was due at {row.run_at.isoformat()}; give it a new time with "
                f"`conveyor schedule update {name} --at ...`"
            )
        return self._save(row, {"enabled": True, "armed_at": utcnow()})

    def disable(self, name: str) -> Schedule:
        row = self.store.get(name)
        return self._save(row, {"enabled": False})

    def run_now(self, name: str) -> Job:
        """Enqueue the schedule's job at once (whatever its timing, enabled or not)."""
        row = self.store.get(name)
        firing_id = self.store.manual(row.id, f"manual:{socket.gethostname()}:{os.getpid()}")
        try:
            job = self.client.enqueue(row.task, row.payload, queue=row.queue, priority=row.priority,
                                      source=source_of(name))
        except (InvalidInput, BrokerUnavailable, StoreUnavailable):
            self.store.release(firing_id)
            raise
        self.store.enqueued(firing_id, row.id, None, job.id, None)
        return job

    def get(self, name: str) -> Schedule:
        return self.store.get(name)

    def view(self, row: Schedule, job_status: str | None, now: datetime | None = None) -> ScheduleView:
        from tasks.registry import REGISTRY

        spec = REGISTRY.get(row.task)
        timing = timing_of(row)
        return ScheduleView(
            name=row.name, task=row.task, timing=timing.describe(), enabled=row.enabled,
            payload=spec.redact(row.payload) if spec else row.payload, queue=row.queue,
            priority=row.priority, overlap=row.overlap, catchup=row.catchup,
            next_run_at=next_run(row, timing, now), last_run_at=row.last_run_at, last_slot=row.last_slot,
            last_outcome=row.last_outcome, last_job_id=row.last_job_id, last_job_status=job_status,
            last_success_at=row.last_success_at, failure_streak=row.failure_streak, run_count=row.run_count,
            description=row.description, flags=flags(row, timing, job_status, self.settings, now),
        )

    def list(self) -> list[ScheduleView]:
        now = utcnow()
        return [self.view(row, status, now) for row, status in self.store.overview()]

    def show(self, name: str) -> ScheduleView:
        found = self.store.overview(name)
        if not found:
            self.store.get(name)  # raises ScheduleNotFound
        row, status = found[0]
        return self.view(row, status)
