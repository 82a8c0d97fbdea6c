"""A redis-py client for a Redis URL from the settings, plain (`redis://`, `rediss://`) or Sentinel.

kombu and Celery resolve `sentinel://` URLs themselves, with the master's name from
`CONVEYOR_REDIS_SENTINEL_MASTER` (worker/factory.py passes it as `master_name`). Conveyor's own
direct Redis work (rate limits, queue depths, the beat leader lock, the analysis split's
bookkeeping, `conveyor status`) comes through here and does the same with redis-py's `Sentinel`:
each call asks the Sentinels for the current master, so it follows a failover.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlparse

import redis
from redis.sentinel import Sentinel


def redis_client(url: str, sentinel_master: str | None = None, **kwargs: Any) -> redis.Redis:
    """A client for `url`; `sentinel://host:port[;sentinel://host2:port2]/db` needs the master's name."""
    if not url.startswith("sentinel://"):
        return redis.Redis.from_url(url, **kwargs)
    if not sentinel_master:
        raise ValueError("a sentinel:// Redis URL needs the master's name (CONVEYOR_REDIS_SENTINEL_MASTER)")
    hosts: list[tuple[str, int]] = []
    password = None
    db = 0
    for part in url.split(";"):
        parsed = urlparse(part.strip())
        hosts.append((parsed.hostname or "localhost", parsed.port or 26379))
        password = password or (unquote(parsed.password) if parsed.password else None)
        if parsed.path.strip("/"):
            db = int(parsed.path.strip("/"))
    timeouts = {k: kwargs[k] for k in ("socket_timeout", "socket_connect_timeout") if k in kwargs}
    sentinel = Sentinel(hosts, sentinel_kwargs=timeouts, **timeouts)
    return sentinel.master_for(sentinel_master, db=db, password=password, **kwargs)
