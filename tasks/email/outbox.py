"""Every query over the outbox and the campaigns table; database errors become `StoreUnavailable`.

State changes are compare-and-set updates (`UPDATE ... WHERE status = <what I saw>`), so two
jobs that read the same row cannot both claim it, on SQLite (one writer at a time) as on
PostgreSQL (the second UPDATE re-checks its WHERE once the first commits). Updates made while
sending also name the claiming job, so a job that lost its claim cannot overwrite the row.

A send runs three short transactions (create or claim, handover, sent) and at most one read.
Those statements are built once, at import, as Core statements with bound parameters: an ORM
`update(Model).values(...)` built per call costs SQLAlchemy more CPU (coercions, cache key)
than SQLite takes to run it. Operator and campaign queries keep the plain ORM style.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import Engine, Row, Table, bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker, undefer

from config import mask_url
from jobs.db import get_engine, utcnow
from jobs.errors import StoreUnavailable
from tasks.email.errors import MessageNotFound, OutboxError
from tasks.email.models import Campaign, OutboxMessage, OutboxStatus

P = ParamSpec("P")
R = TypeVar("R")
S = OutboxStatus


def _translated(fn: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (OperationalError, InterfaceError) as exc:
            url = getattr(args[0], "url", "")
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise StoreUnavailable(f"outbox {mask_url(url)} is unavailable: {reason}") from exc

    return wrapper


_T: Table = OutboxMessage.__table__  # type: ignore[assignment]  # a Table, typed as FromClause
#: Every column but the two deferred ones (`raw` and `payload` can be large).
_LIGHT = [c for c in _T.c if c.key not in ("raw", "payload")]
#: Insert a row unless its key exists (then no row comes back and no error is raised, nor
#: logged by PostgreSQL: a retry or a duplicate is routine, not an error).
_CREATE = {name: insert_of(_T).on_conflict_do_nothing(index_elements=["key"]).returning(_T.c.id)
           for name, insert_of in (("postgresql", postgresql.insert), ("sqlite", sqlite.insert))}
_FIND = select(*_LIGHT).where(_T.c.key == bindparam("b_key"))
_GET = select(*_LIGHT).where(_T.c.id == bindparam("b_id"))
_GET_RAW = select(*_T.c).where(_T.c.id == bindparam("b_id"))
#: An update of a row this job holds; the SET clause comes from the execution's parameters.
_MINE = update(_T).where(_T.c.id == bindparam("b_id"), _T.c.job_id == bindparam("b_job"),
                         _T.c.status == S.SENDING)


def _claim_statement(sending: bool) -> Any:
    """Take a row that is still as it was read; a `sending` row also by its holder and claim
    time. Returns the claimed row, message included (SQLite 3.35+ and PostgreSQL have
    UPDATE ... RETURNING; the scheduler's store relies on INSERT ... RETURNING already)."""
    where = [_T.c.id == bindparam("b_id"), _T.c.status == bindparam("b_status")]
    if sending:
        where += [_T.c.job_id == bindparam("b_job"), _T.c.claimed_at == bindparam("b_claimed")]
    return update(_T).where(*where).values(
        status=S.SENDING, job_id=bindparam("v_job", type_=_T.c.job_id.type),
        claimed_at=bindparam("v_now", type_=_T.c.claimed_at.type), data_at=None,
        attempts=_T.c.attempts + 1, updated_at=bindparam("v_updated", type_=_T.c.updated_at.type),
    ).returning(*_T.c)


_CLAIM = {sending: _claim_statement(sending) for sending in (False, True)}


def _message(row: Row[Any] | None) -> OutboxMessage | None:
    """A detached `OutboxMessage` from a Core row (columns not selected read as None)."""
    return None if row is None else OutboxMessage(**row._mapping)


@functools.lru_cache(maxsize=16)
def _sessions(engine: Engine) -> sessionmaker[Session]:
    """One session factory per engine (making one costs more than a query)."""
    return sessionmaker(engine, expire_on_commit=False)


class Outbox:
    """The outbox of one database URL."""

    def __init__(self, url: str) -> None:
        self.url = url

    def session(self) -> Session:
        return _sessions(get_engine(self.url))()

    def _insert(self) -> Any:
        return postgresql.insert if get_engine(self.url).dialect.name == "postgresql" else sqlite.insert

    def _set(self, where: Sequence[Any], **values: Any) -> bool:
        """One compare-and-set update; True if it changed the row (Core: this is the hot path)."""
        with get_engine(self.url).begin() as conn:
            stmt = update(OutboxMessage).where(*where).values(**values, updated_at=utcnow())
            n = conn.execute(stmt).rowcount
            return bool(n)

    def _mine(self, message_id: int, job_id: str, **values: Any) -> bool:
        """Update a row `job_id` holds (status `sending`); False if it holds it no longer."""
        params = {"b_id": message_id, "b_job": job_id, "updated_at": utcnow(), **values}
        with get_engine(self.url).begin() as conn:
            return bool(conn.execute(_MINE, params).rowcount)

    # --- reading --------------------------------------------------------------------------
    @_translated
    def find(self, key: str) -> OutboxMessage | None:
        """The row of `key`, without the message itself (`raw` and `payload` read as None)."""
        with get_engine(self.url).connect() as conn:
            return _message(conn.execute(_FIND, {"b_key": key}).first())

    @_translated
    def get(self, message_id: int, *, raw: bool = False) -> OutboxMessage:
        """Row `message_id`; with `raw`, the message and the payload too (else they read None)."""
        with get_engine(self.url).connect() as conn:
            row = _message(conn.execute(_GET_RAW if raw else _GET, {"b_id": message_id}).first())
        if row is None:
            raise MessageNotFound(f"no outbox message {message_id}")
        return row

    def lookup(self, ref: str, *, raw: bool = False) -> OutboxMessage:
        """A message by its id, its key or its Message-ID (what an operator has at hand)."""
        if ref.isdigit():
            try:
                return self.get(int(ref), raw=raw)
            except MessageNotFound:
                pass
        with self.session() as s:
            q = select(OutboxMessage).where(
                (OutboxMessage.key == ref) | (OutboxMessage.message_id == ref)
                | (OutboxMessage.message_id == f"<{ref.strip('<>')}>"))
            if raw:
                q = q.options(undefer(OutboxMessage.raw), undefer(OutboxMessage.payload))
            row = s.scalar(q)
        if row is None:
            raise MessageNotFound(f"no outbox message with id, key or Message-ID {ref!r}")
        return row

    @_translated
    def messages(self, *, status: Sequence[str] | None = None, campaign: str | None = None,
             since: datetime | None = None, limit: int = 50) -> list[OutboxMessage]:
        q = select(OutboxMessage).order_by(OutboxMessage.id.desc()).limit(limit)
        if status:
            q = q.where(OutboxMessage.status.in_(list(status)))
        if campaign:
            q = q.where(OutboxMessage.campaign == campaign)
        if since:
            q = q.where(OutboxMessage.created_at >= since)
        with self.session() as s:
            return list(s.scalars(q))

    @_translated
    def count_by_status(self) -> dict[str, int]:
        with self.session() as s:
            q = select(OutboxMessage.status, func.count()).group_by(OutboxMessage.status)
            return {k: v for k, v in s.execute(q).tuples()}

    # --- a job's claim ----------------------------------------------------------------------
    @_translated
    def create(self, values: dict[str, Any]) -> OutboxMessage | None:
        """Insert a row; None if its key exists already (then read and decide again)."""
        now = utcnow()
        values = {"created_at": now, "updated_at": now, "attempts": 0, **values}
        engine = get_engine(self.url)
        try:
            with engine.begin() as conn:
                pk = conn.execute(_CREATE[engine.dialect.name], values).scalar()
        except IntegrityError:  # another unique column (a Message-ID given twice)
            return None
        return None if pk is None else OutboxMessage(id=pk, **values)

    @_translated
    def claim(self, row: OutboxMessage, job_id: str) -> OutboxMessage | None:
        """Take the row for `job_id` if it is still as it was read: the row as claimed, with
        the message (`raw`) and payload, or None if another job changed it first."""
        sending = row.status == S.SENDING
        now = utcnow()
        params = {"b_id": row.id, "b_status": row.status, "v_job": job_id, "v_now": now, "v_updated": now}
        if sending:
            params.update(b_job=row.job_id, b_claimed=row.claimed_at)
        with get_engine(self.url).begin() as conn:
            return _message(conn.execute(_CLAIM[sending], params).first())

    @_translated
    def handover(self, message_id: int, job_id: str, **values: Any) -> bool:
        """The server said 354: from now on a lost connection means the message may be out."""
        return self._mine(message_id, job_id, data_at=utcnow(), **values)

    @_translated
    def mark_sent(self, message_id: int, job_id: str, response: str,
                  refused: dict[str, str] | None, sent_at: datetime) -> bool:
        return self._mine(message_id, job_id, status=S.SENT, sent_at=sent_at, last_response=response,
                          refused=refused or None)

    @_translated
    def requeue(self, message_id: int, job_id: str, response: str) -> bool:
        """A transient failure before the data was handed over: the job's retry sends it."""
        return self._mine(message_id, job_id, status=S.QUEUED, data_at=None, last_response=response)

    @_translated
    def mark_failed(self, message_id: int, job_id: str, response: str,
                    refused: dict[str, str] | None = None) -> bool:
        return self._mine(message_id, job_id, status=S.FAILED, last_response=response,
                          refused=refused or None)

    @_translated
    def mark_unknown(self, message_id: int, job_id: str, response: str) -> bool:
        return self._mine(message_id, job_id, status=S.UNKNOWN, last_response=response)

    @_translated
    def store_rendered(self, message_id: int, job_id: str, **values: Any) -> bool:
        return self._mine(message_id, job_id, **values)

    # --- scheduled messages ---------------------------------------------------------------
    @_translated
    def due(self, now: datetime, stale_before: datetime, limit: int) -> list[OutboxMessage]:
        """Scheduled messages whose time has come, not released lately."""
        q = (select(OutboxMessage)
             .where(OutboxMessage.status == S.SCHEDULED, OutboxMessage.send_at <= now,
                    (OutboxMessage.released_at.is_(None)) | (OutboxMessage.released_at < stale_before))
             .order_by(OutboxMessage.send_at, OutboxMessage.id).limit(limit))
        with self.session() as s:
            return list(s.scalars(q))

    @_translated
    def mark_released(self, row: OutboxMessage) -> bool:
        where = [OutboxMessage.id == row.id, OutboxMessage.status == S.SCHEDULED]
        where.append(OutboxMessage.released_at.is_(None) if row.released_at is None
                     else OutboxMessage.released_at == row.released_at)
        return self._set(where, released_at=utcnow())

    # --- operators --------------------------------------------------------------------------
    @_translated
    def reopen(self, message_id: int, allowed: Iterable[str]) -> OutboxMessage:
        """Put an unknown or failed message back in the queue for a resend."""
        row = self.get(message_id, raw=True)
        allowed = set(allowed)
        if row.status not in allowed:
            raise OutboxError(f"message {message_id} is {row.status}; only {', '.join(sorted(allowed))} "
                              "messages can be resent")
        if row.raw is None:
            raise OutboxError(f"message {message_id} was never rendered; send it again with email.send")
        if not self._set([OutboxMessage.id == message_id, OutboxMessage.status == row.status],
                         status=S.QUEUED, data_at=None, job_id=None):
            raise OutboxError(f"message {message_id} changed meanwhile; look again")
        return self.get(message_id)

    @_translated
    def resolve(self, message_id: int, status: OutboxStatus, note: str) -> OutboxMessage:
        """An operator settles an unknown message: it was delivered (`sent`) or not (`failed`)."""
        row = self.get(message_id)
        if row.status != S.UNKNOWN:
            raise OutboxError(f"message {message_id} is {row.status}; only unknown ones are settled by hand")
        values: dict[str, Any] = {"status": status, "last_response": f"{note} (was: {row.last_response})"}
        if status == S.SENT:
            values["sent_at"] = utcnow()
        if not self._set([OutboxMessage.id == message_id, OutboxMessage.status == S.UNKNOWN], **values):
            raise OutboxError(f"message {message_id} changed meanwhile; look again")
        return self.get(message_id)

    # --- campaigns --------------------------------------------------------------------------
    @_translated
    def insert_planned(self, rows: Sequence[dict[str, Any]]) -> None:
        """Insert campaign rows; rows whose key exists are left alone (see `take_over`)."""
        if not rows:
            return
        now = utcnow()
        ins = self._insert()
        values = [{"created_at": now, "updated_at": now, "attempts": 0, "status": S.QUEUED, **r}
                  for r in rows]
        with get_engine(self.url).begin() as conn:
            conn.execute(ins(OutboxMessage).on_conflict_do_nothing(index_elements=["key"]), values)

    @_translated
    def states(self, keys: Sequence[str]) -> dict[str, tuple[str, str | None]]:
        """key -> (status, campaign_run) for the keys that exist."""
        with self.session() as s:
            q = select(OutboxMessage.key, OutboxMessage.status, OutboxMessage.campaign_run).where(
                OutboxMessage.key.in_(list(keys)))
            return {k: (st, run) for k, st, run in s.execute(q).tuples()}

    @_translated
    def take_over(self, key: str, status: str, run: str, values: dict[str, Any]) -> bool:
        """A re-run adopts an unsent row of an earlier run (or a failed one, to try again)."""
        return self._set([OutboxMessage.key == key, OutboxMessage.status == status],
                         status=S.QUEUED, campaign_run=run, enqueued_at=None, **values)

    @_translated
    def campaign_counts(self, run: str) -> dict[str, int]:
        with self.session() as s:
            q = (select(OutboxMessage.status, func.count()).where(OutboxMessage.campaign_run == run)
                 .group_by(OutboxMessage.status))
            return {k: v for k, v in s.execute(q).tuples()}

    @_translated
    def in_flight(self, run: str) -> int:
        """Rows handed to a job and not finished yet."""
        with self.session() as s:
            q = select(func.count()).where(
                OutboxMessage.campaign_run == run,
                ((OutboxMessage.status == S.QUEUED) & OutboxMessage.enqueued_at.is_not(None))
                | (OutboxMessage.status == S.SENDING))
            return int(s.scalar(q) or 0)

    @_translated
    def to_enqueue(self, run: str, limit: int, stale_before: datetime) -> list[tuple[int, dict[str, Any]]]:
        """Rows of a run to give a job: up to `limit` never enqueued, and every stuck one
        (enqueued or claimed before `stale_before` and still not finished: its job was lost)."""
        stuck = (((OutboxMessage.status == S.QUEUED) & (OutboxMessage.enqueued_at < stale_before))
                 | ((OutboxMessage.status == S.SENDING) & (OutboxMessage.claimed_at < stale_before)))
        fresh = (OutboxMessage.status == S.QUEUED) & OutboxMessage.enqueued_at.is_(None)
        base = select(OutboxMessage.id, OutboxMessage.payload).order_by(OutboxMessage.id)
        with self.session() as s:
            rows = list(s.execute(base.where(OutboxMessage.campaign_run == run, stuck).limit(1000)).tuples())
            if limit > 0:
                q = base.where(OutboxMessage.campaign_run == run, fresh).limit(limit)
                rows += list(s.execute(q).tuples())
        return [(i, p) for i, p in rows if p is not None]

    @_translated
    def mark_enqueued(self, ids: Sequence[int]) -> None:
        if ids:
            with self.session() as s:
                s.execute(update(OutboxMessage).where(OutboxMessage.id.in_(list(ids)))
                          .values(enqueued_at=utcnow(), updated_at=utcnow()))
                s.commit()

    @_translated
    def fail_unsent(self, ids: Sequence[int], reason: str) -> None:
        """Rows whose payload no longer validates (a template or attachment gone): failed."""
        if ids:
            with self.session() as s:
                s.execute(update(OutboxMessage)
                          .where(OutboxMessage.id.in_(list(ids)), OutboxMessage.status == S.QUEUED)
                          .values(status=S.FAILED, last_response=reason[:2000], updated_at=utcnow()))
                s.commit()

    @_translated
    def campaign(self, run: str) -> Campaign | None:
        with self.session() as s:
            return s.get(Campaign, run)

    @_translated
    def save_campaign(self, run: str, **values: Any) -> Campaign:
        """Create the run's record, or update it."""
        with self.session() as s:
            row = s.get(Campaign, run)
            if row is None:
                row = Campaign(id=run, created_at=utcnow(), **values)
                s.add(row)
            else:
                for k, v in values.items():
                    setattr(row, k, v)
            s.commit()
            return row

    @_translated
    def campaigns(self, limit: int = 20) -> list[Campaign]:
        with self.session() as s:
            return list(s.scalars(select(Campaign).order_by(Campaign.created_at.desc()).limit(limit)))
