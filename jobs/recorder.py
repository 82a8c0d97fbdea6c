"""Batched lifecycle recording: merge records in memory, write them in one transaction per tick.

Writing a row per lifecycle event on the task's path halves a worker's throughput (see
bench/README.md). Instead each process keeps a buffer keyed by job id; a flusher thread
writes it with one executemany upsert per table at most `interval` seconds after its first
record, sooner when `batch_size` records wait or when no new record came for `QUIET` seconds
(so a burst's last records land within milliseconds, not a whole interval, of its last job).
Records commute (see `jobs.models.state_order`), so buffers of different processes may land in
any order. A failed write puts the batch back, merged under
anything newer, and is retried with backoff: a worker whose database is down keeps running
jobs and writes what it owes once the database is back.

A worker's pool children do not keep a buffer: their `ForwardingRecorder` sends each record at
once over a Unix socket to the worker's recorder process (worker/recorder_process.py), which
runs a `Recorder`. The database work then happens off the process running jobs, and a child
killed right after its job loses nothing.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy.exc import DataError, IntegrityError

from jobs.db import UTCDateTime, encode_json
from jobs.errors import StoreUnavailable
from jobs.models import Job, JobAttempt
from jobs.store import JobStore

log = logging.getLogger("conveyor.recorder")

#: Flush early once the buffer has had no new record for this long: under load records keep
#: coming and batches stay `interval` long; when a burst ends, its tail is written at once.
QUIET = 0.01

#: Past this many unwritten records, new ones are still kept but an error is logged.
BACKLOG_WARNING = 200_000
#: Errors that say the store is up but refuses what a record holds (not an outage, nor a
#: missing migration: records are kept through those).
REFUSED = (DataError, IntegrityError)


def _merge(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """Combine two records of one job the way the database upsert does."""
    if old is None:
        return new
    fresh = {k: v for k, v in new.items() if v is not None}
    if new.get("state_order", 0) >= old.get("state_order", 0):
        merged = {**old, **fresh}
    else:
        merged = {**fresh, **{k: v for k, v in old.items() if v is not None}}
    if old.get("attempts") is not None and fresh.get("attempts") is not None:
        merged["attempts"] = max(old["attempts"], fresh["attempts"])  # as in the upsert: only grows
    return merged


def _fill(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Combine two records of one attempt: what `new` knows over `old` (as the upsert's coalesce)."""
    return {**old, **{k: v for k, v in new.items() if v is not None}}


def _merge_records(jobs: dict[str, dict[str, Any]], attempts: dict[tuple[str, int], dict[str, Any]],
                   records: Iterable[Sequence[Any]]) -> None:
    """Merge records as a frame carries them, ("j", job id, state order, fields) or ("a", job
    id, attempt number, fields), into rows keyed by job and by attempt, as the upserts would."""
    for kind, key, order, fields in records:
        if kind == "j":
            jobs[key] = _merge(jobs.get(key), {"id": key, "state_order": order, **fields})
        else:
            rec = {"job_id": key, "number": order, **fields}
            old = attempts.get((key, order))
            attempts[(key, order)] = _fill(old, rec) if old else rec


