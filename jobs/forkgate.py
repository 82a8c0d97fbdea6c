"""SQLite connections that a fork waits for, in a process that forks while its threads use them.

SQLite is not fork-safe: a child forked while another thread of its parent was inside SQLite
inherits SQLite's process-wide mutexes held by a thread it does not have, and its first
`sqlite3.connect` waits for ever (seen: a worker's replacement pool child hung in
`DefaultDialect.connect`, 4 of 30 crash-looping workers on a loaded machine, while the main
process's cancellation watcher polled the store). A child that inherits an *open* connection
also inherits SQLite's record of the parent's file locks, which it does not hold
(https://www.sqlite.org/howtocorrupt.html, section 2.6).

A worker's main process does both (its event loop forks pool children; its threads poll
cancellations, relay, recover and record), so `enable()` switches its SQLite engines to
`GatedSQLitePool`: a connection per checkout, closed at checkin, each open only inside
`GATE`. A fork waits (up to `FORK_WAIT` seconds) until no thread holds one and holds new
ones back until it is done, so the child starts with SQLite untouched. Every other process
(pool children, the recorder process, producers, the CLI) pools connections as usual.
PostgreSQL connections are not gated: a child never uses its parent's (it makes its own),
and no child hang has been seen with PostgreSQL (libpq keeps far less process-wide state
than SQLite). If one is, the gate can wrap any pool's checkout the same way.

Written here because neither SQLite, Python's sqlite3 nor SQLAlchemy offers a fork guard; the
pool overrides the two methods every SQLAlchemy pool implements (`_do_get`, `_do_return_conn`),
and tests/core/test_core_forkgate.py fails if an upgrade changes them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from sqlalchemy.pool import NullPool

log = logging.getLogger("conveyor.db")

#: How long a fork waits for the job-store calls in flight (an SQLite busy wait can last
#: `busy_timeout`, 10 s) before it goes ahead anyway, with a warning.
FORK_WAIT = 15.0


class ForkGate:
    """Many threads may be inside at once; a fork waits until none is, and keeps new ones out
    until it is done. A thread already inside may enter again (nested sessions) while a fork
    waits: it is what the fork is waiting for."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._inside = 0
        self._forking = False
        self._mine = threading.local()

    @property
    def inside(self) -> int:
        return self._inside

    def enter(self) -> None:
        depth = getattr(self._mine, "depth", 0)
        with self._cond:
            while self._forking and not depth:
                self._cond.wait()
            self._inside += 1
        self._mine.depth = depth + 1

    def exit(self) -> None:
        self._mine.depth = getattr(self._mine, "depth", 1) - 1
        with self._cond:
            self._inside -= 1
            if not self._inside:
                self._cond.notify_all()

    def before_fork(self) -> None:
        deadline = time.monotonic() + FORK_WAIT
        with self._cond:
            self._forking = True
            while self._inside and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            if self._inside:
                log.warning("forking while %d job-store connection(s) are in use (waited %.0f s)",
                            self._inside, FORK_WAIT)

    def after_fork_in_parent(self) -> None:
        with self._cond:
            self._forking = False
            self._cond.notify_all()

    def after_fork_in_child(self) -> None:
        """The child has none of its parent's threads, so nothing of theirs is inside."""
        self.__init__()  # type: ignore[misc]


GATE = ForkGate()
os.register_at_fork(before=GATE.before_fork, after_in_parent=GATE.after_fork_in_parent,
                    after_in_child=GATE.after_fork_in_child)


class GatedSQLitePool(NullPool):
    """A new SQLite connection per checkout, closed at checkin, open only inside `GATE`."""

    def _do_get(self) -> Any:
        GATE.enter()
        try:
            return super()._do_get()
        except BaseException:
            GATE.exit()
            raise

    def _do_return_conn(self, record: Any) -> None:
        try:
            super()._do_return_conn(record)
        finally:
            GATE.exit()


_enabled = False


def enabled() -> bool:
    """Whether this process's new SQLite engines use `GatedSQLitePool`."""
    return _enabled


def enable() -> None:
    """This process forks while its threads use the job store: gate its SQLite connections.
    Call before its threads start (engines made earlier keep their pools: dispose them)."""
    global _enabled
    _enabled = True


def _off_in_child() -> None:
    global _enabled
    _enabled = False  # a forked child does not fork in its turn (until it says so)


os.register_at_fork(after_in_child=_off_in_child)
