"""Changes to Celery's and kombu's behaviour: four win back what task events cost, two spare the
worker's main process waits and system calls it did not need, two keep a malformed message
from stopping a worker (`create_task_handler`, `drop_malformed_messages`), two keep a
reconnect from running a job twice (`on_connection_error_after_connected`,
`leave_lost_channels_to_recovery`), one keeps the worker's memory flat (`purge_cancelled_timers`).

Measured (bench/throughput.py; ../shared/PERFORMANCE.md has the analysis): the worker's consumer
process is the bottleneck of a Celery-on-Redis worker, and two things in it cost a third of
its throughput once task events are on, as Flower needs them:

1. **Event flushing.** Celery buffers task events but asks the event loop to flush the buffer
   on every iteration, so it publishes about one PUBLISH for every two events. `ConveyorConsumer`
   flushes at most every `event_flush_interval` seconds (default 0.1) instead, through Celery's own
   extension point (the `worker_consumer` setting). Same events, same exchange, in order; the buffer
   still flushes early when full (Celery's buffer_limit) and on shutdown. Monitors see events up to
   one interval later.
2. **Redis client reuse.** kombu's Redis channel builds a new `redis.Redis` object for every
   command (`Channel.conn_or_acquire`): every LPUSH, PUBLISH, ack and unacked-bookkeeping call.
   `reuse_redis_clients()` makes each channel keep one client per connection pool (redis-py clients
   are thread-safe and stateless apart from the pool). A new pool (after fork or a reconnect)
   gets a new client.

3. **Task-sent events.** With `task_send_sent_event` on, Celery's producer publishes one event
   per message it sends, at once, through its own PUBLISH: that cost a producer more than the
   message itself (bench/throughput.py's producer: 195 us a job plain, 405 us with the sent
   event). `SentEventBatcher` stands in for the dispatcher `send_task_message` uses by default
   and publishes the same events in `task.multi` batches, as a worker does its own, at most
   `event_flush_interval` seconds later (and at exit). Celery's `EventReceiver`, which Flower
   is built on, takes a batch as the events it holds.

4. **Unacknowledged copies stored as received.** For every message a worker takes, kombu's
   Redis QoS stores a copy to restore if the worker is lost: it decodes the message, then
   encodes it again with the standard library's JSON (10 us of the consumer's 780 a job).
   `store_unacked_as_received` keeps the text each message arrived as and stores that instead.

5. **Waiting for the unacked bookkeeping.** For every message, kombu's Redis QoS stored its copy
   and, on the acknowledgement, deleted it, each a MULTI/EXEC the main process sent and then
   waited for: its two longest waits a job. `unacked_bookkeeping_without_waiting` sends each
   batch and reads its answer when the next one goes out, or before anything that must see the
   bookkeeping done (see `_Bookkeeping`).
6. **Redundant epoll calls.** On every round of the worker's event loop kombu's Redis transport
   registered its sockets again and the prefork pool unregistered a writer from each idle
   child's pipe, which it never had: nine failing `epoll_ctl` calls a job of the thirteen it made.
   `skip_redundant_poll_registrations` skips what the loop's own tables show it has (or lacks).

All are applied explicitly by `worker.factory.create_app` (unless `patch=False`), only on the
versions they were tested with (`TESTED`); on other versions they are skipped with a warning.
tests/core/test_core_patches.py fails if an upgrade changes what they rely on. Each is small
enough to propose upstream as an option.
"""

from __future__ import annotations

import atexit
import heapq
import logging
import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

import celery
import kombu
import redis
from celery import Celery
from celery.exceptions import CPendingDeprecationWarning
from celery.worker.consumer import Consumer

log = logging.getLogger("conveyor.patches")

#: (major, minor) versions these changes were written and tested against.
TESTED = {"celery": {(5, 7)}, "kombu": {(5, 7)}, "redis": {(8, 1)}}


def _tested(name: str, version: str) -> bool:
    major_minor = tuple(int(p) for p in version.split(".")[:2])
    if major_minor in TESTED[name]:
        return True
    log.warning("not applying Conveyor's %s patch: tested with %s, found %s",
                name, sorted(TESTED[name]), version)
    return False


