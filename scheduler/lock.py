"""The leader lock: of all running beats, the one holding a Redis key fires; the others wait.

The key is set only if absent, with an expiry (`SET NX PX`), and renewed by its holder every
third of the expiry with a compare-and-set (redis-py's `Lock`, whose Lua scripts check the
token). A holder that dies stops renewing, the key expires, and a standby takes it on its
next tick: hand-over within the lock's expiry plus one tick.

The lock is an efficiency, not the guarantee: a leader stalled past the expiry may still
believe it leads for a moment. Exactly-once per tick is enforced by the claim row in the
database (see `scheduler.store.ScheduleStore.claim`). To narrow that window, a holder counts
its lease from *before* each Redis call and stops firing when the lease runs out locally,
even if it could not reach Redis to learn it lost the key.
"""

from __future__ import annotations

import logging
import time

from redis.exceptions import LockError, LockNotOwnedError, RedisError

from config.redis_client import redis_client

log = logging.getLogger("conveyor.beat.lock")


class LeaderLock:
    """One beat process's hold on the leader key."""

    def __init__(self, url: str, key: str, ttl: float, ident: str, sentinel_master: str | None = None) -> None:
        self.key = key
        self.ttl = ttl
        self.ident = ident
        timeout = max(0.2, min(2.0, ttl / 3))
        self.redis = redis_client(url, sentinel_master, socket_timeout=timeout, socket_connect_timeout=timeout)
        self.lock = self.redis.lock(key, timeout=ttl, blocking=False, thread_local=False,
                                    raise_on_release_error=False)
        self.lock.local.token = ident.encode()  # so owned() and reacquire() know our token
        self._lease_until = 0.0  # monotonic
        self._renewed_at = 0.0
        self._failing = False

    @property
    def held(self) -> bool:
        """True while our lease runs, by our own clock."""
        return time.monotonic() < self._lease_until

    def _leased(self, started: float) -> None:
        self._renewed_at = started
        self._lease_until = started + self.ttl

    def hold(self) -> bool:
        """Take or renew the lock; True if this process may fire now. Never raises."""
        started = time.monotonic()
        was_held = self.held
        try:
            if was_held:
                if started - self._renewed_at >= self.ttl / 3:
                    self.lock.reacquire()
                    self._leased(started)
            elif self.lock.acquire(blocking=False, token=self.ident):
                self._leased(started)
                log.info("beat %s is now the leader (lock %s, expiry %ss)", self.ident, self.key, self.ttl)
            elif self.lock.owned():  # our key outlived our local lease (renewals timed out)
                self.lock.reacquire()
                self._leased(started)
                log.info("beat %s leads again (its lock had not expired)", self.ident)
            if self._failing:
                log.info("leader lock: Redis answers again")
                self._failing = False
        except LockNotOwnedError:
            self._lease_until = 0.0
            log.warning("beat %s lost the leader lock (it expired and %s took it)", self.ident,
                        self.holder() or "nobody")
        except (RedisError, LockError, OSError) as exc:
            if not self._failing:
                log.error("leader lock: Redis unreachable (%s); %s", exc,
                          "leading until the lease runs out" if self.held else "standing by")
                self._failing = True
        return self.held

    def renew_in(self) -> float:
        """Seconds until the lease should be renewed (beat wakes up by then)."""
        return max(0.05, self.ttl / 3 - (time.monotonic() - self._renewed_at))

    def holder(self) -> str | None:
        """The ident of the current leader, if any (None if Redis cannot tell)."""
        try:
            value = self.redis.get(self.key)
        except RedisError:
            return None
        return value.decode() if isinstance(value, bytes) else value

    def release(self) -> None:
        """Give the lock up now, so a standby takes over at its next tick instead of after expiry."""
        was_held = self.held
        self._lease_until = 0.0
        try:
            if was_held or self.lock.owned():
                self.lock.release()
                log.info("beat %s released the leader lock", self.ident)
        except (RedisError, LockError) as exc:
            log.warning("leader lock: could not release (%s); it expires in %ss", exc, self.ttl)
        finally:
            self.redis.close()