class Recorder:
    """One process's buffer of lifecycle records and the thread that writes them."""

    def __init__(self, store: JobStore, interval: float = 0.1, batch_size: int = 500) -> None:
        self.store = store
        self.interval = interval
        self.batch_size = batch_size
        self._jobs: dict[str, dict[str, Any]] = {}
        self._attempts: dict[tuple[str, int], dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False
        self._first = 0.0  # monotonic time of the oldest unwritten record (0: none)
        self._last = 0.0  # ... and of the newest
        self.pid = os.getpid()

    # --- called from signal handlers: cheap, never raises ----------------------------------
    def job(self, job_id: str, state_order: int, **fields: Any) -> None:
        self.extend([("j", job_id, state_order, fields)])

    def attempt(self, job_id: str, number: int, **fields: Any) -> None:
        self.extend([("a", job_id, number, fields)])

    def add(self, job: tuple[str, int, dict[str, Any]] | None = None,
            attempt: tuple[str, int, dict[str, Any]] | None = None, hold: bool = False) -> None:
        """A job record and an attempt record at once (either may be None; `hold` is for
        `ForwardingRecorder`: a buffer holds everything anyway)."""
        records: list[tuple[str, str, int, dict[str, Any]]] = []
        if job:
            records.append(("j", *job))
        if attempt:
            records.append(("a", *attempt))
        self.extend(records)

    def extend(self, records: Iterable[tuple[str, str, int, dict[str, Any]]]) -> None:
        """Records as a frame carries them: ("j", job id, state order, fields) for a job,
        ("a", job id, attempt number, fields) for an attempt; all under one lock."""
        with self._lock:
            _merge_records(self._jobs, self._attempts, records)
            n = len(self._jobs)
            self._touch()
        self._started()
        if n >= self.batch_size:
            self._wake.set()

    def _touch(self) -> None:
        """Note a new record (under the lock); wake the flusher if the buffer was empty."""
        now = time.monotonic()
        if not self._first:
            self._first = now
            self._wake.set()
        self._last = now

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._jobs) + len(self._attempts)

    # --- writing ---------------------------------------------------------------------------
    def flush(self) -> bool:
        """Write everything buffered; on failure keep it for the next try. True if written."""
        with self._flush_lock:  # batches land in the order they were taken
            return self._flush()

    def _flush(self) -> bool:
        with self._lock:
            jobs, self._jobs = self._jobs, {}
            attempts, self._attempts = self._attempts, {}
            self._first = self._last = 0.0
        if not jobs and not attempts:
            return True
        try:
            self.store.apply(jobs.values(), attempts.values())
        except Exception as exc:  # noqa: BLE001 - the buffer must survive any failure
            if isinstance(exc, REFUSED):
                jobs, attempts = self._apart(jobs, attempts)
                if not jobs and not attempts:
                    return True
            with self._lock:
                for jid, rec in jobs.items():
                    self._jobs[jid] = _merge(rec, self._jobs[jid]) if jid in self._jobs else rec
                for key, rec in attempts.items():
                    self._attempts[key] = _fill(rec, self._attempts.get(key) or {})
                self._first = self._first or time.monotonic()
                self._last = self._last or self._first
                backlog = len(self._jobs) + len(self._attempts)
            if not self._failing:
                kind = "unavailable" if isinstance(exc, StoreUnavailable) else "failing"
                log.warning("job store %s; keeping %d records to write later: %s", kind, backlog, exc)
                self._failing = True
            if backlog > BACKLOG_WARNING:
                log.error("%d lifecycle records wait for the job store", backlog)
            return False
        if self._failing:
            log.warning("job store is back; wrote the records kept while it was away")
            self._failing = False
        return True

    def _apart(self, jobs: dict[str, dict[str, Any]], attempts: dict[tuple[str, int], dict[str, Any]]
               ) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, int], dict[str, Any]]]:
        """The store refused a batch for a value it cannot hold (one PostgreSQL refuses, say):
        that record must not hold back every record after it, forever. Write each record on
        its own; drop, and log, the ones refused on their own. Returns what is still unwritten
        because the write failed otherwise (the store went away meanwhile)."""
        left: dict[str, dict[Any, dict[str, Any]]] = {"job": {}, "attempt": {}}
        away = False
        for kind, records in (("job", jobs), ("attempt", attempts)):
            for key, record in records.items():
                if away:
                    left[kind][key] = record
                    continue
                try:
                    self.store.apply(*(([record], []) if kind == "job" else ([], [record])))
                except REFUSED as exc:
                    log.error("the job store refused the %s record %s; dropped it: %s", kind, key,
                              (str(exc).splitlines() or [type(exc).__name__])[0])
                except Exception:  # noqa: BLE001 - kept, as the whole batch would be
                    away = True
                    left[kind][key] = record
        return left["job"], left["attempt"]

    def _due_in(self) -> float | None:
        """Seconds until the buffer should be written (0: now), None when it is empty."""
        with self._lock:
            first, last, n = self._first, self._last, len(self._jobs)
        if not first:
            return None
        if n >= self.batch_size:
            return 0.0
        now = time.monotonic()
        return max(0.0, min(first + self.interval, last + QUIET) - now)

    def _run(self) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            due = self._due_in()
            if due is None:  # empty: sleep until the first record wakes us
                self._wake.wait()
                self._wake.clear()
                continue
            if due > 0 or backoff:
                self._wake.wait(max(due, backoff))
                self._wake.clear()
                if self._stop.is_set():
                    break
                if not backoff and (self._due_in() or 0.0) > 0:
                    continue
            ok = self.flush()
            # Back off while the store is down so a dead database is not hammered.
            backoff = 0.0 if ok else min(max(backoff * 2, 0.5), 5.0)

    def _started(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="conveyor-recorder", daemon=True
                    )
                    self._thread.start()
                    atexit.register(self.close)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread and write what is left, retrying for up to `timeout` seconds."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=2)
        deadline = timeout
        while not self.flush() and deadline > 0:
            self._stop.wait(0.5)
            deadline -= 0.5
        if self.pending:
            log.error("exiting with %d lifecycle records unwritten", self.pending)


