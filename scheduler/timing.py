"""When a schedule ticks: a cron expression, a fixed interval, or one moment.

Ticks are pure functions of the definition and the wall clock, never of when a beat started,
so every beat process computes the very same instants, and the database can tell two
claims for one tick apart from claims for two ticks.

- cron: 5 fields (or @hourly, @daily, ...) read in the schedule's timezone, so "0 7 * * *"
  stays at 07:00 local time across daylight-saving changes (croniter does the calendar work).
- every: whole seconds, aligned to the Unix epoch: "every 10m" ticks at :00, :10, :20 ... UTC.
- at: one moment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property, lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from scheduler.errors import InvalidSchedule

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TICK = timedelta(microseconds=1)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_EVERY = re.compile(r"(\d+)\s*([smhdw])")
_ALIASES = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}


def parse_every(text: str) -> int:
    """`90`, `30s`, `10m`, `1h30m`, `2d` -> seconds (a whole number, at least 1)."""
    raw = text.strip().lower().replace(" ", "")
    if raw.isdigit():
        seconds = int(raw)
    else:
        parts = _EVERY.findall(raw)
        if not parts or "".join(n + u for n, u in parts) != raw:
            raise InvalidSchedule(
                f"invalid interval {text!r}: use a number of seconds or units, e.g. 30s, 10m, 1h30m, 1d"
            )
        seconds = sum(int(n) * _UNITS[u] for n, u in parts)
    if seconds < 1:
        raise InvalidSchedule(f"invalid interval {text!r}: it must be at least 1 second")
    return seconds


def format_every(seconds: int) -> str:
    """3600 -> `1h`, 5400 -> `1h30m`, 45 -> `45s`."""
    out = []
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)):
        n, seconds = divmod(seconds, size)
        if n:
            out.append(f"{n}{unit}")
    return "".join(out) or "0s"


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidSchedule(f"unknown timezone {name!r} (use an IANA name like Europe/Paris)") from None


def parse_at(text: str, tz: str = "UTC") -> datetime:
    """An ISO time; without an offset it is read in `tz`. Returned in UTC."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidSchedule(
            f"invalid time {text!r}: use ISO 8601, e.g. 2026-01-01T07:00:00+01:00"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=zone(tz))
    return value.astimezone(UTC)


@lru_cache(maxsize=8192)
def _cron_error(expr: str, tz: str) -> str | None:
    """Why `expr` is not a cron expression we accept, or None (cached: beat reloads re-check rows)."""
    fields = expr.split()
    alias = len(fields) == 1 and fields[0].lower() in _ALIASES
    if not alias and len(fields) != 5:
        return (f"invalid cron expression {expr!r}: give 5 fields (minute hour day month weekday), "
                "e.g. '0 7 * * *', or @hourly/@daily/@weekly/@monthly/@yearly")
    try:
        croniter(expr, datetime.now(zone(tz))).get_next(datetime)
    except (CroniterError, ValueError, KeyError) as exc:
        return f"invalid cron expression {expr!r}: {exc}"
    return None


@dataclass(frozen=True)
class Timing:
    """One of `cron`, `every` (seconds) or `at` (aware), and the timezone cron is read in."""

    cron: str | None = None
    every: int | None = None
    at: datetime | None = None
    tz: str = "UTC"

    def __post_init__(self) -> None:
        given = [v for v in (self.cron, self.every, self.at) if v is not None]
        if len(given) != 1:
            raise InvalidSchedule("give exactly one of a cron expression, an interval or a time")
        zone(self.tz)
        if self.cron is not None:
            self._check_cron(self.cron)
        if self.every is not None and (not isinstance(self.every, int) or self.every < 1):
            raise InvalidSchedule("an interval is a whole number of seconds, at least 1")
        if self.at is not None and self.at.tzinfo is None:
            raise InvalidSchedule("a one-off time must carry a timezone")

    def _check_cron(self, expr: str) -> None:
        error = _cron_error(expr, self.tz)
        if error:
            raise InvalidSchedule(error)

    @cached_property
    def _cron(self) -> croniter:
        """One croniter per timing, moved to each new start: beat asks it on every reload."""
        assert self.cron is not None
        return croniter(self.cron, datetime.now(zone(self.tz)))

    def _cron_at(self, local: datetime) -> croniter:
        it = self._cron
        it.set_current(local, force=True)
        return it

    @property
    def kind(self) -> str:
        return "cron" if self.cron is not None else "every" if self.every is not None else "at"

    def describe(self) -> str:
        if self.cron is not None:
            return f"cron {self.cron}" + ("" if self.tz == "UTC" else f" ({self.tz})")
        if self.every is not None:
            return f"every {format_every(self.every)}"
        assert self.at is not None
        return f"at {self.at.astimezone(zone(self.tz)).isoformat()}"

    # --- ticks --------------------------------------------------------------------------------
    def next_after(self, t: datetime) -> datetime | None:
        """The first tick strictly after `t` (UTC), or None if there is none."""
        if self.every is not None:
            step = timedelta(seconds=self.every)
            return EPOCH + ((t - EPOCH) // step + 1) * step
        if self.cron is not None:
            local = t.astimezone(zone(self.tz))
            nxt: datetime = self._cron_at(local).get_next(datetime)
            return nxt.astimezone(UTC)
        assert self.at is not None
        return self.at if self.at > t else None

    def latest_until(self, t: datetime) -> datetime | None:
        """The last tick at or before `t` (UTC), or None if there is none."""
        if self.every is not None:
            step = timedelta(seconds=self.every)
            return EPOCH + ((t - EPOCH) // step) * step
        if self.cron is not None:
            local = (t + _TICK).astimezone(zone(self.tz))  # croniter's "prev" excludes its start
            prev: datetime = self._cron_at(local).get_prev(datetime)
            return prev.astimezone(UTC)
        assert self.at is not None
        return self.at if self.at <= t else None
