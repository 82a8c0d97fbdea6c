"""Celery signal handlers that record each job's life in the job store.

Each handler pulls the ids out of Celery's arguments, hands the records to this process's
recorder (no database I/O on the task's path: a pool child sends them to the worker's recorder
process, any other process buffers them) and logs, never raises, on failure.
`connect(app)` wires them; nothing is connected at import.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import wraps
from typing import Any

from celery import Celery, current_app, signals
from celery.worker import state as worker_state

from jobs import forkgate
from jobs.db import dispose_engines, escape_nul, has_nul, utcnow
from jobs.models import REVOKED_ORDER, AttemptOutcome, AttemptReason, JobStatus, state_order
from jobs.recorder import ForwardingRecorder, Recorder, app_recorder, close_recorders
from jobs.store import JobStore
from tasks.registry import REGISTRY

log = logging.getLogger("conveyor.lifecycle")

#: Final records sent by the worker's main process (hard time limit, unknown task), which
#: does not know the attempt number: they outrank every attempt but not a cancellation.
FINAL_ORDER = REVOKED_ORDER - 1
HOST = socket.gethostname()
MAX_RESULT_CHARS = 1_000_000


def _safe(fn: Callable[..., None]) -> Callable[..., None]:
    @wraps(fn)
    def handler(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except Exception:  # noqa: BLE001 - recording must never break a job
            log.exception("recording %s failed", fn.__name__)

    return handler


def _jsonable(value: Any) -> Any:
    """`value` if the job store can hold it as JSON (and it is not huge), else a string saying
    what it was. A NUL character (`\\u0000`) counts as unholdable on every store: PostgreSQL's
    JSONB refuses it, and a result that SQLite kept but PostgreSQL could not would make the
    two stores disagree (the client refuses such payloads for the same reason)."""
    if value is None or type(value) in (bool, int, float) or (
            type(value) is str and len(value) < 10_000 and "\x00" not in value):
        return value  # most results: nothing to check
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        return {"repr": repr(value)[:10_000]}
    if has_nul(value):
        return {"repr": repr(value)[:10_000]}
    if len(text) > MAX_RESULT_CHARS:
        return {"truncated": True, "size": len(text), "head": text[:10_000]}
    return value


def _count_redelivery(app: Celery, job_id: str) -> int:
    """How many times this job's message came back after a lost worker (counted in Redis,
    which outlives the worker processes the job keeps killing)."""
    key = f"conveyor:redelivered:{job_id}"
    try:
        with app.connection_for_write() as conn, conn.default_channel.conn_or_acquire() as client:
            pipe = client.pipeline()
            pipe.incr(key).expire(key, 7 * 24 * 3600)
            return int(pipe.execute()[0])
    except Exception:  # noqa: BLE001 - not a Redis broker, or Redis away
        return 1


def _parse_eta(value: Any) -> Any:
    if not value:
        return None
    try:
        eta = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None
    return eta if eta.tzinfo else eta.replace(tzinfo=UTC)


def _error_fields(exc: BaseException | None, einfo: Any) -> dict[str, Any]:
    if exc is None:
        return {}
    return {
        "error_type": type(exc).__name__,
        "error_message": escape_nul(str(exc))[:10_000],
        "traceback": escape_nul(str(einfo.traceback if hasattr(einfo, "traceback") else einfo or ""))[:50_000],
    }


def _settings(sender: Any = None) -> Any:
    """The settings of the app at hand: the task's own, or (for publish signals, which only
    name the task) the current app's, which is the one app of a normal process."""
    app = getattr(sender, "app", None) or current_app
    return app.conf.conveyor_settings


def _recorder(sender: Any = None) -> Recorder | ForwardingRecorder:
    return app_recorder(getattr(sender, "app", None) or current_app._get_current_object())


#: This worker's recorder process (worker/recorder_process.py), once started.
_recorder_process: list[Any] = []


