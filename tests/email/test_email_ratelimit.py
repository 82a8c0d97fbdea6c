"""The platform rate limiter (worker.ratelimit) against real Redis: GCRA reservations shared by
every process, per key, several keys at once, bursts; and how a task's declared limits resolve."""

from __future__ import annotations

import threading

import pytest
import redis as redis_lib

from config import Settings
from worker.ratelimit import Limit, RateLimiter, limits_of


@pytest.fixture
def limiter(redis_url):
    return RateLimiter(redis_lib.Redis.from_url(redis_url))


def test_reservations_are_spaced_by_the_rate(limiter):
    slots = [limiter.reserve("t", ["*"], rate=10) for _ in range(5)]
    assert slots[0].delay < 0.05
    for before, after in zip(slots, slots[1:], strict=False):
        assert after.at - before.at == pytest.approx(0.1, abs=1e-3)  # 10/s: one slot each 100 ms
    assert slots[-1].delay == pytest.approx(0.4, abs=0.05)


def test_concurrent_reservations_never_share_a_slot(redis_url):
    """Many processes' worth of clients at once: every slot is distinct and spaced."""
    slots: list[float] = []
    lock = threading.Lock()

    def take() -> None:
        own = RateLimiter(redis_lib.Redis.from_url(redis_url))  # a client of its own, like a worker
        for _ in range(25):
            s = own.reserve("shared", ["*"], rate=1000)
            with lock:
                slots.append(s.at)

    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    slots.sort()
    assert len(slots) == 100
    assert min(b - a for a, b in zip(slots, slots[1:], strict=False)) == pytest.approx(0.001, abs=1e-4)


def test_keys_are_independent_and_a_multi_key_slot_suits_all(limiter):
    limiter.reserve("dom", ["a.org"], rate=1)
    assert limiter.reserve("dom", ["b.org"], rate=1).delay < 0.05  # another key: free
    both = limiter.reserve("dom", ["a.org", "b.org"], rate=1)
    assert both.delay == pytest.approx(1.0, abs=0.05)  # a.org's next slot decides
    assert limiter.reserve("dom", ["b.org"], rate=1).delay == pytest.approx(2.0, abs=0.05)  # taken in both


def test_burst_lets_the_first_ones_through(limiter):
    delays = [limiter.reserve("b", ["*"], rate=2, burst=3).delay for _ in range(5)]
    assert all(d < 0.05 for d in delays[:3])
    assert delays[3] == pytest.approx(0.5, abs=0.05) and delays[4] == pytest.approx(1.0, abs=0.05)


def test_reset_and_bad_rates(limiter):
    limiter.reserve("r", ["x"], rate=0.1)
    assert limiter.reserve("r", ["x"], rate=0.1).delay > 5
    assert limiter.reset("r") == 1
    assert limiter.reserve("r", ["x"], rate=0.1).delay < 0.05
    with pytest.raises(ValueError):
        limiter.reserve("r", ["x"], rate=0)


def test_declared_limits_resolve_from_settings_and_payload():
    from tasks.email.inputs import DeliverInput
    from tasks.email.tasks import LIMITS

    settings = Settings(_env_file=None, email_rate_limit=7, email_domain_rate_limit=None)
    campaign, domain, everything = limits_of(LIMITS)
    data = DeliverInput(outbox_id=1, domains=["a.org", "b.org"])
    assert campaign.rate_for(settings, data) is None  # not a campaign message: off
    assert domain.rate_for(settings, data) is None  # no per-domain limit configured: off
    assert domain.keys_for(data) == ["a.org", "b.org"]
    assert (everything.rate_for(settings, data), everything.keys_for(data)) == (7, ["*"])
    assert limits_of(Limit("x", rate=1)) == [Limit("x", rate=1)] and limits_of(None) == []