#: How often the worker's event loop drops cancelled timers from its schedule.
TIMER_PURGE_INTERVAL = 10.0


def purge_cancelled_timers(timer: Any) -> int:
    """Drop the cancelled entries from a kombu event-loop timer's schedule; how many.

    The prefork pool schedules a hard-time-limit timer for every job and cancels it when the job
    ends, but kombu's timer keeps a cancelled entry in its heap until the entry falls due: with
    `task_time_limit` at an hour, the worker's main process held every job's entry (about 500
    bytes) for an hour, growing 0.5 MiB per 1,000 jobs (bench/worker_memory.py; plain Celery the
    same). Called on the event loop itself, between timers: the schedule is rebuilt in place,
    as a heap, so the loop's iterator over it carries on.
    """
    queue = timer._queue
    live = [item for item in queue if not item[2].canceled]
    dropped = len(queue) - len(live)
    if dropped:
        heapq.heapify(live)
        queue[:] = live
    return dropped


class ConveyorConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer, changed four ways: buffered task events flush on a timer, not every
    loop; a malformed message is rejected, never the consumer's end; a lost connection does not
    hand the jobs still running back to their queue; cancelled timers leave the event loop's
    schedule within `TIMER_PURGE_INTERVAL` seconds instead of staying until due."""

    _conveyor_flush_pending = False

    @cached_property
    def _event_flush_interval(self) -> float:
        """Read once: this runs for every task event (three a job) in the worker's busiest
        process, and a lookup through Celery's configuration costs about a microsecond."""
        settings = getattr(self.app.conf, "conveyor_settings", None)
        return float(getattr(settings, "event_flush_interval", 0.1))

    def on_send_event_buffered(self) -> None:
        if not self.hub:
            return
        interval = self._event_flush_interval
        if interval <= 0:
            super().on_send_event_buffered()
            return
        if not self._conveyor_flush_pending:
            self._conveyor_flush_pending = True
            self.hub.call_later(interval, self._conveyor_timed_flush)

    def _conveyor_timed_flush(self) -> None:
        self._conveyor_flush_pending = False
        self._flush_events()

    def _flush_now(self) -> None:
        try:
            self._flush_events()
        except Exception as exc:  # noqa: BLE001 - shutting down: report, do not block it
            log.warning("could not flush task events at shutdown: %s", exc)

    def register_with_event_loop(self, hub: Any) -> None:
        super().register_with_event_loop(hub)
        if not getattr(hub, "_conveyor_purges_timers", False):  # once per hub, not per reconnect
            hub._conveyor_purges_timers = True
            hub.call_repeatedly(TIMER_PURGE_INTERVAL, purge_cancelled_timers, hub.timer)

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        """A lost connection leaves the old channel's unacknowledged messages where they are.

        Closing a kombu Redis channel gives every message it has not acknowledged back to its
        queue (`restore_at_shutdown`), reconnecting to do it, while Celery goes on running those
        jobs (`worker_cancel_long_running_tasks_on_connection_loss` off): a copy that a free
        slot takes runs beside its original. Nothing needs that restore here: the recovery
        heartbeat keeps claiming every request this worker still holds (worker/recovery.py), and
        once a job is done its message, no longer claimed, is given back by the sweep and
        acknowledged without a rerun (`leave_lost_channels_to_recovery`). A clean shutdown still
        restores as before.

        Running jobs are kept on purpose (`worker_cancel_long_running_tasks_on_connection_loss`
        off, the recovery heartbeat claims them), so Celery's seven-line notice that a future
        version will cancel them is left out of the log of every reconnect.
        """
        connection = self.connection
        transport = getattr(connection, "_transport", None) if connection is not None else None
        for channel in list(getattr(transport, "channels", None) or ()):
            channel.do_restore = False
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="(?s).*worker_cancel_long_running_tasks_on_connection_loss",
                                    category=CPendingDeprecationWarning)
            super().on_connection_error_after_connected(exc)

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        """Any error handling one message rejects that message (logged), never the consumer.

        Celery lets an error from a malformed task message (a body that is not
        `[args, kwargs, embed]`, a missing header) escape to the consumer, which then stops or,
        since kombu's Redis transport counts `KeyError` as a connection error, restarts for ever.
        """
        handler = super().create_task_handler(*args, **kwargs)
        connection_errors = tuple(e for e in self.connection_errors if e is not KeyError)

        def on_task_received(message: Any) -> Any:
            try:
                return handler(message)
            except connection_errors:
                raise
            except Exception as exc:  # noqa: BLE001 - one bad message must not stop the worker
                self.on_invalid_task(None, message, exc)
                return None

        return on_task_received

    def stop(self) -> None:
        self._flush_now()
        super().stop()

    def shutdown(self) -> None:
        self._flush_now()
        super().shutdown()


