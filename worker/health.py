"""Health of a deployment: broker and job store reachable, schema current, workers, queue depths."""

from __future__ import annotations

from typing import Any

from config import Settings, mask_url
from tasks.registry import QUEUES

#: kombu's Redis transport keeps each priority level of a queue in a list of its own.
PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)


def queue_keys(queue: str) -> list[str]:
    return [queue if p == 0 else f"{queue}{PRIORITY_SEPARATOR}{p}" for p in PRIORITY_STEPS]


def queue_depths(broker_url: str, queues: tuple[str, ...] = QUEUES,
                 sentinel_master: str | None = None) -> dict[str, int]:
    """Messages waiting in each queue (all priority levels), read straight from Redis."""
    from config.redis_client import redis_client

    client = redis_client(broker_url, sentinel_master, socket_connect_timeout=2, socket_timeout=2)
    try:
        pipe = client.pipeline(transaction=False)
        for q in queues:
            for key in queue_keys(q):
                pipe.llen(key)
        counts = pipe.execute()
    finally:
        client.close()
    steps = len(PRIORITY_STEPS)
    return {q: sum(counts[i * steps:(i + 1) * steps]) for i, q in enumerate(queues)}


def check(settings: Settings, timeout: float = 2.0) -> dict[str, Any]:
    """Check every part; never raises, reports what is down and why."""
    from jobs.migrate import is_current
    from jobs.store import JobStore

    report: dict[str, Any] = {
        "broker": {"url": mask_url(settings.broker_url), "ok": False},
        "database": {"url": mask_url(settings.database_url), "ok": False},
        "workers": [],
        "queues": {},
    }
    try:
        report["queues"] = queue_depths(settings.broker_url, sentinel_master=settings.redis_sentinel_master)
        report["broker"]["ok"] = True
    except Exception as exc:  # noqa: BLE001
        report["broker"]["error"] = str(exc).splitlines()[0]
    try:
        JobStore(settings.database_url).ping()
        report["database"]["ok"] = True
        report["database"]["migrations_current"] = is_current(settings.database_url)
    except Exception as exc:  # noqa: BLE001
        report["database"]["error"] = str(exc).splitlines()[0]
    if report["broker"]["ok"]:
        from jobs.client import default_client

        try:
            replies = default_client().app.control.ping(timeout=timeout) or []
            report["workers"] = sorted(name for reply in replies for name in reply)
        except Exception as exc:  # noqa: BLE001
            report["workers_error"] = str(exc).splitlines()[0]
    report["stalled"] = []
    if report["broker"]["ok"]:
        try:
            report["stalled"] = sorted(stalled_workers(settings, report["queues"]))
        except Exception as exc:  # noqa: BLE001
            report["stalled_error"] = str(exc).splitlines()[0]
    report["ok"] = bool(report["broker"]["ok"] and report["database"]["ok"]
                        and report["database"].get("migrations_current") and not report["stalled"])
    return report


def stalled_workers(settings: Settings, depths: dict[str, int] | None = None) -> dict[str, str]:
    """Workers alive but not consuming (`worker.recovery.stalled_nodes`), each with the reason.

    `depths` are the queue depths when the caller has just read them."""
    from config.redis_client import redis_client
    from worker.recovery import live_nodes, stalled_nodes

    client = redis_client(settings.broker_url, settings.redis_sentinel_master,
                          socket_connect_timeout=2, socket_timeout=2)
    try:
        nodes = live_nodes(client)
    finally:
        client.close()
    if not nodes:
        return {}
    if depths is None:
        depths = queue_depths(settings.broker_url, sentinel_master=settings.redis_sentinel_master)
    reasons = {}
    for name in stalled_nodes(nodes, depths, settings.stall_after):
        waiting = ", ".join(f"{depths[q]} in {q}" for q in nodes[name].get("queues", []) if depths.get(q))
        reasons[name] = f"{waiting} waiting, nothing received for over {settings.stall_after:.0f}s"
    return reasons


def message_ids(broker_url: str, queues: tuple[str, ...] = QUEUES, chunk: int = 1000,
                sentinel_master: str | None = None) -> set[str]:
    """Ids of every job with a message in Redis: waiting in a queue or held unacknowledged."""
    import json

    from config.redis_client import redis_client

    client = redis_client(broker_url, sentinel_master, socket_connect_timeout=2, socket_timeout=10)
    ids: set[str] = set()

    def take(raw: bytes | str, wrapped: bool) -> None:
        try:
            message = json.loads(raw)
            if wrapped:  # kombu's unacked hash keeps [message, exchange, routing_key]
                message = message[0]
            ids.add(message["headers"]["id"])
        except (ValueError, KeyError, TypeError, IndexError):
            pass

    try:
        for q in queues:
            for key in queue_keys(q):
                start = 0
                while batch := client.lrange(key, start, start + chunk - 1):
                    for raw in batch:
                        take(raw, wrapped=False)
                    start += chunk
        for _, raw in client.hscan_iter("unacked", count=chunk):
            take(raw, wrapped=True)
    finally:
        client.close()
    return ids
