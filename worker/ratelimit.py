"""Rate limits shared by every worker, coordinated through Redis, that never hold a worker slot.

Celery's own `rate_limit` is per worker process; Conveyor's is global. A task declares limits
on its spec (`@job(..., rate_limit=Limit(...))`, or a list of them): each is a rate in jobs per
second, either global or per key taken from the validated payload (a recipient's domain, an
account). Before the task body runs, `throttle()` reserves a slot in each limit with GCRA (the
generic cell rate algorithm: one timestamp per key, updated atomically by a Lua script that
reads Redis's clock, so every worker agrees on time). A slot due now runs at once; a slot in
the future sends the job back to the broker with a countdown (`defer()`), so the waiting job
costs a message in the broker, not a worker process. Slots already held are carried in a
message header, so the job does not queue again when it comes back.

Limits are reserved one after another, in declared order, each only when the job is about to
run, so a far reservation in a narrow limit (one campaign at 5/s) never blocks a wide one
(all mail at 50/s) for other traffic: declare the narrowest first.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import redis
from celery.exceptions import Ignore

from config.redis_client import redis_client
from jobs.errors import RetryableError

if TYPE_CHECKING:
    from pydantic import BaseModel

    from config import Settings
    from worker.base import ConveyorTask

#: Waits shorter than this are slept in place: cheaper than a round trip through the broker.
INLINE_WAIT = 0.02
#: A deferral's countdown never exceeds this (nor half the visibility timeout): longer
#: countdowns risk a second delivery once Redis's visibility timeout runs out.
MAX_HOP = 300.0
HEADER = "conveyor_ratelimit"
DEFERRED_HEADER = "conveyor_deferred"
PREFIX = "conveyor:ratelimit"

# KEYS: one per key of this limit. ARGV: interval and tolerance (both in microseconds) per key.
# Reserves the earliest time every key allows, in all of them at once; returns the delay
# from now and the reserved time, in microseconds of Redis's clock.
RESERVE = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local start = now
local tats = {}
for i, key in ipairs(KEYS) do
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  tats[i] = tat
  local earliest = tat - tonumber(ARGV[2 * i])
  if earliest > start then start = earliest end
end
for i, key in ipairs(KEYS) do
  local tat = tats[i]
  if start > tat then tat = start end
  local new = tat + tonumber(ARGV[2 * i - 1])
  redis.call('SET', key, string.format('%.0f', new), 'PX', math.floor((new - now) / 1000) + 1000)
end
return {string.format('%.0f', start - now), string.format('%.0f', start)}
"""

RateSource = float | str | Callable[["Settings", Any], float | None]
KeySource = Callable[[Any], str | Iterable[str] | None]


@dataclass(frozen=True)
class Limit:
    """At most `rate` jobs per second (`burst` may start at once), across every worker.

    `rate` is a number, the name of a `Settings` field, or `fn(settings, data)`; `key` maps
    the validated payload to one key, several (each limited on its own) or None (global).
    A rate or key that resolves to None switches the limit off for that job.
    """

    name: str
    rate: RateSource
    key: KeySource | None = None
    burst: int = 1

    def rate_for(self, settings: Settings, data: Any) -> float | None:
        if callable(self.rate):
            return self.rate(settings, data)
        if isinstance(self.rate, str):
            return getattr(settings, self.rate)  # type: ignore[no-any-return]
        return self.rate

    def keys_for(self, data: Any) -> list[str] | None:
        if self.key is None:
            return ["*"]
        found = self.key(data)
        if found is None:
            return None
        keys = [found] if isinstance(found, str) else sorted(set(found))
        return keys or None


def limits_of(declared: Limit | Sequence[Limit] | None) -> list[Limit]:
    if declared is None:
        return []
    return [declared] if isinstance(declared, Limit) else list(declared)


@dataclass(frozen=True)
class Slot:
    """A reserved slot: start in `delay` seconds, at `at` (seconds of Redis's clock)."""

    delay: float
    at: float


