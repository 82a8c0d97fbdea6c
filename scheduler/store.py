"""Every query over the schedule tables; database errors become `StoreUnavailable`.

Two kinds of writes, kept apart on purpose:
- edits (create, update, delete) bump the change marker in the same transaction, so a beat
  that reads the marker either sees the old version and the old rows, or the new version;
- beat's bookkeeping (claims, last tick, last job, run count) never bumps it: beat wrote it,
  so beat has nothing to reload.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import delete, insert, literal, or_, select, update
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from config import mask_url
from jobs.db import get_engine, utcnow
from jobs.errors import StoreUnavailable
from jobs.models import FINISHED, Job
from scheduler.errors import ScheduleExists, ScheduleNotFound
from scheduler.models import FAILED_OUTCOMES, Outcome, Schedule, ScheduleChanges, ScheduleFiring

P = ParamSpec("P")
R = TypeVar("R")
MARKER_ID = 1


def _translated(fn: Callable[P, R]) -> Callable[P, R]:
    """A driver's connection failure becomes `StoreUnavailable` naming the (masked) URL."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (OperationalError, InterfaceError) as exc:
            store = args[0]
            assert isinstance(store, ScheduleStore)
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            if "no such table" in reason or "does not exist" in reason:
                reason += " (run: conveyor db upgrade)"
            raise StoreUnavailable(f"schedule store {mask_url(store.url)} is unavailable: {reason}") from exc

    return wrapper


def _later(column: Any, value: datetime) -> Any:
    """`column` moved forward to `value`, never back (SQL CASE)."""
    from sqlalchemy import case

    v = literal(value, type_=column.type)
    return case((or_(column.is_(None), column < v), v), else_=column)


