"""`DatabaseScheduler`: Celery beat's scheduler class, reading its schedules from the database.

It plugs into celery.beat's extension points and keeps Celery's heap-driven `tick`:

- `DatabaseEntry` (the scheduler's `Entry`) is one enabled schedule row. `is_due()`
  computes, from the wall clock, the oldest tick not yet handled and how long until the
  following one, so beat sleeps exactly until the next tick (never longer than `max_interval`).
- `setup_schedule()` connects the store, the leader lock and the client.
- `tick()` first takes or renews the leader lock; a standby returns at once and fires
  nothing. The leader then reloads the rows if `schedule_changed()` (one query of the change
  marker every `beat_sync_interval` seconds, a full read only when an edit bumped it), and
  runs Celery's tick over `schedule`. `reserve()` (Celery's) advances the entry past the
  tick it fires.
- `apply_async()` fires a tick: claim (schedule, tick) in the database, then enqueue through
  `jobs.client.Client` with source `schedule:<name>`. A claim another beat won means the
  tick is fired already. A broker or database failure gives the claim back and retries the
  tick with backoff.
- `sync()` writes what beat owes the database (bookkeeping that failed to land), settles
  finished jobs onto their schedules (failure streaks, last success) and prunes old firings.
- `close()` releases the leader lock so a standby takes over at once.

Which ticks fire: every tick at most `schedule_misfire_grace` seconds late fires, in order
(a slow loop or a leader hand-over loses none). Ticks older than that were missed while no
beat ran: with catch-up `once` the latest of them fires once; with `skip` it is recorded as
missed and nothing runs.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from celery import beat
from sqlalchemy.exc import SQLAlchemyError

from jobs.db import utcnow
from jobs.errors import BrokerUnavailable, InvalidInput, StoreUnavailable
from scheduler.lock import LeaderLock
from scheduler.models import CatchupPolicy, Outcome, OverlapPolicy, Schedule
from scheduler.service import source_of, timing_of
from scheduler.store import ScheduleStore
from scheduler.timing import Timing

log = logging.getLogger("conveyor.beat")

#: How long an entry with no future tick (a one-off that fired) sleeps in Celery's heap.
IDLE = 3600.0
PRUNE_EVERY = 3600.0
MAX_RETRY_DELAY = 30.0


@dataclass(frozen=True)
class Spec:
    """What an operator defined: an entry is rebuilt when this changes, kept otherwise."""

    id: int
    name: str
    task: str
    payload: dict[str, Any]
    timing: Timing
    queue: str | None
    priority: int | None
    overlap: str
    catchup: str
    armed_at: datetime

    @classmethod
    def of(cls, row: Schedule) -> Spec:
        return cls(row.id, row.name, row.task, dict(row.payload or {}), timing_of(row), row.queue,
                   row.priority, row.overlap, row.catchup, row.armed_at)


class DatabaseEntry(beat.ScheduleEntry):  # type: ignore[misc]
    """One enabled schedule in beat's heap, with the last tick it handled."""

    def __init__(self, spec: Spec, *, app: Any, last_slot: datetime | None = None, grace: float = 30.0,
                 total_run_count: int = 0, retry_at: float = 0.0, failures: int = 0) -> None:
        options = {k: v for k, v in (("queue", spec.queue), ("priority", spec.priority)) if v is not None}
        super().__init__(name=spec.name, task=spec.task, last_run_at=last_slot,
                         total_run_count=total_run_count, schedule=None, args=(), kwargs=spec.payload,
                         options=options, app=app)
        self.spec = spec
        self.last_slot = last_slot
        self.grace = timedelta(seconds=grace)
        self.retry_at = retry_at
        self.failures = failures
        #: Set by `is_due()`: the tick to fire, and whether it is a missed one (catch-up).
        self.due: datetime | None = None
        self.late = False

    def is_due(self) -> tuple[bool, float]:
        """(fire now?, seconds until the next check), computed from the wall clock."""
        wait = self.retry_at - time.monotonic()
        if wait > 0:
            return False, wait
        now = utcnow()
        timing = self.spec.timing
        after = max(t for t in (self.spec.armed_at, self.last_slot) if t is not None)
        first = timing.next_after(after)
        if first is None:
            return False, IDLE
        if first > now:
            return False, (first - now).total_seconds()
        if now - first <= self.grace:
            self.due, self.late = first, False
        else:
            self.due, self.late = timing.latest_until(now - self.grace) or first, True
        following = timing.next_after(self.due)
        return True, max(0.0, (following - now).total_seconds()) if following else IDLE

    def __next__(self) -> DatabaseEntry:
        """The entry after firing `self.due` (Celery's `reserve()` calls this)."""
        return DatabaseEntry(self.spec, app=self.app, last_slot=self.due or self.last_slot,
                     grace=self.grace.total_seconds(), total_run_count=self.total_run_count + 1)

    next = __next__

    def retrying(self, delay: float) -> DatabaseEntry:
        """This entry again, not advanced, due no sooner than `delay` seconds from now."""
        return DatabaseEntry(self.spec, app=self.app, last_slot=self.last_slot,
                             grace=self.grace.total_seconds(), total_run_count=self.total_run_count,
                             retry_at=time.monotonic() + delay, failures=self.failures + 1)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DatabaseEntry) and self.spec == other.spec

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Entry {self.name}: {self.task} {self.spec.timing.describe()} last={self.last_slot}>"