class RateLimiter:
    """GCRA reservations in one Redis; every key is `conveyor:ratelimit:<limit>:<key>`."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._reserve = client.register_script(RESERVE)

    def reserve(self, limit: str, keys: Sequence[str], rate: float, burst: int = 1) -> Slot:
        """Reserve the earliest slot every one of `keys` allows at `rate` per second."""
        if rate <= 0:
            raise ValueError(f"rate limit {limit}: rate must be positive, not {rate}")
        interval = 1_000_000 / rate
        tolerance = interval * (max(burst, 1) - 1)
        args: list[float] = []
        for _ in keys:
            args += [interval, tolerance]
        delay, at = self._reserve(keys=[f"{PREFIX}:{limit}:{k}" for k in keys], args=args)
        return Slot(int(delay) / 1e6, int(at) / 1e6)

    def now(self) -> float:
        seconds, micros = self.client.time()
        return float(seconds) + micros / 1e6

    def reset(self, limit: str) -> int:
        """Forget every reservation of `limit` (for tests and operators)."""
        keys = list(self.client.scan_iter(match=f"{PREFIX}:{limit}:*", count=1000))
        return int(self.client.delete(*keys)) if keys else 0


_limiters: dict[tuple[int, str], RateLimiter] = {}
_lock = threading.Lock()


def get_limiter(url: str, sentinel_master: str | None = None) -> RateLimiter:
    """This process's limiter on the Redis at `url` (a forked child makes its own)."""
    key = (os.getpid(), url)
    limiter = _limiters.get(key)
    if limiter is None:
        with _lock:
            limiter = _limiters.get(key)
            if limiter is None:
                client = redis_client(url, sentinel_master, socket_timeout=5, socket_connect_timeout=3)
                limiter = _limiters[key] = RateLimiter(client)
    return limiter


def _reset_after_fork() -> None:
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


class Deferred(Ignore):  # type: ignore[misc]
    """The job went back to the broker to run later; this run ends without an outcome."""


def max_hop(settings: Settings) -> float:
    return min(MAX_HOP, settings.visibility_timeout / 2)


def defer(task: ConveyorTask, countdown: float, *, headers: dict[str, Any] | None = None,
          message: str | None = None) -> NoReturn:
    """Publish this job again (same id, same payload, same retry count) to run in `countdown`
    seconds, then end this run without success, failure or retry. Nothing holds a worker slot
    in the meantime. The job record keeps its first start time (see `DEFERRED_HEADER`)."""
    req = task.request
    countdown = max(0.0, min(countdown, max_hop(task.settings)))
    previous = getattr(req, DEFERRED_HEADER, None) or {}
    if previous.get("retries") != req.retries:  # Celery's retries copy headers: not this attempt's
        previous = {}
    started = getattr(req, "conveyor_started_at", None)  # set by the lifecycle's prerun
    merged = {
        **(req.headers or {}),
        "conveyor_recorded": True,  # the job is recorded already: no "queued" record again
        DEFERRED_HEADER: {"since": previous.get("since") or (started.timestamp() if started else time.time()),
                          "count": int(previous.get("count") or 0) + 1, "retries": req.retries},
        **(headers or {}),
    }
    if message:
        task.progress(0, None, message)
    task.signature_from_request(req, (), req.kwargs, countdown=countdown, headers=merged).apply_async()
    raise Deferred(f"deferred for {countdown:.3f}s")


def throttle(task: ConveyorTask, data: BaseModel) -> None:
    """Return once this job holds a slot in each of its task's limits; otherwise defer it."""
    limits = limits_of(task.spec.rate_limit)
    req = task.request
    if not limits or req.called_directly:
        return
    settings = task.settings
    limiter = get_limiter(settings.broker_url, settings.redis_sentinel_master)
    state = getattr(req, HEADER, None) or {}
    held: set[str] = set()
    if state.get("retries") == req.retries:  # a retry or a new attempt queues again
        held = set(state.get("held") or ())
    try:
        if held and state.get("at"):
            wait = float(state["at"]) - limiter.now()
            if wait > INLINE_WAIT:
                defer(task, wait, headers={HEADER: state})
            if wait > 0:
                time.sleep(wait)
        for limit in limits:
            if limit.name in held:
                continue
            rate = limit.rate_for(settings, data)
            keys = limit.keys_for(data)
            if rate is None or keys is None:
                continue
            slot = limiter.reserve(limit.name, keys, rate, limit.burst)
            held.add(limit.name)
            if slot.delay <= INLINE_WAIT:
                if slot.delay > 0:
                    time.sleep(slot.delay)
                continue
            defer(task, slot.delay,
                  headers={HEADER: {"held": sorted(held), "at": slot.at, "retries": req.retries}},
                  message=f"deferred {slot.delay:.2f}s by rate limit {limit.name}")
    except redis.RedisError as exc:
        raise RetryableError(f"rate limiter unavailable: {exc}") from exc


__all__ = ["Deferred", "Limit", "RateLimiter", "Slot", "defer", "get_limiter", "limits_of", "throttle"]
