"""Every query over `recon_runs` and `recon_items`; database errors become `StoreUnavailable`.

Items are written in bulk, in the same transaction that marks the run succeeded: COPY on
PostgreSQL, one executemany on SQLite. A run is either complete or has no items at all.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
from sqlalchemy import Connection, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from config import mask_url
from jobs.db import get_engine, utcnow
from jobs.errors import StoreUnavailable
from tasks.reconciliation.errors import RunNotFound
from tasks.reconciliation.models import ITEM_COLUMNS, ReconItem, ReconRun, RunStatus

P = ParamSpec("P")
R = TypeVar("R")


def _translated(fn: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (OperationalError, InterfaceError) as exc:
            store = args[0]
            assert isinstance(store, RunStore)
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise StoreUnavailable(f"job store {mask_url(store.url)} is unavailable: {reason}") from exc

    return wrapper


def db_table(items: pa.Table, run_id: str) -> pa.Table:
    """The items table as `recon_items` columns: lists as JSON text, dates as ISO text."""
    con = duckdb.connect()
    con.register("items", items)
    table = con.sql(
        """
        SELECT $run AS run_id, seq, type, kind, currency,
               to_json(ledger_ids)::VARCHAR AS ledger_ids, to_json(statement_ids)::VARCHAR AS statement_ids,
               to_json(ledger_lines)::VARCHAR AS ledger_lines,
               to_json(statement_lines)::VARCHAR AS statement_lines,
               strftime(ledger_date, '%Y-%m-%d') AS ledger_date,
               strftime(statement_date, '%Y-%m-%d') AS statement_date,
               ledger_amount, statement_amount, difference, reference, reason
        FROM items ORDER BY seq
    """,
        params={"run": run_id},
    ).to_arrow_table()
    con.close()
    return table.select(list(ITEM_COLUMNS))


class RunStore:
    """The reconciliation runs of one database URL."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _session(self) -> Session:
        return Session(get_engine(self.url), expire_on_commit=False)

    # --- reading -----------------------------------------------------------------------------
    @_translated
    def find(self, run_id: str) -> ReconRun | None:
        with self._session() as s:
            return s.get(ReconRun, run_id)

    @_translated
    def get(self, ref: str) -> ReconRun:
        """A run by its id, a unique prefix of it (4 characters or more), or its job's id."""
        ref = ref.strip()
        with self._session() as s:
            run = s.get(ReconRun, ref)
            if run is None:
                run = s.scalars(
                    select(ReconRun)
                    .where(ReconRun.job_id == ref)
                    .order_by(ReconRun.created_at.desc())
                    .limit(1)
                ).first()
            if run is None and len(ref) >= 4:
                found = s.scalars(
                    select(ReconRun).where(ReconRun.id.startswith(ref, autoescape=True)).limit(2)
                ).all()
                if len(found) == 1:
                    run = found[0]
                elif len(found) > 1:
                    raise RunNotFound(f"{ref!r} is the start of several run ids; give more of it")
        if run is None:
            raise RunNotFound(f"no reconciliation run {ref!r}")
        return run

    @_translated
    def list(self, limit: int = 20) -> list[ReconRun]:
        with self._session() as s:
            return list(s.scalars(select(ReconRun).order_by(ReconRun.created_at.desc()).limit(limit)))

    @_translated
    def items(
        self, run_id: str, *, discrepancies: bool = False, limit: int | None = None, offset: int = 0
    ) -> list[ReconItem]:
        query = select(ReconItem).where(ReconItem.run_id == run_id)
        if discrepancies:
            query = query.where(ReconItem.kind == "discrepancy")
        query = query.order_by(ReconItem.seq).offset(offset)
        if limit is not None:
            query = query.limit(limit)
        with self._session() as s:
            return list(s.scalars(query))

    @_translated
    def count_items(self, run_id: str) -> int:
        with self._session() as s:
            return int(
                s.scalar(select(func.count()).select_from(ReconItem).where(ReconItem.run_id == run_id)) or 0
            )

    # --- writing -----------------------------------------------------------------------------
    @_translated
    def start(self, row: dict[str, Any]) -> None:
        """Record the run as running (new, or again after a failure or a lost worker)."""
        now = utcnow()
        values = {
            **row,
            "status": RunStatus.RUNNING,
            "started_at": now,
            "finished_at": None,
            "error": None,
            "error_type": None,
            "created_at": now,
        }
        dialect = get_engine(self.url).dialect.name
        stmt: Any = postgresql.insert(ReconRun) if dialect == "postgresql" else sqlite.insert(ReconRun)
        refresh = {k: v for k, v in values.items() if k not in ("id", "key", "created_at")}
        stmt = stmt.values(**values).on_conflict_do_update(index_elements=["id"], set_=refresh)
        with get_engine(self.url).begin() as conn:
            conn.execute(stmt)

    @_translated
    def fail(self, run_id: str, error_type: str, message: str) -> None:
        """Mark the run failed; it keeps no items (a failed run never has any)."""
        with get_engine(self.url).begin() as conn:
            conn.execute(delete(ReconItem).where(ReconItem.run_id == run_id))
            conn.execute(
                update(ReconRun)
                .where(ReconRun.id == run_id)
                .values(status=RunStatus.FAILED, error_type=error_type, error=message, finished_at=utcnow())
            )

    @_translated
    def finish(self, run_id: str, fields: dict[str, Any], items: pa.Table) -> None:
        """Store every item and mark the run succeeded, in one transaction.

        The run row is updated first, which locks it: two workers finishing the same run
        one after the other each leave exactly one set of items."""
        rows = db_table(items, run_id)
        with get_engine(self.url).begin() as conn:
            conn.execute(update(ReconRun).where(ReconRun.id == run_id).values(status=RunStatus.RUNNING))
            conn.execute(delete(ReconItem).where(ReconItem.run_id == run_id))
            if rows.num_rows:
                if conn.dialect.name == "postgresql":
                    _copy(conn, rows)
                else:
                    _executemany(conn, rows)
            conn.execute(
                update(ReconRun)
                .where(ReconRun.id == run_id)
                .values(
                    **fields, status=RunStatus.SUCCEEDED, finished_at=utcnow(), error=None, error_type=None
                )
            )

    @_translated
    def set_notification(self, run_id: str, notification: dict[str, Any]) -> None:
        with get_engine(self.url).begin() as conn:
            conn.execute(update(ReconRun).where(ReconRun.id == run_id).values(notification=notification))

    @_translated
    def set_timings(self, run_id: str, timings: dict[str, Any]) -> None:
        with get_engine(self.url).begin() as conn:
            conn.execute(update(ReconRun).where(ReconRun.id == run_id).values(timings=timings))

    @_translated
    def delete(self, run_id: str) -> None:
        with get_engine(self.url).begin() as conn:
            conn.execute(delete(ReconItem).where(ReconItem.run_id == run_id))
            conn.execute(delete(ReconRun).where(ReconRun.id == run_id))