def connect(app: Celery) -> None:
    """Connect the lifecycle handlers (once per process; they find each app's settings)."""
    recorder = _recorder

    # --- producer side: whoever publishes -------------------------------------------------
    @_safe
    def before_publish(sender: str | None = None, headers: dict[str, Any] | None = None,
                       body: Any = None, **_: Any) -> None:
        spec = REGISTRY.get(sender or "")
        if spec is None or not spec.sensitive or headers is None or not isinstance(body, tuple):
            return
        headers["kwargsrepr"] = repr(spec.redact(body[1] or {}))

    @_safe
    def after_publish(sender: str | None = None, body: Any = None, routing_key: str | None = None,
                      headers: dict[str, Any] | None = None, **_: Any) -> None:
        if headers is None or headers.get("conveyor_recorded") or headers.get("retries"):
            return  # recorded already by enqueue(), or a retry the worker records itself
        args, kwargs = (body[0], body[1]) if isinstance(body, tuple) else ([], {})
        spec = REGISTRY.get(sender or "")
        now = utcnow()
        source = headers.get("conveyor_source") or (
            "workflow" if headers.get("parent_id") or headers.get("group") else "api"
        )
        recorder().job(
            headers["id"],
            0,
            status=JobStatus.QUEUED,
            task=sender,
            queue=routing_key,
            args=list(args),
            kwargs=spec.redact(kwargs) if spec else kwargs,
            source=source,
            eta=_parse_eta(headers.get("eta")),
            parent_id=headers.get("parent_id"),
            root_id=headers.get("root_id"),
            created_at=now,
            # On the broker already: the relay must not take it for a transactional job whose
            # commit hook died and publish it again, and `recover_lost` may look for it.
            published_at=now,
        )

    # --- worker side: a pool child running the job ------------------------------------------
    @_safe
    def prerun(sender: Any = None, task_id: str | None = None, **_: Any) -> None:
        req = sender.request
        info = req.delivery_info or {}
        redelivered = bool(info.get("redelivered") or (req.headers or {}).get("redelivered"))
        if redelivered:
            reason = AttemptReason.REDELIVERY
            settings = _settings(sender)
            count = _count_redelivery(sender.app, task_id)
            attempt = req.retries + 1 + count
            store = JobStore(settings.database_url)
            try:
                # Whatever this worker's processes recorded (an earlier run's end, say) is
                # written before the record is read.
                recorder(sender).flush()
                done = store.get(task_id).status
            except Exception:  # noqa: BLE001 - not recorded yet, or the database is down
                done = None
            if done in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.DEAD):
                # It ran to the end, but its worker died before the acknowledgement reached
                # Redis: the record says so, so ConveyorTask acknowledges it without a rerun.
                req.conveyor_already_finished = done
                return
            try:
                attempt = store.redelivered(task_id, attempt)
            except Exception:  # noqa: BLE001 - database down: the count from Redis will do
                pass
            if count > settings.max_redeliveries:
                req.conveyor_quarantined = count  # ConveyorTask refuses to run it
        elif req.retries:
            reason, attempt = AttemptReason.RETRY, req.retries + 1
        else:
            attempt = 1
            reason = AttemptReason.MANUAL_RETRY if getattr(req, "conveyor_retry_of", None) else AttemptReason.FIRST_RUN
        now = utcnow()
        req.conveyor_attempt = attempt
        req.conveyor_started = time.monotonic()
        req.conveyor_started_at = now
        deferred = getattr(req, "conveyor_deferred", None)  # sent back by worker.ratelimit.defer
        if (isinstance(deferred, dict) and deferred.get("since") and not redelivered
                and deferred.get("retries") == req.retries):
            # The same run, resumed: keep its first start, count the wait in its runtime.
            waited = max(0.0, time.time() - float(deferred["since"]))
            req.conveyor_started -= waited
            req.conveyor_started_at = now = now - timedelta(seconds=waited)
        job = {"status": JobStatus.STARTED, "task": sender.name, "queue": info.get("routing_key"),
               "started_at": now, "worker": HOST, "attempts": attempt}
        run = {"reason": reason, "worker": HOST, "pid": os.getpid(), "started_at": now,
               "outcome": AttemptOutcome.RUNNING}
        order = state_order(JobStatus.STARTED, attempt)
        if redelivered:
            # A job that came back after a lost worker may kill this one too: write its attempt
            # now, not in a batch that would die with the process.
            try:
                JobStore(_settings(sender).database_url).apply(
                    [{"id": task_id, "state_order": order, **job}],
                    [{"job_id": task_id, "number": attempt, **run}])
                return
            except Exception:  # noqa: BLE001 - fall back to the buffer
                pass
        recorder(sender).add(job=(task_id, order, job), attempt=(task_id, attempt, run), hold=True)

    def _finish(sender: Any, task_id: str, status: JobStatus, outcome: AttemptOutcome,
                **fields: Any) -> None:
        req = sender.request
        now = utcnow()
        if req.id == task_id and getattr(req, "conveyor_attempt", None):
            attempt = req.conveyor_attempt
            order = state_order(status, attempt)
            runtime = time.monotonic() - req.conveyor_started
            # Each record carries its attempt's identity, so it never pairs with an older one's.
            fields = {"worker": HOST, "started_at": req.conveyor_started_at, **fields}
            run = (task_id, attempt, {"finished_at": now, "outcome": outcome,
                                      "error": fields.get("error_message")})
        else:  # the main process, after the pool child is gone (a hard time limit)
            attempt, order, runtime, run = None, FINAL_ORDER, None, None
            JobStore(_settings(sender).database_url).close_running_attempts(
                task_id, outcome, fields.get("error_message"))
        if status is not JobStatus.RETRYING:
            fields = {"finished_at": now, "runtime": runtime, "attempts": attempt, **fields}
        recorder(sender).add(job=(task_id, order, {"status": status, **fields}), attempt=run)

    @_safe
    def success(sender: Any = None, result: Any = None, **_: Any) -> None:
        _finish(sender, sender.request.id, JobStatus.SUCCEEDED, AttemptOutcome.SUCCEEDED,
                result=_jsonable(result))

    @_safe
    def retry(sender: Any = None, request: Any = None, reason: Any = None, einfo: Any = None,
              **_: Any) -> None:
        exc = reason if isinstance(reason, BaseException) else None
        _finish(sender, request.id, JobStatus.RETRYING, AttemptOutcome.RETRIED,
                **_error_fields(getattr(exc, "exc", None) or exc, einfo))

    @_safe
    def failure(sender: Any = None, task_id: str | None = None, exception: BaseException | None = None,
                einfo: Any = None, **_: Any) -> None:
        is_dead = getattr(sender, "is_dead", None)
        dead = bool(is_dead and sender.request.id == task_id and is_dead(exception))
        _finish(sender, task_id or "", JobStatus.DEAD if dead else JobStatus.FAILED,
                AttemptOutcome.DEAD if dead else AttemptOutcome.FAILED,
                **_error_fields(exception, einfo))

    # --- worker side: the main process ------------------------------------------------------
    @_safe
    def revoked(sender: Any = None, request: Any = None, terminated: bool = False, expired: bool = False,
                **_: Any) -> None:
        why = "expired" if expired else "terminated" if terminated else "cancelled"
        recorder(sender).job(request.id, REVOKED_ORDER, status=JobStatus.REVOKED, finished_at=utcnow(),
                       error_type="Revoked", error_message=why)

    @_safe
    def unknown(sender: Any = None, name: str | None = None, id: str | None = None,
                exc: BaseException | None = None, **_: Any) -> None:
        if id:
            recorder().job(id, FINAL_ORDER, status=JobStatus.FAILED, task=name,
                           finished_at=utcnow(), error_type="UnknownTask",
                           error_message=f"no task {name!r} is registered on this worker")

    def process_init(**_: Any) -> None:
        dispose_engines()  # never reuse a pool inherited across fork

    def process_shutdown(**_: Any) -> None:
        close_recorders()  # pool children leave through os._exit: atexit would not run

    def worker_init(sender: Any = None, **_: Any) -> None:
        settings = sender.app.conf.conveyor_settings
        # Engines are dropped here and in every pool child (`process_init`); SQLAlchemy logs a
        # "Pool recreating" line at INFO for each: nothing an operator needs. Set before the
        # pool forks, so the children inherit it.
        for name in ("sqlalchemy.pool", "jobs.forkgate.GatedSQLitePool"):  # pools log by class
            pool_log = logging.getLogger(name)
            if pool_log.level == logging.NOTSET:
                pool_log.setLevel(logging.WARNING)
        from worker import forksafe

        forksafe.install()  # pool children forked while this process's threads run
        # Before the pool forks (and before this process starts threads): the process its
        # children send their records to.
        if "prefork" in str(getattr(sender, "pool_cls", "prefork")).lower():
            from worker import recorder_process

            # No SQLite connection of this process's threads open across a fork of the pool.
            forkgate.enable()
            dispose_engines()

            _recorder_process.append(recorder_process.start(
                settings.database_url, settings.record_flush_interval, settings.record_batch_size))
        # Before the consumer takes its first message: a job cancelled while no worker ran
        # must already be in the revoked set when its message arrives.
        watcher = CancellationWatcher(JobStore(settings.database_url), settings.cancel_poll_interval,
                                      timedelta(seconds=settings.visibility_timeout))
        try:
            watcher.poll()
        except Exception as exc:  # noqa: BLE001 - a database outage must not stop the worker
            log.warning("could not read cancellations at start: %s", exc)
        watcher.start()

    def worker_shutdown(**_: Any) -> None:
        close_recorders()
        while _recorder_process:  # the pool is down: let the recorder process finish writing
            _recorder_process.pop().stop()

    for signal, handler in [
        (signals.before_task_publish, before_publish),
        (signals.after_task_publish, after_publish),
        (signals.task_prerun, prerun),
        (signals.task_success, success),
        (signals.task_retry, retry),
        (signals.task_failure, failure),
        (signals.task_revoked, revoked),
        (signals.task_unknown, unknown),
        (signals.worker_process_init, process_init),
        (signals.worker_process_shutdown, process_shutdown),
        (signals.worker_init, worker_init),
        (signals.worker_shutdown, worker_shutdown),
    ]:
        signal.connect(handler, weak=False, dispatch_uid=f"conveyor.{handler.__name__}")


class CancellationWatcher:
    """Keeps the worker's revoked set in step with cancellations stored in the job store.

    Celery's own revokes live in worker memory and vanish on restart; a cancellation in the
    job store holds. The worker's main process checks its revoked set before it hands a job
    to the pool, so loading stored cancellations there stops them without a per-job query.
    """

    def __init__(self, store: JobStore, interval: float, horizon: timedelta) -> None:
        self.store = store
        self.interval = interval
        self.horizon = horizon
        self.since = None

    def poll(self) -> int:
        since = self.since or utcnow() - self.horizon
        ids, self.since = self.store.cancelled_since(since)
        self.since = self.since or since
        for job_id in ids:
            worker_state.revoked.add(job_id)
        return len(ids)

    def _run(self) -> None:
        while True:
            try:
                n = self.poll()
                if n:
                    log.info("loaded %d cancellations from the job store", n)
            except Exception as exc:  # noqa: BLE001
                log.warning("could not read cancellations: %s", exc)
            time.sleep(self.interval)

    def start(self) -> None:
        threading.Thread(target=self._run, name="conveyor-cancellations", daemon=True).start()