class SentEventBatcher:
    """The producer side's task-sent events, published in batches from a background thread.

    Takes the place of `app.amqp._event_dispatcher`, the dispatcher Celery's
    `send_task_message` publishes sent events with unless a caller passes its own; only its
    `publish(type, fields, producer, ...)` is called. Events are stamped (clock, time, host,
    pid) when the message is sent, not when the batch goes out. A batch that cannot be
    published (the broker is away) is dropped with a warning: these are monitoring events, and
    the job store, not the event stream, is the record of what was enqueued.
    """

    #: Publish at once, from the caller's thread, when this many events wait.
    LIMIT = 1000

    def __init__(self, app: Celery, interval: float) -> None:
        self.app = app
        self.interval = interval
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._events: list[dict[str, Any]] = []
        self._pid = 0
        self._dispatcher: Any = None

    def publish(self, type: str, fields: dict[str, Any], producer: Any, blind: bool = False,
                **_: Any) -> None:
        from celery.events.event import Event
        from celery.utils.time import utcoffset

        pid = os.getpid()
        event = Event(type, hostname=self._hostname(), utcoffset=utcoffset(), pid=pid,
                      clock=None if blind else self.app.clock.forward(), **fields)
        with self._lock:
            if self._pid != pid:  # first use in this process (or a forked child): own thread
                self._start(pid)
            self._events.append(event)
            full = len(self._events) >= self.LIMIT
        if full:
            self.flush()

    def _hostname(self) -> str:
        from celery.utils.nodenames import anon_nodename

        name = self.__dict__.get("_name")
        if name is None:
            name = self.__dict__["_name"] = anon_nodename()
        return name

    def _start(self, pid: int) -> None:
        self._pid, self._events, self._dispatcher = pid, [], None
        threading.Thread(target=self._run, name="conveyor-sent-events", daemon=True).start()
        atexit.register(self.flush)

    def _run(self) -> None:
        pid = self._pid
        while self._pid == pid:
            self._wake.wait(self.interval)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        with self._lock:
            events, self._events = self._events, []
            if not events or self._pid != os.getpid():
                return
            try:
                if self._dispatcher is None:
                    self._dispatcher = self.app.events.Dispatcher(self.app.connection_for_write(),
                                                                  enabled=True)
                d = self._dispatcher
                d.producer.publish(events, routing_key="task.multi", exchange=d.exchange.name,
                                   declare=[d.exchange], serializer=d.serializer, headers=d.headers,
                                   delivery_mode=d.delivery_mode, retry=True,
                                   retry_policy={"max_retries": 1, "interval_start": 0.2})
            except Exception as exc:  # noqa: BLE001 - monitoring only: never fail the caller
                log.warning("dropped %d task-sent events: %s", len(events), exc)
                self._dispatcher = None


def batch_sent_events(app: Celery) -> bool:
    """Make `app`'s producer publish task-sent events in batches (see `SentEventBatcher`)."""
    if not _tested("celery", celery.__version__):
        return False
    settings = getattr(app.conf, "conveyor_settings", None)
    interval = float(getattr(settings, "event_flush_interval", 0.1))
    if interval <= 0 or not app.conf.task_send_sent_event:
        return False
    # `send_task_message` binds this cached property as its default dispatcher when it is
    # first built: set it before the app sends anything.
    app.amqp.__dict__["_event_dispatcher"] = SentEventBatcher(app, interval)
    return True


