"""jobs/forkgate.py: a process that forks while its threads use SQLite gives its children a
usable SQLite (a worker's replacement pool child once hung in `sqlite3.connect` for ever)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError

from jobs.forkgate import GATE, GatedSQLitePool
from tests.conftest import ROOT

#: A worker's main process in miniature: one thread hammers the SQLite job store while the main
#: thread forks children that each open it; a child that has not finished in 5 s is hung.
FORKING_PROCESS = textwrap.dedent("""
    import os, signal, sys, threading, time
    from sqlalchemy import text
    from jobs import forkgate
    from jobs.db import get_engine

    url = sys.argv[1]
    if sys.argv[2] == "gated":
        forkgate.enable()
    with get_engine(url).begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
    stop = threading.Event()

    def hammer():
        while not stop.is_set():
            with get_engine(url).begin() as conn:
                conn.execute(text("INSERT INTO t VALUES (1)"))
                # Long inside SQLite (its allocator's mutex taken and given back all along),
                # with Python's GIL released: where the fork must not catch it.
                conn.execute(text("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
                                  "WHERE x < 20000) SELECT sum(length(randomblob(64))) FROM c")).scalar()

    threading.Thread(target=hammer, daemon=True).start()
    hung = 0
    for _ in range(int(sys.argv[3])):
        time.sleep(0.01)
        pid = os.fork()
        if pid == 0:
            with get_engine(url).connect() as conn:
                conn.execute(text("SELECT count(*) FROM t")).scalar()
            os._exit(0)
        deadline = time.monotonic() + 5
        while not os.waitpid(pid, os.WNOHANG)[0]:
            if time.monotonic() > deadline:
                hung += 1
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            time.sleep(0.005)
    stop.set()
    print(hung)
""")


def _hung_children(tmp_path: Path, mode: str, forks: int) -> int:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    out = subprocess.run([sys.executable, "-c", FORKING_PROCESS, url, mode, str(forks)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1])


def test_children_forked_while_a_thread_writes_sqlite_can_open_it(tmp_path: Path) -> None:
    # Without the gate about half of them hang (`_hung_children(tmp_path, "plain", 40)`: 19).
    assert _hung_children(tmp_path, "gated", 40) == 0


def test_a_fork_waits_for_the_connection_a_thread_holds(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'store.db'}", poolclass=GatedSQLitePool)
    inside, events = threading.Event(), []

    def hold() -> None:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            inside.set()
            threading.Event().wait(0.3)
            events.append("connection closed")

    thread = threading.Thread(target=hold)
    thread.start()
    inside.wait(5)
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    events.append("forked")
    os.waitpid(pid, 0)
    thread.join(5)
    assert events == ["connection closed", "forked"]
    assert GATE.inside == 0


def test_the_gate_is_left_whatever_happens_to_a_connection(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'store.db'}", poolclass=GatedSQLitePool)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER PRIMARY KEY)"))
        conn.execute(text("INSERT INTO t VALUES (1)"))
    with pytest.raises(IntegrityError, match="UNIQUE"), engine.begin() as conn:
        with engine.connect() as nested:  # a second connection of the same thread
            nested.execute(text("SELECT 1"))
        conn.execute(text("INSERT INTO t VALUES (1)"))  # duplicate key: rolled back
    conn = engine.connect()
    conn.invalidate()
    conn.close()
    assert GATE.inside == 0
    with engine.connect() as conn:  # and the store still works
        assert conn.execute(text("SELECT count(*) FROM t")).scalar() == 1
