"""Every query over the job store lives here; database errors become `StoreUnavailable`."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import Text, and_, bindparam, case, cast, column, delete, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from config import mask_url
from jobs.db import get_engine, json_dumps, utcnow
from jobs.errors import InvalidTransition, JobNotFound, StoreUnavailable
from jobs.models import (
    FINISHED,
    REVOKED_ORDER,
    AttemptOutcome,
    AttemptReason,
    Job,
    JobAttempt,
    JobStatus,
    state_order,
)

P = ParamSpec("P")
R = TypeVar("R")

# Columns a lifecycle record may carry. Every row of one executemany needs the same keys.
JOB_FIELDS = tuple(c.name for c in Job.__table__.columns if c.name not in ("id", "state_order"))
JOB_FIELDS_BUT_STATUS = tuple(f for f in JOB_FIELDS if f != "status")
ATTEMPT_FIELDS = ("reason", "worker", "pid", "started_at", "finished_at", "outcome", "error")


def _translated(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn a driver's connection failure into `StoreUnavailable` naming the (masked) URL."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (OperationalError, InterfaceError) as exc:
            store = args[0]
            assert isinstance(store, JobStore)
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise StoreUnavailable(
                f"job store {mask_url(store.url)} is unavailable: {reason}"
            ) from exc

    return wrapper


@functools.lru_cache(maxsize=64)
def _insert(table: Any, dialect: str, names: tuple[str, ...]) -> Any:
    """An INSERT of rows that carry the columns `names`, for the dialect's `on_conflict_*`.

    On PostgreSQL the rows are one bound JSON array, turned back into rows by the server
    (`INSERT ... SELECT ... FROM jsonb_to_recordset(:rows) AS rows(c1 t1, ...)`), see
    `_bind_rows`: one statement and one parameter per batch. An executemany sends every row
    through SQLAlchemy's and psycopg's per-value processing and the server executes the
    statement once per row: for a batch of 500 finished jobs (job row and attempt row), client
    CPU 31 -> 10 us a job, server 33 -> 25, measured around `JobStore.apply`. (Arrays per
    column through `unnest()` saved only the server's share: psycopg dumps lists in Python.)"""
    if dialect != "postgresql":
        return sqlite.insert(table)
    rows = func.jsonb_to_recordset(cast(bindparam("rows", type_=Text), postgresql.JSONB))
    derived = rows.table_valued(*[column(n, table.c[n].type) for n in names]).render_derived(
        name="rows", with_types=True)
    return postgresql.insert(table).from_select(names, select(*[derived.c[n] for n in names]))


def _bind_rows(dialect: str, rows: list[dict[str, Any]], key: tuple[str, ...]) -> Iterator[Any]:
    """The parameters of `_insert` statements that write `rows`: the rows themselves (one
    executemany), or on PostgreSQL the JSON array each statement reads them from (datetimes
    as ISO 8601 text with their offset: every datetime Conveyor records is aware, and on the
    other path `UTCDateTime` refuses a naive one). One such statement may not upsert a row
    twice, so rows whose `key` repeats go into a further statement, in order."""
    if dialect != "postgresql":
        yield rows
        return
    while rows:
        seen: set[tuple[Any, ...]] = set()
        first: list[dict[str, Any]] = []
        repeated: list[dict[str, Any]] = []
        for row in rows:
            k = tuple([row[n] for n in key])
            if k in seen:
                repeated.append(row)
            else:
                seen.add(k)
                first.append(row)
        yield {"rows": json_dumps(first)}
        rows = repeated


@functools.lru_cache(maxsize=512)
def _job_upsert(dialect: str, fields: tuple[str, ...]) -> Any:
    """The lifecycle upsert of job rows that carry `fields` (besides `id`, `state_order` and
    `status`), built once per dialect and set of fields: building and cache-keying the CASE
    expressions costs more than the write itself when done per batch.

    A record's fields are only the ones it knows (a start, an end, a progress report): binding
    and updating just those, instead of every column, halves the cost of a write (the bound
    values of all 28 columns went through SQLAlchemy's type processing, and SQLite evaluated
    every CASE). A job record overrides a column only when its `state_order` is at least the
    row's (otherwise it only fills gaps), so batches from different processes commute."""
    stmt = _insert(Job.__table__, dialect, ("id", "state_order", "status", *fields))
    newer = stmt.excluded.state_order >= Job.state_order
    sets: dict[str, Any] = {
        f: case(
            (newer, func.coalesce(getattr(stmt.excluded, f), getattr(Job, f))),
            else_=func.coalesce(getattr(Job, f), getattr(stmt.excluded, f)),
        )
        for f in fields
        if f not in ("idempotency_key", "attempts")
    }
    if "attempts" in fields:  # attempts only grow
        sets["attempts"] = case((stmt.excluded.attempts > Job.attempts, stmt.excluded.attempts),
                                else_=Job.attempts)
    # The status and the order follow the higher-ranked record.
    sets["status"] = case((newer, stmt.excluded.status), else_=Job.status)
    sets["state_order"] = case((newer, stmt.excluded.state_order), else_=Job.state_order)
    return stmt.on_conflict_do_update(index_elements=[Job.id], set_=sets)


@functools.lru_cache(maxsize=128)
def _attempt_upsert(dialect: str, fields: tuple[str, ...]) -> Any:
    """The upsert of attempt rows that carry `fields`: each fills in what it knows."""
    stmt = _insert(JobAttempt.__table__, dialect, ("job_id", "number", *fields))
    keys = [JobAttempt.job_id, JobAttempt.number]
    if not fields:
        return stmt.on_conflict_do_nothing(index_elements=keys)
    sets = {f: func.coalesce(getattr(stmt.excluded, f), getattr(JobAttempt, f)) for f in fields}
    return stmt.on_conflict_do_update(index_elements=keys, set_=sets)


def _by_fields(records: Iterable[dict[str, Any]], names: tuple[str, ...],
               always: tuple[str, ...]) -> dict[tuple[str, ...], list[dict[str, Any]]]:
    """Records grouped by which of `names` they carry (a None is "not known", as in the
    upsert's coalesce), each as a row of `always` and those fields: one executemany each."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for r in records:
        fields = tuple([f for f in names if r.get(f) is not None])  # a list: no generator per record
        row = {f: r.get(f) for f in always}
        for f in fields:
            row[f] = r[f]
        groups.setdefault(fields, []).append(row)
    return groups


class JobStore:
    """The job store of one database URL."""

    def __init__(self, url: str) -> None:
        self.url = url

    @property
    def dialect(self) -> str:
        return get_engine(self.url).dialect.name

    def session(self) -> Session:
        return sessionmaker(get_engine(self.url), expire_on_commit=False)()

    # --- enqueue --------------------------------------------------------------------------
    @_translated
    def create(self, row: dict[str, Any]) -> tuple[dict[str, Any] | Job, bool]:
        """Insert a queued job (one Core INSERT, no ORM round trip) and return `(row, True)`.
        With an idempotency key already taken, return `(that job, False)` instead."""
        try:
            with get_engine(self.url).begin() as conn:
                conn.execute(insert(Job), [{**row, "state_order": 0}])
            return row, True
        except IntegrityError:
            key = row.get("idempotency_key")
            if not key:
                raise
            with self.session() as s:
                existing = s.scalar(select(Job).where(Job.idempotency_key == key))
            if existing is None:  # the holder was deleted in between: try once more
                return self.create(row)
            return existing, False

    def create_in(self, session: Session, row: dict[str, Any]) -> tuple[dict[str, Any] | Job, bool]:
        """Insert a queued job inside the caller's transaction (a savepoint guards the
        idempotency key, so a duplicate does not spoil the caller's transaction)."""
        try:
            with session.begin_nested():
                session.execute(insert(Job).values(**row, state_order=0))
            return row, True
        except IntegrityError:
            key = row.get("idempotency_key")
            existing = session.scalar(select(Job).where(Job.idempotency_key == key)) if key else None
            if existing is None:
                raise
            return existing, False

    # --- delivery ---------------------------------------------------------------------------
    @_translated
    def claim_publish(self, job_id: str) -> bool:
        """Mark the job published; True for exactly one caller, so only one publishes it."""
        with get_engine(self.url).begin() as conn:
            n = conn.execute(update(Job).where(Job.id == job_id, Job.published_at.is_(None))
                             .values(published_at=utcnow())).rowcount
        return n == 1

    @_translated
    def unclaim_publish(self, job_id: str) -> None:
        """The publish failed after the claim: let the relay try again."""
        with get_engine(self.url).begin() as conn:
            conn.execute(update(Job).where(Job.id == job_id).values(published_at=None))

    @_translated
    def due_unpublished(self, grace: float, limit: int = 500) -> list[Job]:
        """Jobs recorded but not published: held ones now due, and transactional ones whose
        commit hook did not publish them within `grace` seconds (the process died)."""
        now = utcnow()
        q = (select(Job).where(Job.published_at.is_(None), Job.status == JobStatus.QUEUED,
                               or_(Job.publish_after <= now,
                                   and_(Job.publish_after.is_(None),
                                        Job.created_at < now - timedelta(seconds=grace))))
             .order_by(Job.publish_after, Job.created_at).limit(limit))
        with self.session() as s:
            return list(s.scalars(q))

    @_translated
    def stale_queued(self, older_than: float, limit: int = 10_000) -> list[Job]:
        """Jobs still queued `older_than` seconds after they were published (and due)."""
        before = utcnow() - timedelta(seconds=older_than)
        q = (select(Job).where(Job.status == JobStatus.QUEUED, Job.published_at < before,
                               or_(Job.eta.is_(None), Job.eta < before))
             .order_by(Job.published_at).limit(limit))
        with self.session() as s:
            return list(s.scalars(q))

    @_translated
    def mark_lost(self, job_id: str, reason: str) -> bool:
        """A queued job whose message is gone and which is not safe to publish again."""
        with get_engine(self.url).begin() as conn:
            n = conn.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.QUEUED)
                             .values(status=JobStatus.LOST, state_order=state_order(JobStatus.LOST, 0),
                                     error_type="Lost", error_message=reason,
                                     finished_at=utcnow())).rowcount
        return n == 1

    @_translated
    def create_many(self, rows: Sequence[dict[str, Any]]) -> None:
        """Insert many queued jobs in one transaction (no idempotency keys): one statement on
        PostgreSQL (`_insert`), one executemany on SQLite."""
        if rows:
            dialect = self.dialect
            rows = [{**r, "state_order": 0} for r in rows]
            stmt = _insert(Job.__table__, dialect, tuple(rows[0]))
            with get_engine(self.url).begin() as conn:
                for params in _bind_rows(dialect, rows, ("id",)):
                    conn.execute(stmt, params)

    @_translated
    def delete(self, job_id: str) -> None:
        """Forget a job that was never published."""
        with self.session() as s:
            s.execute(delete(Job).where(Job.id == job_id))
            s.commit()

    # --- lifecycle records ------------------------------------------------------------------
    @_translated
    def apply(self, jobs: Iterable[dict[str, Any]], attempts: Iterable[dict[str, Any]]) -> None:
        """Upsert a batch of lifecycle records in one transaction.

        A job record overrides a column only when its `state_order` is at least the row's
        (otherwise it only fills gaps), so batches from different processes commute.
        """
        dialect = self.dialect
        job_groups = _by_fields(jobs, JOB_FIELDS_BUT_STATUS, ("id", "state_order", "status"))
        attempt_groups = _by_fields(attempts, ATTEMPT_FIELDS, ("job_id", "number"))
        # Core, not the ORM session. A column a group leaves out takes its default on insert
        # (only status, state_order and attempts have one) and is left alone on update.
        with get_engine(self.url).begin() as conn:
            for fields, rows in job_groups.items():
                for params in _bind_rows(dialect, rows, ("id",)):
                    conn.execute(_job_upsert(dialect, fields), params)
            for fields, rows in attempt_groups.items():
                for params in _bind_rows(dialect, rows, ("job_id", "number")):
                    conn.execute(_attempt_upsert(dialect, fields), params)

    @_translated
    def redelivered(self, job_id: str, attempt: int) -> int:
        """Attempt `attempt` of a job runs because an earlier one's worker was lost: mark the
        unfinished attempts `lost`, and fill in the ones that died before they were written.
        Returns the attempt number to use (never below one already recorded)."""
        with self.session() as s:
            s.execute(update(JobAttempt)
                      .where(JobAttempt.job_id == job_id, JobAttempt.outcome == AttemptOutcome.RUNNING)
                      .values(outcome=AttemptOutcome.LOST, error="worker lost"))
            known = set(s.scalars(select(JobAttempt.number).where(JobAttempt.job_id == job_id)))
            number = max(attempt, max(known, default=0) + 1)
            for n in range(1, number):
                if n not in known:
                    s.add(JobAttempt(job_id=job_id, number=n, outcome=AttemptOutcome.LOST,
                                     reason=AttemptReason.FIRST_RUN if n == 1 else AttemptReason.REDELIVERY,
                                     error="worker lost before this attempt was recorded"))
            s.commit()
            return number

    @_translated
    def close_running_attempts(self, job_id: str, outcome: str, error: str | None) -> None:
        """The worker's main process ended a job its pool child could not (a hard time limit):
        close the attempts still marked running."""
        with get_engine(self.url).begin() as conn:
            conn.execute(update(JobAttempt)
                         .where(JobAttempt.job_id == job_id, JobAttempt.outcome == AttemptOutcome.RUNNING)
                         .values(outcome=outcome, finished_at=utcnow(), error=error))

    # --- reading ----------------------------------------------------------------------------
    @_translated
    def get(self, job_id: str) -> Job:
        with self.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise JobNotFound(f"no job with id {job_id}")
            return job

    @_translated
    def attempts(self, job_id: str) -> list[JobAttempt]:
        with self.session() as s:
            q = select(JobAttempt).where(JobAttempt.job_id == job_id).order_by(JobAttempt.number)
            return list(s.scalars(q))

    @_translated
    def list(
        self,
        *,
        status: Sequence[str] | None = None,
        task: str | None = None,
        since: datetime | None = None,
        limit: int = 50,
    ) -> list[Job]:
        q = select(Job).order_by(Job.created_at.desc(), Job.id).limit(limit)
        if status:
            q = q.where(Job.status.in_(list(status)))
        if task:
            q = q.where(Job.task == task)
        if since:
            q = q.where(Job.created_at >= since)
        with self.session() as s:
            return list(s.scalars(q))

    @_translated
    def count_by_status(self) -> dict[str, int]:
        with self.session() as s:
            rows = s.execute(select(Job.status, func.count()).group_by(Job.status)).tuples()
            return {status: n for status, n in rows}

    # --- cancellation -----------------------------------------------------------------------
    @_translated
    def cancel(self, job_id: str) -> Job:
        """Mark a job revoked, durably; workers drop it before it starts."""
        now = utcnow()
        with self.session() as s:
            job = s.get(Job, job_id, with_for_update=True)
            if job is None:
                raise JobNotFound(f"no job with id {job_id}")
            if JobStatus(job.status) in FINISHED:
                raise InvalidTransition(f"job {job_id} is already {job.status}")
            s.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(status=JobStatus.REVOKED, state_order=REVOKED_ORDER,
                        cancel_requested_at=now, finished_at=now)
            )
            s.commit()
            s.refresh(job)
            return job

    @_translated
    def cancelled_since(self, since: datetime | None) -> tuple[list[str], datetime | None]:
        """Ids of jobs cancelled after `since`, and the newest cancellation time seen."""
        q = select(Job.id, Job.cancel_requested_at).where(Job.cancel_requested_at.is_not(None))
        if since is not None:
            q = q.where(Job.cancel_requested_at > since)
        with self.session() as s:
            rows = list(s.execute(q).tuples())
        newest = max((r[1] for r in rows if r[1] is not None), default=since)
        return [r[0] for r in rows], newest

    # --- housekeeping -----------------------------------------------------------------------
    @_translated
    def prune(self, before: datetime) -> int:
        """Delete finished jobs (and their attempts) created before `before`."""
        with self.session() as s:
            ids = select(Job.id).where(Job.created_at < before, Job.status.in_(list(FINISHED)))
            s.execute(delete(JobAttempt).where(JobAttempt.job_id.in_(ids)))
            n = s.execute(delete(Job).where(Job.id.in_(ids))).rowcount
            s.commit()
            return int(n or 0)

    @_translated
    def ping(self) -> None:
        with get_engine(self.url).connect() as conn:
            conn.exec_driver_sql("SELECT 1")