class ScheduleStore:
    """The schedule tables of one database URL."""

    def __init__(self, url: str) -> None:
        self.url = url

    def session(self) -> Session:
        return sessionmaker(get_engine(self.url), expire_on_commit=False)()

    # --- the change marker ---------------------------------------------------------------------
    @staticmethod
    def _bump(s: Session) -> None:
        """Bump the marker inside the caller's transaction (the row is made if missing)."""
        done = s.execute(
            update(ScheduleChanges).where(ScheduleChanges.id == MARKER_ID)
            .values(version=ScheduleChanges.version + 1, changed_at=utcnow())
        ).rowcount  # type: ignore[attr-defined]
        if not done:
            s.execute(insert(ScheduleChanges).values(id=MARKER_ID, version=1, changed_at=utcnow()))

    @_translated
    def version(self) -> int:
        """The marker: it changes whenever any schedule was created, edited or removed."""
        with self.session() as s:
            return s.scalar(select(ScheduleChanges.version).where(ScheduleChanges.id == MARKER_ID)) or 0

    # --- edits ------------------------------------------------------------------------------------
    @_translated
    def create(self, fields: dict[str, Any]) -> Schedule:
        now = utcnow()
        row = Schedule(**{"armed_at": now, "created_at": now, "updated_at": now, "payload": {}, **fields})
        with self.session() as s:
            s.add(row)
            try:
                s.flush()
            except IntegrityError:
                s.rollback()
                raise ScheduleExists(f"a schedule named {fields['name']!r} exists already") from None
            self._bump(s)
            s.commit()
            return row

    @_translated
    def update(self, name: str, fields: dict[str, Any]) -> Schedule:
        with self.session() as s:
            row = s.scalar(select(Schedule).where(Schedule.name == name).with_for_update())
            if row is None:
                raise ScheduleNotFound(f"no schedule named {name!r}")
            for key, value in {**fields, "updated_at": utcnow()}.items():
                setattr(row, key, value)
            self._bump(s)
            s.commit()
            return row

    @_translated
    def delete(self, name: str) -> None:
        with self.session() as s:
            row = s.scalar(select(Schedule).where(Schedule.name == name))
            if row is None:
                raise ScheduleNotFound(f"no schedule named {name!r}")
            # Firings go with it (ON DELETE CASCADE, spelled out for engines that ignore it).
            s.execute(delete(ScheduleFiring).where(ScheduleFiring.schedule_id == row.id))
            s.delete(row)
            self._bump(s)
            s.commit()

    # --- reading -----------------------------------------------------------------------------------
    @_translated
    def get(self, name: str) -> Schedule:
        with self.session() as s:
            row = s.scalar(select(Schedule).where(Schedule.name == name))
            if row is None:
                raise ScheduleNotFound(f"no schedule named {name!r}")
            return row

    @_translated
    def names(self) -> set[str]:
        with self.session() as s:
            return set(s.scalars(select(Schedule.name)))

    @_translated
    def overview(self, name: str | None = None) -> list[tuple[Schedule, str | None]]:
        """Schedules (all, or the one named) with the status of their last job (None if none or pruned)."""
        q = (select(Schedule, Job.status).outerjoin(Job, Job.id == Schedule.last_job_id)
             .order_by(Schedule.name))
        if name is not None:
            q = q.where(Schedule.name == name)
        with self.session() as s:
            return [(row, status) for row, status in s.execute(q).tuples()]

    @_translated
    def firings(self, name: str, limit: int = 20) -> list[tuple[ScheduleFiring, str | None]]:
        """The schedule's latest firings, newest first, with their jobs' current status."""
        row = self.get(name)
        q = (select(ScheduleFiring, Job.status).outerjoin(Job, Job.id == ScheduleFiring.job_id)
             .where(ScheduleFiring.schedule_id == row.id)
             .order_by(ScheduleFiring.fired_at.desc()).limit(limit))
        with self.session() as s:
            return [(f, status) for f, status in s.execute(q).tuples()]

    @_translated
    def enabled(self) -> list[Schedule]:
        """What beat runs."""
        with self.session() as s:
            return list(s.scalars(select(Schedule).where(Schedule.enabled.is_(True))))

    # --- beat's bookkeeping (no marker bump) ----------------------------------------------------------
    @_translated
    def claim(self, schedule_id: int, slot: datetime, fired_by: str, *, skip_if_running: bool,
              missed: bool = False, next_run_at: datetime | None = None) -> tuple[int, Outcome] | None:
        """Take the tick `slot` of a schedule; None if another beat took it first.

        In the same transaction: a tick that beat missed is recorded as such, and with the
        `skip` overlap policy a tick whose previous job is still queued or running is recorded
        as skipped. Otherwise the tick is `claimed` and the caller enqueues its job.
        """
        now = utcnow()
        with self.session() as s:
            try:
                firing_id = s.execute(
                    insert(ScheduleFiring).values(schedule_id=schedule_id, slot=slot, fired_at=now,
                                                  fired_by=fired_by, outcome=Outcome.CLAIMED)
                    .returning(ScheduleFiring.id)
                ).scalar_one()
                s.flush()
            except IntegrityError:
                s.rollback()
                return None
            outcome = Outcome.MISSED if missed else Outcome.CLAIMED
            if not missed and skip_if_running:
                status = s.scalar(select(Job.status).join(Schedule, Schedule.last_job_id == Job.id)
                                  .where(Schedule.id == schedule_id))
                if status is not None and status not in FINISHED:
                    outcome = Outcome.SKIPPED
            if outcome is not Outcome.CLAIMED:
                s.execute(update(ScheduleFiring).where(ScheduleFiring.id == firing_id)
                          .values(outcome=outcome))
                s.execute(update(Schedule).where(Schedule.id == schedule_id).values(
                    last_slot=_later(Schedule.last_slot, slot), last_outcome=outcome,
                    next_run_at=next_run_at))
            s.commit()
            return firing_id, outcome

    @_translated
    def enqueued(self, firing_id: int, schedule_id: int, slot: datetime | None, job_id: str,
                 next_run_at: datetime | None) -> None:
        """The claimed tick's job is enqueued: note it on the firing and the schedule."""
        values: dict[str, Any] = {"last_outcome": Outcome.ENQUEUED, "last_error": None,
                                  "last_run_at": utcnow(), "last_job_id": job_id,
                                  "run_count": Schedule.run_count + 1}
        if slot is not None:  # a manual run is not a tick
            values |= {"last_slot": _later(Schedule.last_slot, slot), "next_run_at": next_run_at}
        with self.session() as s:
            s.execute(update(ScheduleFiring).where(ScheduleFiring.id == firing_id)
                      .values(outcome=Outcome.ENQUEUED, job_id=job_id))
            s.execute(update(Schedule).where(Schedule.id == schedule_id).values(**values))
            s.commit()

    @_translated
    def refused(self, firing_id: int, schedule_id: int, slot: datetime, error: str,
                next_run_at: datetime | None) -> None:
        """The claimed tick's job was refused (task gone, payload no longer valid)."""
        with self.session() as s:
            s.execute(update(ScheduleFiring).where(ScheduleFiring.id == firing_id)
                      .values(outcome=Outcome.ERROR, error=error))
            s.execute(update(Schedule).where(Schedule.id == schedule_id).values(
                last_slot=_later(Schedule.last_slot, slot), last_outcome=Outcome.ERROR, last_error=error,
                failure_streak=Schedule.failure_streak + 1, next_run_at=next_run_at))
            s.commit()

    @_translated
    def release(self, firing_id: int) -> None:
        """Give a claimed tick back (its job could not be published), so it is tried again."""
        with self.session() as s:
            s.execute(delete(ScheduleFiring).where(ScheduleFiring.id == firing_id,
                                                   ScheduleFiring.outcome == Outcome.CLAIMED))
            s.commit()

    @_translated
    def manual(self, schedule_id: int, fired_by: str) -> int:
        """A firing row for `run-now` (its slot is the moment it was asked for)."""
        now = utcnow()
        with self.session() as s:
            firing_id = s.execute(
                insert(ScheduleFiring).values(schedule_id=schedule_id, slot=now, fired_at=now,
                                              fired_by=fired_by, outcome=Outcome.CLAIMED)
                .returning(ScheduleFiring.id)
            ).scalar_one()
            s.commit()
            return int(firing_id)

    @_translated
    def settle(self, limit: int = 1000) -> int:
        """Copy the final status of finished jobs onto their firings and schedules.

        Keeps `last_success_at` and `failure_streak` (failed runs in a row) current, which is
        how `conveyor schedule list` flags a schedule that keeps failing. Returns firings settled.
        """
        q = (select(ScheduleFiring.id, ScheduleFiring.schedule_id, Job.status, Job.finished_at)
             .join(Job, Job.id == ScheduleFiring.job_id)
             .where(ScheduleFiring.outcome == Outcome.ENQUEUED, Job.status.in_(list(FINISHED)))
             .order_by(ScheduleFiring.slot).limit(limit))
        with self.session() as s:
            rows = list(s.execute(q).tuples())
            if not rows:
                return 0
            ids = {r[1] for r in rows}
            state = {sid: (streak, last) for sid, streak, last in s.execute(
                select(Schedule.id, Schedule.failure_streak, Schedule.last_success_at)
                .where(Schedule.id.in_(ids))).tuples()}
            for _fid, sid, status, finished in rows:
                if sid not in state:
                    continue
                streak, last = state[sid]
                if status == Outcome.SUCCEEDED:
                    streak, last = 0, max(filter(None, (last, finished)), default=None)
                elif status in FAILED_OUTCOMES:
                    streak += 1
                state[sid] = (streak, last)
            for fid, _sid, status, finished in rows:
                s.execute(update(ScheduleFiring).where(ScheduleFiring.id == fid)
                          .values(outcome=status, finished_at=finished))
            for sid, (streak, last) in state.items():
                s.execute(update(Schedule).where(Schedule.id == sid)
                          .values(failure_streak=streak, last_success_at=last))
            s.commit()
            return len(rows)

    @_translated
    def prune_firings(self, before: datetime) -> int:
        """Forget firings older than `before` (the schedules keep their counters)."""
        with self.session() as s:
            n = s.execute(delete(ScheduleFiring).where(ScheduleFiring.fired_at < before)).rowcount  # type: ignore[attr-defined]
            s.commit()
            return int(n or 0)

    # --- for tests and the benchmark -------------------------------------------------------------------
    @_translated
    def create_many(self, rows: Iterable[dict[str, Any]]) -> None:
        """Insert many (already validated) schedules in one transaction, one marker bump."""
        now = utcnow()
        with self.session() as s:
            s.execute(insert(Schedule), [{"armed_at": now, "created_at": now, "updated_at": now,
                                          "payload": {}, "enabled": True, "overlap": "allow",
                                          "catchup": "once", "timezone": "UTC", "failure_streak": 0,
                                          "run_count": 0, **r} for r in rows])
            self._bump(s)
            s.commit()
