"""Changes to Celery's and kombu's behaviour: two win back what task events cost, two keep a
malformed message from stopping a worker (`create_task_handler`, `drop_malformed_messages`).

Measured (bench/throughput.py; ../shared/PERFORMANCE.md has the analysis): the worker's consumer
process is the bottleneck of a Celery-on-Redis worker, and two things in it cost a third of
its throughput once task events are on, as Flower needs them:

1. **Event flushing.** Celery buffers task events but asks the event loop to flush the buffer
   on every iteration, so it publishes about one PUBLISH for every two events. `EventBatchingConsumer`
   flushes at most every `event_flush_interval` seconds (default 0.1) instead, through Celery's own
   extension point (the `worker_consumer` setting). Same events, same exchange, in order; the buffer
   still flushes early when full (Celery's buffer_limit) and on shutdown. Monitors see events up to
   one interval later.
2. **Redis client reuse.** kombu's Redis channel builds a new `redis.Redis` object for every
   command (`Channel.conn_or_acquire`): every LPUSH, PUBLISH, ack and unacked-bookkeeping call.
   `reuse_redis_clients()` makes each channel keep one client per connection pool (redis-py clients
   are thread-safe and stateless apart from the pool). A new pool (after fork or a reconnect)
   gets a new client.

Both are applied explicitly by `worker.factory.create_app` (unless `patch=False`), only on the
versions they were tested with (`TESTED`); on other versions they are skipped with a warning.
tests/core/test_patches.py fails if an upgrade changes what they rely on. Both are small enough
to propose upstream as options.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import celery
import kombu
from celery import Celery
from celery.worker.consumer import Consumer

log = logging.getLogger("conveyor.patches")

#: (major, minor) versions these changes were written and tested against.
TESTED = {"celery": {(5, 7)}, "kombu": {(5, 7)}}


def _tested(name: str, version: str) -> bool:
    major_minor = tuple(int(p) for p in version.split(".")[:2])
    if major_minor in TESTED[name]:
        return True
    log.warning("not applying Conveyor's %s patch: tested with %s, found %s",
                name, sorted(TESTED[name]), version)
    return False


class EventBatchingConsumer(Consumer):  # type: ignore[misc]
    """A Celery consumer that flushes buffered task events on a timer, not every loop."""

    _conveyor_flush_pending = False

    def _event_flush_interval(self) -> float:
        settings = getattr(self.app.conf, "conveyor_settings", None)
        return float(getattr(settings, "event_flush_interval", 0.1))

    def on_send_event_buffered(self) -> None:
        if not self.hub:
            return
        interval = self._event_flush_interval()
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
        except (redis_transport.Empty, *self.connection_errors):
            raise
        except Exception as exc:  # noqa: BLE001
            log.error("dropped a malformed message from Redis: %r", exc)
            return True

    channel._brpop_read = _brpop_read
    channel._conveyor_drops_malformed = True
    return True


def apply(app: Celery) -> None:
    """Apply the changes for `app`: its workers batch event flushes and survive malformed
    messages; this process reuses Redis clients."""
    if _tested("celery", celery.__version__):
        app.conf.worker_consumer = "worker.patches:EventBatchingConsumer"
    reuse_redis_clients()
    drop_malformed_messages()