class DatabaseScheduler(beat.Scheduler):  # type: ignore[misc]
    """Celery beat scheduler over Conveyor's `schedules` table, with a leader lock in Redis."""

    Entry = DatabaseEntry

    def __init__(self, app: Any, *args: Any, max_interval: float | None = None, **kwargs: Any) -> None:
        self.settings = app.conf.conveyor_settings
        self.store = ScheduleStore(self.settings.database_url)
        self.ident = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.sync_every = self.settings.beat_sync_interval
        self._entries: dict[str, DatabaseEntry] = {}
        self._version: int | None = None
        self._next_check = 0.0
        self._reload_needed = True
        self._leading = False
        self._closed = False
        self._next_prune = 0.0
        self._unsaved: list[Callable[[], None]] = []
        self._db_failing = False
        self.lock: LeaderLock | None = None
        self.client: Any = None
        super().__init__(app, *args, max_interval=max_interval or self.settings.beat_max_interval, **kwargs)

    # --- setup and reloading -------------------------------------------------------------------
    def setup_schedule(self) -> None:
        from jobs.client import Client

        s = self.settings
        self.lock = LeaderLock(s.beat_lock_url or s.broker_url, s.beat_lock_key, s.beat_lock_ttl, self.ident,
                               s.redis_sentinel_master)
        self.client = Client(self.app)
        self._refresh(force=True)

    @property
    def schedule(self) -> dict[str, DatabaseEntry]:
        """The entries; reloaded only at the start of a tick (see `tick`), never halfway through."""
        return self._entries

    def schedule_changed(self) -> bool:
        """Did any edit bump the change marker since the last load?"""
        return self.store.version() != self._version

    def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not (force or self._reload_needed or now >= self._next_check):
            return
        self._next_check = now + self.sync_every
        try:
            if force or self._reload_needed or self.schedule_changed():
                self._load()
            self._db_ok()
        except (StoreUnavailable, SQLAlchemyError) as exc:
            self._db_error("cannot read the schedules", exc)

    def _load(self) -> None:
        started = time.perf_counter()
        version = self.store.version()  # before the rows: an edit in between triggers another load
        grace = self.settings.schedule_misfire_grace
        entries: dict[str, DatabaseEntry] = {}
        for row in self.store.enabled():
            try:
                spec = Spec.of(row)
            except InvalidInput as exc:
                log.error("schedule %s is invalid and will not run: %s", row.name, exc)
                continue
            old = self._entries.get(row.name)
            mine = old.last_slot if old is not None and old.spec.id == row.id else None
            last = max((t for t in (row.last_slot, mine) if t is not None), default=None)
            if old is not None and old.spec == spec and old.last_slot == last:
                entries[row.name] = old  # keeps its retry state
            else:
                entries[row.name] = DatabaseEntry(spec, app=self.app, last_slot=last, grace=grace,
                                                  total_run_count=row.run_count)
        self._entries = entries
        self._version = version
        self._reload_needed = False
        self._heap = None  # Celery rebuilds its heap from the new entries on this tick
        log.info("beat %s loaded schedules version %s: %d enabled, in %.1f ms", self.ident, version,
                 len(entries), (time.perf_counter() - started) * 1000)

    # --- the loop --------------------------------------------------------------------------------
    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Fire what is due if this beat leads; a standby only tries to take the lock."""
        assert self.lock is not None
        leading = self.lock.hold()
        if leading and not self._leading:
            self._reload_needed = True  # the previous leader moved ticks on: start from the database
        self._leading = leading
        if not leading:
            return float(self.max_interval)
        self._refresh()
        interval = float(super().tick(*args, **kwargs))
        # wake up in time to renew the lease and to look at the change marker
        return min(interval, self.lock.renew_in(), max(0.01, self._next_check - time.monotonic()))

    @property
    def producer(self) -> None:
        """Unused: jobs are published by `Client.enqueue` (which records them first)."""
        return None

    def apply_entry(self, entry: DatabaseEntry, producer: Any = None) -> None:
        try:
            self.apply_async(entry)
        except Exception:  # noqa: BLE001 - one bad schedule must not stop beat
            log.exception("%s: firing the tick at %s failed", entry.name, entry.due)

    def apply_async(self, entry: DatabaseEntry, producer: Any = None, advance: bool = True,
                    **kwargs: Any) -> Any:
        """Fire `entry.due`: claim the tick, then enqueue its job (or record why not)."""
        spec, slot, late = entry.spec, entry.due, entry.late
        if slot is None or self.lock is None or not self.lock.held:
            return None  # our lease ran out mid-tick: the next leader starts from the database
        after_fire = spec.timing.next_after(max(slot, utcnow()))
        try:
            claim = self.store.claim(spec.id, slot, self.ident,
                                     skip_if_running=spec.overlap == OverlapPolicy.SKIP,
                                     missed=late and spec.catchup == CatchupPolicy.SKIP,
                                     next_run_at=after_fire)
        except (StoreUnavailable, SQLAlchemyError) as exc:
            return self._retry(entry, exc)
        if claim is None:
            log.info("%s: the tick at %s was fired by another beat", spec.name, slot.isoformat())
            return None
        firing_id, outcome = claim
        if outcome is Outcome.MISSED:
            log.warning("%s: missed the tick at %s while no beat ran; catch-up is skip", spec.name, slot)
            return None
        if outcome is Outcome.SKIPPED:
            log.info("%s: skipped the tick at %s, the previous job is still going", spec.name, slot)
            return None
        try:
            job = self.client.enqueue(spec.task, spec.payload, queue=spec.queue, priority=spec.priority,
                                      source=source_of(spec.name))
        except (BrokerUnavailable, StoreUnavailable) as exc:
            self._save(lambda: self.store.release(firing_id))
            return self._retry(entry, exc)
        except InvalidInput as exc:
            reason = str(exc)  # `exc` is unbound after the block; the write may be retried later
            log.error("%s: the job for the tick at %s was refused: %s", spec.name, slot, reason)
            self._save(lambda: self.store.refused(firing_id, spec.id, slot, reason, after_fire))
            return None
        self._save(lambda: self.store.enqueued(firing_id, spec.id, slot, job.id, after_fire))
        log.info("%s: enqueued %s as job %s for the tick at %s%s", spec.name, spec.task, job.id,
                 slot.isoformat(), " (catching up on missed ticks)" if late else "")
        return job

    def _retry(self, entry: DatabaseEntry, exc: Exception) -> None:
        delay = min(MAX_RETRY_DELAY, 0.5 * 2 ** entry.failures)
        log.error("%s: could not fire the tick at %s (%s); trying again in %.1fs",
                  entry.name, entry.due, exc, delay)
        self._entries[entry.name] = entry.retrying(delay)
        self._heap = None
        return None

    def _save(self, write: Callable[[], None]) -> None:
        """Write bookkeeping now, or keep it for `sync()` if the database is unavailable."""
        try:
            write()
        except (StoreUnavailable, SQLAlchemyError) as exc:
            self._db_error("cannot record a firing; will retry", exc)
            self._unsaved.append(write)

    # --- sync and shutdown -------------------------------------------------------------------
    def sync(self) -> None:
        """Write owed bookkeeping; as leader, settle finished jobs and prune old firings."""
        try:
            while self._unsaved:
                self._unsaved[0]()
                self._unsaved.pop(0)
            if self._leading:
                self.store.settle()
                if time.monotonic() >= self._next_prune:
                    cutoff = utcnow() - timedelta(days=self.settings.schedule_history_days)
                    pruned = self.store.prune_firings(cutoff)
                    if pruned:
                        log.info("pruned %d firing records older than %s", pruned, cutoff.date())
                    self._next_prune = time.monotonic() + PRUNE_EVERY
            self._db_ok()
        except (StoreUnavailable, SQLAlchemyError) as exc:
            self._db_error("cannot sync", exc)

    def close(self) -> None:
        """Sync, then give up the leader lock at once (a standby takes over on its next tick)."""
        if self._closed:
            return
        self._closed = True
        try:
            super().close()
        finally:
            if self.lock is not None:
                self.lock.release()
            self._leading = False

    def _db_error(self, what: str, exc: Exception) -> None:
        if not self._db_failing:
            log.error("beat: %s: %s", what, exc)
            self._db_failing = True

    def _db_ok(self) -> None:
        if self._db_failing:
            log.info("beat: the database answers again")
            self._db_failing = False

    @property
    def info(self) -> str:
        from config import mask_url

        s = self.settings
        return (f"    . schedules -> {mask_url(s.database_url)}\n"
                f"    . leader lock -> {mask_url(s.beat_lock_url or s.broker_url)} {s.beat_lock_key} "
                f"(expiry {s.beat_lock_ttl}s)")