class ForwardingRecorder:
    """A pool child's recorder: sends its records to the worker's recorder process.

    A job's records go out in one frame when the job ends (its start held back with them), so
    a job costs one send; a start is sent on its own once its job has run for `QUIET` seconds,
    so a long job shows as started. Everything a job recorded is sent before its result goes
    back to the worker's main process: a child killed after that loses nothing.

    One connection per child, so frames never interleave; a frame is a 4-byte length and a JSON
    list of records (JSON, not pickle: nothing that reads the socket runs what it is sent). If
    the recorder process cannot be reached, this child records through a local `Recorder`
    from then on, and says so once.
    """

    def __init__(self, address: str, local: Callable[[], Recorder]) -> None:
        self.address = address
        self._local_factory = local
        self._local: Recorder | None = None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._held: list[list[Any]] = []
        self._held_since = 0.0
        self._armed = threading.Event()
        self._thread: threading.Thread | None = None

    def job(self, job_id: str, state_order: int, **fields: Any) -> None:
        self.add(job=(job_id, state_order, fields))

    def attempt(self, job_id: str, number: int, **fields: Any) -> None:
        self.add(attempt=(job_id, number, fields))

    def add(self, job: tuple[str, int, dict[str, Any]] | None = None,
            attempt: tuple[str, int, dict[str, Any]] | None = None, hold: bool = False) -> None:
        """A job record and an attempt record (either may be None); `hold`: the job has only
        started, its end will carry these."""
        records = [["j", *job]] if job else []
        if attempt:
            records.append(["a", *attempt])
        with self._lock:
            self._held.extend(records)
            if hold:
                if not self._held_since:
                    self._held_since = time.monotonic()
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="conveyor-forward", daemon=True)
                    self._thread.start()
                if not self._armed.is_set():  # set() takes the event's lock and notifies
                    self._armed.set()
                return
            records, self._held, self._held_since = _compact(self._held), [], 0.0
            self._send(records)

    def flush(self) -> bool:
        """Write everything this child recorded through to the job store before returning
        (the recorder process confirms); True if written."""
        with self._lock:
            records, self._held, self._held_since = self._held, [], 0.0
            return self._send(records, sync=True)

    def _run(self) -> None:
        while True:
            self._armed.wait()
            time.sleep(QUIET)
            with self._lock:
                if self._held and time.monotonic() - self._held_since >= QUIET:
                    records, self._held, self._held_since = self._held, [], 0.0
                    self._send(records)
                if not self._held:
                    self._armed.clear()

    def _send(self, records: list[list[Any]], sync: bool = False) -> bool:
        """Under the lock. With `sync`, wait until the recorder process has written all it
        holds; True if it did (or, without `sync`, if the records were handed over)."""
        if self._local is None:
            try:
                frame = encode_frame([*records, [SYNC]] if sync else records)
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    self._sock.connect(self.address)
                self._sock.sendall(frame)
                if not sync:
                    return True
                self._sock.settimeout(SYNC_TIMEOUT)
                try:
                    reply = self._sock.recv(1)
                finally:
                    self._sock.settimeout(None)
                if reply:
                    return reply == b"1"
                raise ConnectionResetError("the recorder process closed the connection")
            except (OSError, TypeError, ValueError) as exc:
                log.warning("recorder process unreachable (%s); recording from this process", exc)
                self._local = self._local_factory()
                self._disconnect()
        self._local.extend(records)  # a partly sent frame is dropped there: no double
        return self._local.flush() if sync else True

    def _disconnect(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None

    @property
    def pending(self) -> int:
        return len(self._held) + (self._local.pending if self._local else 0)

    def close(self, timeout: float = 10.0) -> None:
        with self._lock:
            records, self._held, self._held_since = self._held, [], 0.0
            if records:
                self._send(records)
            self._disconnect()
        if self._local is not None:
            self._local.close(timeout)


#: A frame's last entry when the sender waits until everything is written (one byte back:
#: b"1" written, b"0" not, the store being away).
SYNC = "sync"
SYNC_TIMEOUT = 60.0

#: Columns that hold datetimes, sent as ISO strings (see `decode_records`): read off the models.
DATETIME_FIELDS = frozenset(c.name for t in (Job.__table__, JobAttempt.__table__) for c in t.columns
                            if isinstance(c.type, UTCDateTime))


def _compact(records: list[list[Any]]) -> list[list[Any]]:
    """One record per job and per attempt, merged as the recorder would merge them: a job's
    held start and its end go out as one job record and one attempt record, so the frame, its
    decoding and the recorder's merging are half the work."""
    if len(records) <= 2:
        return records
    jobs: dict[str, dict[str, Any]] = {}
    attempts: dict[tuple[str, int], dict[str, Any]] = {}
    _merge_records(jobs, attempts, records)
    return ([["j", j.pop("id"), j.pop("state_order"), j] for j in jobs.values()]
            + [["a", a.pop("job_id"), a.pop("number"), a] for a in attempts.values()])


#: A frame is a 4-byte header and a JSON list of records. The header holds the list's length,
#: and this bit when the list needs the standard library's reader: orjson reads integers past
#: 64 bits as floats, and such a frame was written by `json` anyway (`encode_json`). Every
#: other frame is read with orjson (3.1 -> 0.9 us a job's frame).
_HEADER = struct.Struct("!I")
_EXACT = 1 << 31


def encode_frame(records: list[list[Any]]) -> bytes:
    payload, exact = encode_json(records)
    return _HEADER.pack(len(payload) | (_EXACT if exact else 0)) + payload


def next_frame(buf: bytes | bytearray, offset: int) -> tuple[bytes, bool, int] | None:
    """The frame starting at `offset` in `buf`, as (payload, needs the standard library's
    reader, offset after it); None while it is incomplete."""
    if len(buf) - offset < _HEADER.size:
        return None
    (header,) = _HEADER.unpack_from(buf, offset)
    size, start = header & (_EXACT - 1), offset + _HEADER.size
    if len(buf) - start < size:
        return None
    return bytes(buf[start:start + size]), bool(header & _EXACT), start + size


def decode_records(payload: bytes, exact: bool = True) -> tuple[list[tuple[str, str, int, dict[str, Any]]], bool]:
    """The records of one frame sent by a `ForwardingRecorder`, and whether it asks for a sync.
    `exact`: read with the standard library (see `_EXACT`), else with orjson."""
    entries = json.loads(payload) if exact else orjson.loads(payload)
    sync = bool(entries) and entries[-1] == [SYNC]
    out = []
    for kind, key, order, fields in entries[:-1] if sync else entries:
        for name in DATETIME_FIELDS.intersection(fields):
            if isinstance(fields[name], str):
                fields[name] = datetime.fromisoformat(fields[name])
        out.append((kind, key, int(order), fields))
    return out, sync


#: Set in a worker's main process (worker/recorder_process.py) before its pool forks: the
#: children forward to this address; the main process itself keeps a local recorder.
_forward: dict[str, Any] = {}


def forward_to(address: str | None, owner_pid: int | None = None) -> None:
    """Make this process's forked children send their records to `address` (None: stop)."""
    _forward.clear()
    if address:
        _forward.update(address=address, owner=owner_pid or os.getpid())


_recorders: dict[tuple[int, str], Recorder | ForwardingRecorder] = {}
_recorders_lock = threading.Lock()


def get_recorder(database_url: str, interval: float = 0.1,
                 batch_size: int = 500) -> Recorder | ForwardingRecorder:
    """This process's recorder for `database_url` (a forked child gets a fresh one): a
    forwarding one in a worker's pool child, a local buffer anywhere else."""
    pid = os.getpid()
    key = (pid, database_url)
    rec = _recorders.get(key)
    if rec is None:
        with _recorders_lock:
            rec = _recorders.get(key)
            if rec is None:
                def local() -> Recorder:
                    return Recorder(JobStore(database_url), interval, batch_size)

                forward = _forward.get("address")
                if forward and _forward.get("owner") != pid:
                    rec = ForwardingRecorder(forward, local)
                else:
                    rec = local()
                _recorders[key] = rec
    return rec


def app_recorder(app: Any) -> Recorder | ForwardingRecorder:
    """This process's recorder for the job store of `app` (a Celery app made by
    `worker.factory.create_app`), kept on the app: reading its settings through Celery's
    configuration cost microseconds on every lifecycle event."""
    known = app.__dict__.get("_conveyor_recorder")
    if known is None or known[0] != os.getpid():
        s = app.conf.conveyor_settings
        known = app._conveyor_recorder = (
            os.getpid(), get_recorder(s.database_url, s.record_flush_interval, s.record_batch_size))
    return known[1]  # type: ignore[no-any-return]


def close_recorders() -> None:
    """Flush and stop this process's recorders (pool children call this before `os._exit`)."""
    pid = os.getpid()
    for (owner, _), rec in list(_recorders.items()):
        if owner == pid:
            rec.close()


def _reset_after_fork() -> None:
    global _recorders_lock
    _recorders_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)