def _copy(conn: Connection, rows: pa.Table) -> None:
    """COPY the rows in as CSV through the driver's own connection (same transaction);
    psycopg 3 (SQLAlchemy 2.1's default PostgreSQL driver) and psycopg2 both work."""
    buffer = io.BytesIO()
    pacsv.write_csv(rows, buffer, pacsv.WriteOptions(include_header=False))
    sql = f"COPY recon_items ({', '.join(ITEM_COLUMNS)}) FROM STDIN WITH (FORMAT csv)"
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        if hasattr(cursor, "copy_expert"):  # psycopg2
            buffer.seek(0)
            cursor.copy_expert(sql, buffer)
        else:  # psycopg 3
            with cursor.copy(sql) as copy:
                view = buffer.getbuffer()
                for start in range(0, len(view), 1 << 20):
                    copy.write(view[start : start + (1 << 20)])
                del view
    finally:
        cursor.close()


def _executemany(conn: Connection, rows: pa.Table, batch: int = 100_000) -> None:
    sql = (
        f"INSERT INTO recon_items ({', '.join(ITEM_COLUMNS)}) VALUES ({', '.join('?' for _ in ITEM_COLUMNS)})"
    )
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        for start in range(0, rows.num_rows, batch):
            part = rows.slice(start, batch)
            cursor.executemany(sql, zip(*(part[c].to_pylist() for c in ITEM_COLUMNS), strict=False))
    finally:
        cursor.close()
