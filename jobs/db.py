"""The database: declarative base, one engine per process, sessions."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import JSON, DateTime, Engine, MetaData, create_engine, event
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from jobs import forkgate

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSONType = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp stored in UTC; SQLite hands it back aware too."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    """Every Conveyor table."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSONType, datetime: UTCDateTime}


def utcnow() -> datetime:
    return datetime.now(UTC)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def encode_json(value: Any) -> tuple[bytes, bool]:
    """JSON as Conveyor writes it (the job store's JSON columns, the frames pool children send
    their recorder process), and whether reading it back exactly needs the standard library's
    `json.loads`. orjson, on every job's path (a job's frame took 12 us with the standard
    library, a Python callback per datetime, 0.8 us with orjson; a column value 3-6 us, under
    1); datetimes come out as ISO strings. What orjson refuses and `json` takes (integers past
    64 bits, which orjson would also read back as floats) goes through `json`, and says so;
    anything else raises TypeError."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS), False
    except orjson.JSONEncodeError:
        return json.dumps(value, default=_isoformat).encode(), True


def _isoformat(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def has_nul(value: Any) -> bool:
    """Whether a NUL character hides in any key or string of `value`: PostgreSQL can hold
    none (not in JSONB, not in text), so Conveyor keeps them out of every store, and SQLite
    and PostgreSQL agree."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(has_nul(k) or has_nul(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(has_nul(v) for v in value)
    return False


def escape_nul(text: str) -> str:
    """`text` with each NUL character shown as `\\x00`, for a text field PostgreSQL must keep."""
    return text.replace("\x00", "\\x00")


def json_dumps(value: Any) -> str:
    """The JSON columns' serializer (`encode_json`, as text)."""
    return encode_json(value)[0].decode()


def make_engine(url: str) -> Engine:
    """A new engine for `url`, tuned for the job store's write pattern."""
    # Read back with the standard library: orjson reads integers past 64 bits as floats.
    codec: dict[str, Any] = {"json_serializer": json_dumps}
    if url.startswith("sqlite"):
        # A process that forks while its threads use SQLite (a worker's main process) holds no
        # connection open across a fork: see jobs/forkgate.py.
        pool = {"poolclass": forkgate.GatedSQLitePool} if forkgate.enabled() else {}
        engine = create_engine(url, connect_args={"timeout": 10, "check_same_thread": False}, **pool,
                               **codec)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args: dict[str, Any] = {}
    if url.startswith(("postgresql", "postgres")):
        connect_args["connect_timeout"] = 3
    return create_engine(url, pool_pre_ping=True, pool_size=5, connect_args=connect_args, **codec)


_engines: dict[tuple[int, str], Engine] = {}
_lock = threading.Lock()


def get_engine(url: str) -> Engine:
    """This process's engine for `url`; a forked child gets its own, never the parent's pool."""
    key = (os.getpid(), url)
    engine = _engines.get(key)
    if engine is None:
        with _lock:
            engine = _engines.get(key)
            if engine is None:
                engine = _engines[key] = make_engine(url)
    return engine


def dispose_engines() -> None:
    """Close this process's pools (inherited ones are dropped without closing the parent's)."""
    pid = os.getpid()
    with _lock:
        for (owner, url), engine in list(_engines.items()):
            engine.dispose(close=owner == pid)
            del _engines[(owner, url)]


def _reset_after_fork() -> None:
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    factory = sessionmaker(get_engine(url), expire_on_commit=False)
    with factory.begin() as session:
        yield session