def reuse_redis_clients() -> bool:
    """Make kombu's Redis channels reuse one client per connection pool (idempotent)."""
    from kombu.transport import redis as redis_transport

    channel = redis_transport.Channel
    if getattr(channel, "_conveyor_reuses_clients", False):
        return True
    if not _tested("kombu", kombu.__version__):
        return False

    @contextmanager
    def conn_or_acquire(self: Any, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        cached = self.__dict__.get("_conveyor_client")
        if cached is None or cached.connection_pool is not self.pool:
            cached = self.__dict__["_conveyor_client"] = self._create_client()
        yield cached

    channel.conn_or_acquire = conn_or_acquire
    channel._conveyor_reuses_clients = True
    return True


class _Received(dict):  # type: ignore[type-arg]
    """A message as kombu's Redis transport decoded it, with the JSON text it was decoded from."""

    __slots__ = ("text",)
    text: str


def store_unacked_as_received() -> bool:
    """Make kombu's Redis QoS store a delivered message's unacknowledged copy as the JSON text
    the message arrived as, instead of decoding it and encoding it again (idempotent).

    The transport decodes each message it pops (`loads`) and hands the result straight to
    `QoS.append`, which stores `dumps([message, exchange, routing_key])`; nothing changes the
    message in between (kombu's `basic_consume` callback builds the `Message` and appends it
    before anyone else sees it). So the text it arrived as decodes to the very same message,
    exactly, whatever it holds (kombu's typed values, NaN, big integers), at a fraction of the
    cost: 10 us a job in the consumer, the worker's busiest process, for an envelope of 1 KB.
    Anything else the transport encodes, a message restored with a changed header among them,
    goes through kombu's `dumps` as before.
    """
    from kombu.transport import redis as redis_transport

    if getattr(redis_transport, "_conveyor_stores_received", False):
        return True
    if not _tested("kombu", kombu.__version__):
        return False
    loads, dumps = redis_transport.loads, redis_transport.dumps

    def loads_keeping_text(s: Any, **kwargs: Any) -> Any:
        value = loads(s, **kwargs)
        if type(value) is dict and type(s) is str:
            value = _Received(value)
            value.text = s
        return value

    def dumps_stored_as_received(value: Any, **kwargs: Any) -> Any:
        if (type(value) is list and len(value) == 3 and type(value[0]) is _Received and not kwargs
                and type(value[1]) is str and type(value[2]) is str):  # QoS.append's copy
            return f"[{value[0].text}, {encode_basestring_ascii(value[1])}, {encode_basestring_ascii(value[2])}]"
        return dumps(value, **kwargs)

    redis_transport.loads = loads_keeping_text
    redis_transport.dumps = dumps_stored_as_received
    redis_transport._conveyor_stores_received = True
    return True


def drop_malformed_messages() -> bool:
    """Make kombu's Redis channel log and drop a queue item that is not a kombu message (not
    JSON, not an object, an unknown body encoding) instead of raising out of the worker's event
    loop, which stops the worker. The item was already popped; there is nothing to give back."""
    from kombu.transport import redis as redis_transport

    channel = redis_transport.Channel
    if getattr(channel, "_conveyor_drops_malformed", False):
        return True
    if not _tested("kombu", kombu.__version__):
        return False
    read = channel._brpop_read

    def _brpop_read(self: Any, **options: Any) -> Any:
        try:
            return read(self, **options)
        except redis_transport.Empty:
            raise
        except Exception as exc:  # noqa: BLE001
            # kombu counts any KeyError as a lost connection (a stale poller descriptor, kombu
            # #2582, raised outside this read), but one raised here, after the pop, is the
            # item's: a JSON object without 'properties' is not a message. Reconnecting for
            # it only cost the worker its connection and its running jobs' channel.
            if isinstance(exc, self.connection_errors) and not isinstance(exc, KeyError):
                raise
            log.error("dropped a malformed message from Redis: %r", exc)
            return True

    channel._brpop_read = _brpop_read
    channel._conveyor_drops_malformed = True
    return True


def leave_lost_channels_to_recovery() -> bool:
    """Make acknowledging or rejecting a message on a channel that a lost connection closed do
    nothing but log (idempotent).

    Such a channel has no connection left, and kombu raises `AttributeError` from it, which
    stops the worker. Since `ConveyorConsumer` keeps kombu from giving that channel's messages
    back on a lost connection, the message stays in Redis's `unacked` hash, claimed while this
    worker runs its job (worker/recovery.py); once the job is done nothing claims it, the sweep
    gives it back, and its next delivery finds the job's record final and is acknowledged
    without running (a rejected one, requeued, runs again). So nothing is lost and nothing runs
    twice, at the price of one extra delivery.
    """
    from kombu.transport import redis as redis_transport

    qos = redis_transport.QoS
    if getattr(qos, "_conveyor_leaves_lost_channels", False):
        return True
    if not _tested("kombu", kombu.__version__):
        return False
    ack, reject = qos.ack, qos.reject

    def on_lost_channel(self: Any, what: str, delivery_tag: str) -> bool:
        if not getattr(self.channel, "closed", False) or getattr(self.channel, "connection", None):
            return False
        log.info("message %s came through a connection since lost: its %s is left to the "
                 "recovery sweep", delivery_tag, what)
        self._delivered.pop(delivery_tag, None)
        return True

    def ack_(self: Any, delivery_tag: str) -> None:
        if not on_lost_channel(self, "acknowledgement", delivery_tag):
            ack(self, delivery_tag)

    def reject_(self: Any, delivery_tag: str, requeue: bool = False) -> None:
        if not on_lost_channel(self, "rejection", delivery_tag):
            reject(self, delivery_tag, requeue)

    qos.ack, qos.reject = ack_, reject_
    qos._conveyor_leaves_lost_channels = True
    return True


class _Bookkeeping:
    """One kombu Redis channel's unacknowledged-message bookkeeping, on a connection of its
    own, each batch sent without waiting for Redis's answer.

    kombu stores a copy of every message a consumer takes (`QoS.append`) and deletes it when
    the message is acknowledged (`QoS.ack`), each a MULTI/EXEC that the worker's main process
    sent and then waited for: two round trips a job, the longest waits of that process (650 us
    each on average on a busy 2-core machine, while the job's next step waited too). Here a
    batch is sent and the worker goes on; its answer is read when the next batch goes out (by
    then it has long arrived), and all answers are read before anything that must see the
    bookkeeping done: a restore, a rejection that requeues, a claim of the messages held
    (`settle`). Redis runs one connection's commands in order, so a message's copy is always
    stored before it is deleted. A failed command is logged; a lost connection raises, as
    kombu's own call would have, and what it left unanswered is left to the recovery sweep
    (an acknowledgement that did not land means one more delivery, which the job's final
    record turns into an acknowledgement without a rerun).

    Used from the worker's event loop only, as kombu's QoS is.
    """

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.connection: Any = None
        self.pool: Any = None
        self.pid = 0
        self.unanswered: list[list[tuple[Any, ...]]] = []

    def _forget_if_closed(self) -> None:
        """A closed connection (lost, or the pool's disconnect) took its answers with it."""
        if self.connection is None or self.connection._sock is None:
            self.unanswered = []

    def _connection(self) -> Any:
        pool = self.channel.pool
        if self.connection is None or self.pool is not pool or self.pid != os.getpid():
            self.connection, self.pool, self.pid = pool.get_connection(), pool, os.getpid()
            self.unanswered = []
        self._forget_if_closed()
        return self.connection

    def send(self, commands: list[tuple[Any, ...]]) -> None:
        connection = self._connection()
        batch = [("MULTI",), *commands, ("EXEC",)]
        try:
            # No health check: its PING would read the answers still due.
            connection.send_packed_command(connection.pack_commands(batch), check_health=False)
        except Exception:
            self.unanswered = []
            raise
        self.unanswered.append(batch)
        while len(self.unanswered) > 1:
            self._read(self.unanswered.pop(0))

    def settle(self) -> None:
        """Read every answer still due: Redis has then run everything sent."""
        self._forget_if_closed()
        while self.unanswered:
            self._read(self.unanswered.pop(0))

    def _read(self, batch: list[tuple[Any, ...]]) -> None:
        for command in batch:
            try:
                answer = self.connection.read_response()
            except redis.ResponseError as exc:
                log.error("Redis refused %s of a message's bookkeeping: %s", command[0], exc)
                continue
            except Exception:
                self.unanswered = []
                raise
            if command[0] == "EXEC":
                for item in answer if isinstance(answer, list) else ():
                    if isinstance(item, Exception):
                        log.error("Redis refused part of a message's bookkeeping: %s", item)


class _BookkeepingPipe:
    """The pipeline kombu's Redis QoS builds its bookkeeping with (`zadd`, `hset`, `zrem`,
    `hdel`, then `execute`), sent through `_Bookkeeping`."""

    def __init__(self, book: _Bookkeeping) -> None:
        self.book = book
        self.commands: list[tuple[Any, ...]] = []

    def zadd(self, key: str, mapping: dict[str, float]) -> _BookkeepingPipe:
        for member, score in mapping.items():
            self.commands.append(("ZADD", key, score, member))
        return self

    def hset(self, key: str, field: str, value: Any) -> _BookkeepingPipe:
        self.commands.append(("HSET", key, field, value))
        return self

    def zrem(self, key: str, *members: str) -> _BookkeepingPipe:
        self.commands.append(("ZREM", key, *members))
        return self

    def hdel(self, key: str, *fields: str) -> _BookkeepingPipe:
        self.commands.append(("HDEL", key, *fields))
        return self

    def execute(self) -> None:
        commands, self.commands = self.commands, []
        self.book.send(commands)


def _bookkeeping(qos: Any) -> _Bookkeeping:
    book = qos.__dict__.get("_conveyor_bookkeeping")
    if book is None:
        book = qos.__dict__["_conveyor_bookkeeping"] = _Bookkeeping(qos.channel)
    return book  # type: ignore[no-any-return]


def settle_bookkeeping(qos: Any) -> None:
    """Wait until Redis has run the bookkeeping `qos` sent (nothing to do if none is due)."""
    book = getattr(qos, "__dict__", {}).get("_conveyor_bookkeeping")
    if book is not None:
        book.settle()


def unacked_bookkeeping_without_waiting() -> bool:
    """Make kombu's Redis QoS send its unacked bookkeeping without waiting for the answer
    (see `_Bookkeeping`; idempotent)."""
    from kombu.transport import redis as redis_transport

    qos = redis_transport.QoS
    if getattr(qos, "_conveyor_books_without_waiting", False):
        return True
    if not (_tested("kombu", kombu.__version__) and _tested("redis", redis.__version__)):
        return False
    pipe_or_acquire = qos.pipe_or_acquire

    @contextmanager
    def pipe_or_acquire_(self: Any, pipe: Any = None, client: Any = None) -> Iterator[Any]:
        if pipe is None and client is None:  # QoS.append's and QoS.ack's own pipeline
            yield _BookkeepingPipe(_bookkeeping(self))
        else:
            with pipe_or_acquire(self, pipe, client) as given:
                yield given

    def settled(method: Any) -> Any:
        def run(self: Any, *args: Any, **kwargs: Any) -> Any:
            settle_bookkeeping(self)
            return method(self, *args, **kwargs)

        return run

    channel = redis_transport.Channel
    disconnect_pools = channel._disconnect_pools

    def _disconnect_pools(self: Any) -> None:  # closing the channel, before its restore
        qos = self.__dict__.get("qos")
        if qos is not None:
            try:
                settle_bookkeeping(qos)
            except Exception as exc:  # noqa: BLE001 - a lost connection: nothing to wait for
                log.debug("bookkeeping unanswered at close: %s", exc)
        disconnect_pools(self)

    channel._disconnect_pools = _disconnect_pools
    qos.pipe_or_acquire = pipe_or_acquire_
    for name in ("restore_by_tag", "restore_unacked", "restore_visible"):
        setattr(qos, name, settled(getattr(qos, name)))
    qos._conveyor_books_without_waiting = True
    return True


class _KnownReaders:
    """A kombu event loop as one caller sees it: `add_reader` skips a reader the loop already
    has (the same descriptor, callback and arguments); everything else is the loop's own."""

    def __init__(self, hub: Any) -> None:
        self._hub = hub

    def __getattr__(self, name: str) -> Any:
        return getattr(self._hub, name)

    def add_reader(self, fd: Any, callback: Any, *args: Any) -> Any:
        if type(fd) is int and self._hub.readers.get(fd) == (callback, args):
            return None
        return self._hub.add_reader(fd, callback, *args)


def skip_redundant_poll_registrations() -> bool:
    """Keep the worker's event loop from asking epoll for what it already has (idempotent).

    Between two jobs the worker's main process went round its event loop a few times, and on
    every round kombu's Redis transport added its sockets' readers again, the prefork pool
    removed a writer from each idle child's pipe, and after every result the pool added the
    result pipe's reader again: a dozen `epoll_ctl` calls a job (strace, 1,000 jobs), nine of
    them failing (EEXIST, ENOENT) because the descriptor was already registered, or never was.
    kombu's epoll wrapper ignores those errors, so each was a system call for nothing, in the
    worker's busiest process. Now:

    - `Hub.remove_writer` of a descriptor the loop does not watch for writing does nothing
      (kombu unregistered it, failing, and re-registered it as a reader when it was one);
    - the Redis transport's and the pool's result handler's `add_reader` skip a reader the loop
      already has. The loop's reader table is the record of what is registered: the transport
      registers every socket it polls itself and takes a lost connection's descriptors out of
      the loop (`loop.remove`), and the pool removes a child's result pipe before closing it,
      so a descriptor in the table with that very callback is registered already.
    """
    from celery.concurrency import asynpool
    from kombu.asynchronous.hub import Hub
    from kombu.transport import redis as redis_transport
    from kombu.utils.compat import fileno

    if getattr(Hub, "_conveyor_skips_redundant", False):
        return True
    if not (_tested("kombu", kombu.__version__) and _tested("celery", celery.__version__)):
        return False
    remove_writer = Hub.remove_writer

    def remove_writer_(self: Any, fd: Any) -> None:
        try:
            watched = fileno(fd) in self.writers
        except Exception:  # noqa: BLE001 - a closed file: as kombu would
            watched = True
        if watched:
            remove_writer(self, fd)

    register = redis_transport.Transport.register_with_event_loop
    make_result = asynpool.ResultHandler._make_process_result

    def register_with_event_loop(self: Any, connection: Any, loop: Any) -> Any:
        return register(self, connection, _KnownReaders(loop))

    def _make_process_result(self: Any, hub: Any) -> Any:
        return make_result(self, _KnownReaders(hub))

    Hub.remove_writer = remove_writer_
    redis_transport.Transport.register_with_event_loop = register_with_event_loop
    asynpool.ResultHandler._make_process_result = _make_process_result
    Hub._conveyor_skips_redundant = True
    return True


def apply(app: Celery) -> None:
    """Apply the changes for `app`: its workers batch event flushes, survive malformed messages
    and lost connections, and purge cancelled timers; its producers batch task-sent events; this
    process reuses Redis clients, stores unacknowledged copies as received without waiting for
    Redis's answer, and skips redundant epoll registrations."""
    if _tested("celery", celery.__version__):
        app.conf.worker_consumer = "worker.patches:ConveyorConsumer"
        batch_sent_events(app)
    reuse_redis_clients()
    store_unacked_as_received()
    unacked_bookkeeping_without_waiting()
    drop_malformed_messages()
    leave_lost_channels_to_recovery()
    skip_redundant_poll_registrations()
