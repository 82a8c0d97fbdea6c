"""Give a dead worker's messages back to their queues, without shrinking the visibility timeout.

kombu keeps every message a Redis consumer took but has not acknowledged in its `unacked` hash,
and on its own gives one back only after the visibility timeout (hours, since it must outlast
the longest job). Conveyor's workers instead claim what they hold:

- `NodeHeartbeat`, a consumer bootstep, writes the delivery tags its consumer holds to
  `conveyor:node:<hostname>` every `recovery_heartbeat_interval` seconds, with a time-to-live of
  `recovery_node_ttl`. It runs on the consumer's own event loop, so it reads kombu's bookkeeping
  without racing it, and it stops when the process dies, however it dies.
- `sweep()` (every worker's main process runs it every `recovery_sweep_interval` seconds, under
  kombu's own `unacked_mutex`, so one sweeper at a time and never alongside kombu's restore)
  restores every unacknowledged message older than `recovery_min_age` that no live worker
  claims, through kombu's `restore_by_tag`, which marks it redelivered. It does nothing while
  Redis has been up for less than `recovery_node_ttl` (a restart loses or lapses the claims of
  live workers that have not reconnected yet).

A live worker keeps claiming a long job's message, so it is never handed to a second worker.
This is how Dramatiq and Sidekiq Pro recover from dead workers.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from celery import Celery, bootsteps
from celery.worker import state as worker_state

from worker.patches import settle_bookkeeping

log = logging.getLogger("conveyor.recovery")

NODE_PREFIX = "conveyor:node:"


def _settings(app: Celery) -> Any:
    return app.conf.conveyor_settings


class NodeHeartbeat(bootsteps.StartStopStep):  # type: ignore[misc]
    """Claims the consumer's unacknowledged messages in Redis, and sweeps up dead workers'."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.tref: Any = None
        self.sweeper: threading.Thread | None = None
        self.stopping = threading.Event()
        self.started_at = time.time()

    def start(self, c: Any) -> None:
        settings = _settings(c.app)
        self.started_at = time.time()
        self.beat(c)
        self.tref = c.timer.call_repeatedly(settings.recovery_heartbeat_interval, self.beat, (c,),
                                            priority=10)
        if self.sweeper is None:
            self.sweeper = threading.Thread(target=self._sweep_loop, args=(c.app,),
                                            name="conveyor-recovery", daemon=True)
            self.sweeper.start()

    def stop(self, c: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    def shutdown(self, c: Any) -> None:
        self.stop(c)
        self.stopping.set()
        try:  # a clean exit gives its claim up at once (kombu requeues what it held)
            with c.task_consumer.channel.conn_or_acquire() as client:
                client.delete(NODE_PREFIX + c.hostname)
        except Exception:  # noqa: BLE001
            pass

    def beat(self, c: Any) -> None:
        try:
            channel = c.task_consumer.channel
            qos = channel.qos
            # Acknowledgements sent but not yet answered have left `_delivered` already: wait
            # until Redis has run them, so no message is unclaimed while still in `unacked`.
            settle_bookkeeping(qos)
            # kombu keeps acknowledged tags in `_delivered` until its next flush (`_dirty`)
            held = {t for t in list(qos._delivered) if t not in qos._dirty}
            # After a Redis reconnect the consumer has a new channel, but jobs taken through the
            # old one still run: claim every request the worker holds, not just this channel's.
            for request in (*worker_state.active_requests, *worker_state.reserved_requests):
                # (a Request's own `delivery_info` leaves the tag out; its message has it)
                tag = getattr(getattr(request, "message", None), "delivery_tag", None)
                if tag:
                    held.add(tag)
            tags = sorted(held)
            claim = json.dumps({
                "tags": tags, "ts": time.time(),
                # what `conveyor status` needs to tell a worker that stopped consuming
                "received": _last_received.get("ts", 0.0), "started": self.started_at,
                "concurrency": getattr(c.controller, "concurrency", None),
                "queues": sorted(q.name for q in c.task_consumer.queues),
            })
            ttl = max(1, int(_settings(c.app).recovery_node_ttl))
            with channel.conn_or_acquire() as client:
                client.set(NODE_PREFIX + c.hostname, claim, ex=ttl)
        except Exception as exc:  # noqa: BLE001 - Redis away: the claim simply lapses
            log.debug("heartbeat failed: %s", exc)

    def _sweep_loop(self, app: Celery) -> None:
        interval = _settings(app).recovery_sweep_interval
        while not self.stopping.wait(interval):
            try:
                restored = sweep(app)
                if restored:
                    log.warning("gave %d unclaimed messages back to their queues (a worker or a "
                                "connection was lost)", len(restored))
            except Exception as exc:  # noqa: BLE001
                log.warning("recovery sweep failed: %s", exc)


def sweep(app: Celery, min_age: float | None = None) -> list[str]:
    """Restore unacknowledged messages older than `min_age` that no live worker claims."""
    from kombu.transport.redis import Mutex, MutexHeld

    settings = _settings(app)
    min_age = settings.recovery_min_age if min_age is None else min_age
    restored: list[str] = []
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        if not hasattr(channel, "unacked_index_key"):
            return restored  # not a Redis broker
        with channel.conn_or_acquire() as client:
            if int(client.info("server").get("uptime_in_seconds", 0)) < settings.recovery_node_ttl:
                # Redis has just (re)started: the claims of workers still reconnecting (kombu
                # waits up to 30 s between attempts) lapsed or died with it, and their jobs
                # still run. Claims are trusted once every live worker has had a node TTL to
                # beat again; until then nothing looks dead.
                return restored
            candidates = [t.decode() if isinstance(t, bytes) else t for t in
                          client.zrangebyscore(channel.unacked_index_key, 0, time.time() - min_age)]
            if not candidates:
                return restored
            try:
                with Mutex(client, channel.unacked_mutex_key, channel.unacked_mutex_expire):
                    claimed = live_claims(client)
                    for tag in candidates:
                        if tag not in claimed:
                            channel.qos.restore_by_tag(tag, client=client)
                            restored.append(tag)
            except MutexHeld:
                pass
    return restored


def live_claims(client: Any) -> set[str]:
    """Every delivery tag a live worker claims."""
    claimed: set[str] = set()
    for key in client.scan_iter(match=NODE_PREFIX + "*", count=100):
        raw = client.get(key)
        if raw:
            claimed.update(json.loads(raw).get("tags", []))
    return claimed


def live_nodes(client: Any) -> dict[str, dict[str, Any]]:
    """Worker hostname -> its last claim (tags, ts), for status reports."""
    nodes = {}
    for key in client.scan_iter(match=NODE_PREFIX + "*", count=100):
        raw = client.get(key)
        if raw:
            name = key.decode() if isinstance(key, bytes) else key
            nodes[name.removeprefix(NODE_PREFIX)] = json.loads(raw)
    return nodes


#: When this worker's consumer last received a message (for stall detection).
_last_received: dict[str, float] = {}


def _on_received(**_: Any) -> None:
    _last_received["ts"] = time.time()


def stalled_nodes(nodes: dict[str, dict[str, Any]], depths: dict[str, int], stall_after: float,
                  now: float | None = None) -> list[str]:
    """Workers alive but not consuming: one of their queues has messages waiting, they have a
    free slot, and they received nothing for `stall_after` seconds (nor since they started).
    The classic case is a consumer that stays connected after a Redis reconnect but stops
    fetching."""
    now = time.time() if now is None else now
    stuck = []
    for name, claim in nodes.items():
        waiting = any(depths.get(q, 0) for q in claim.get("queues", []))
        free = claim.get("concurrency") is None or len(claim.get("tags", [])) < claim["concurrency"]
        last = max(claim.get("received") or 0.0, claim.get("started") or 0.0)
        if waiting and free and last and now - last > stall_after:
            stuck.append(name)
    return sorted(stuck)


def install(app: Celery) -> None:
    """Add the heartbeat step to `app`'s worker consumers."""
    from celery import signals

    app.steps["consumer"].add(NodeHeartbeat)
    signals.task_received.connect(_on_received, weak=False, dispatch_uid="conveyor.last_received")
