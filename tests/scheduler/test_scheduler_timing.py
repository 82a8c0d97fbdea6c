"""Ticks of cron, interval and one-off timings, and how definitions are refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from jobs.errors import InvalidInput
from scheduler.errors import InvalidSchedule
from scheduler.timing import Timing, format_every, parse_at, parse_every

UTC = UTC


def at(*args: int, tz: str = "UTC") -> datetime:
    return datetime(*args, tzinfo=ZoneInfo(tz)).astimezone(UTC)


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90), ("30s", 30), ("10m", 600), ("1h30m", 5400), ("2d", 172_800), ("1w", 604_800), (" 5 m ", 300),
])
def test_parse_every(text, seconds):
    assert parse_every(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0s", "10x", "m10", "1.5m", "-5s", "10 minutes"])
def test_parse_every_refuses(text):
    with pytest.raises(InvalidSchedule):
        parse_every(text)


def test_format_every_round_trips():
    for text in ("45s", "10m", "1h30m", "1d", "1d2h3m4s"):
        assert format_every(parse_every(text)) == text


@pytest.mark.parametrize("kwargs", [
    {"cron": "61 * * * *"}, {"cron": "* * *"}, {"cron": "* * * * * *"}, {"cron": "@reboot"},
    {"cron": "0 7 * * *", "tz": "Mars/Olympus"}, {"every": 0}, {}, {"cron": "0 7 * * *", "every": 60},
    {"at": datetime(2030, 1, 1)},  # naive
])
def test_invalid_timings_are_refused_with_an_invalid_input(kwargs):
    with pytest.raises(InvalidInput):
        Timing(**kwargs)


def test_every_is_aligned_to_the_epoch():
    t = Timing(every=600)
    now = at(2026, 5, 1, 10, 3, 7)
    assert t.latest_until(now) == at(2026, 5, 1, 10, 0)
    assert t.next_after(now) == at(2026, 5, 1, 10, 10)
    # a tick exactly now is "at or before now" and not "after now"
    assert t.latest_until(at(2026, 5, 1, 10, 10)) == at(2026, 5, 1, 10, 10)
    assert t.next_after(at(2026, 5, 1, 10, 10)) == at(2026, 5, 1, 10, 20)


def test_every_second_has_sub_second_precision():
    t = Timing(every=1)
    now = at(2026, 5, 1, 10, 0, 0) + timedelta(milliseconds=999)
    assert t.latest_until(now) == at(2026, 5, 1, 10, 0, 0)
    assert t.next_after(now) == at(2026, 5, 1, 10, 0, 1)


def test_cron_in_a_timezone_keeps_local_time_across_dst():
    t = Timing(cron="0 7 * * *", tz="Europe/Paris")
    # the night clocks go forward (2026-03-29), 07:00 Paris moves from 06:00 to 05:00 UTC
    assert t.next_after(at(2026, 3, 28, 8, 0)) == at(2026, 3, 29, 7, 0, tz="Europe/Paris")
    assert t.next_after(at(2026, 3, 28, 8, 0)) == datetime(2026, 3, 29, 5, 0, tzinfo=UTC)
    assert t.latest_until(at(2026, 3, 28, 8, 0)) == datetime(2026, 3, 28, 6, 0, tzinfo=UTC)


def test_cron_latest_includes_the_exact_tick():
    t = Timing(cron="*/15 * * * *")
    assert t.latest_until(at(2026, 1, 1, 12, 15)) == at(2026, 1, 1, 12, 15)
    assert t.latest_until(at(2026, 1, 1, 12, 14, 59)) == at(2026, 1, 1, 12, 0)
    assert t.next_after(at(2026, 1, 1, 12, 15)) == at(2026, 1, 1, 12, 30)


def test_cron_aliases():
    assert Timing(cron="@daily").next_after(at(2026, 1, 1, 12, 0)) == at(2026, 1, 2)


def test_one_off():
    moment = at(2026, 6, 1, 9, 0)
    t = Timing(at=moment)
    assert t.next_after(moment - timedelta(seconds=1)) == moment
    assert t.next_after(moment) is None
    assert t.latest_until(moment) == moment
    assert t.latest_until(moment - timedelta(seconds=1)) is None


def test_parse_at_reads_naive_times_in_the_timezone():
    assert parse_at("2026-06-01T09:00", "Europe/Paris") == datetime(2026, 6, 1, 7, 0, tzinfo=UTC)
    assert parse_at("2026-06-01T09:00+00:00", "Europe/Paris") == datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
    with pytest.raises(InvalidSchedule):
        parse_at("tomorrow")


def test_describe():
    assert Timing(cron="0 7 * * *", tz="Europe/Paris").describe() == "cron 0 7 * * * (Europe/Paris)"
    assert Timing(every=5400).describe() == "every 1h30m"
