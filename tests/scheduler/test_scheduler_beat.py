"""Real `conveyor beat` processes against real Redis and databases (and a real worker where jobs must run)."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from jobs.client import Client
from jobs.db import utcnow
from scheduler.service import Schedules
from scheduler.timing import Timing
from tests.conftest import REDIS_DB, wait_until
from tests.scheduler import firings, leader, scheduled_jobs, start_beats

FAST = {"beat_lock_ttl": 2.0, "beat_sync_interval": 0.5}


@pytest.fixture
def beats(tmp_path):
    yield from start_beats(tmp_path)


@pytest.fixture
def beat_settings(make_settings, redis_url, sqlite_url):
    """SQLite settings for the tests whose subject is beat's behaviour, not the database."""
    results = redis_url.rsplit("/", 1)[0] + f"/{REDIS_DB - 1}"
    return make_settings(broker_url=redis_url, result_backend=results, database_url=sqlite_url, **FAST)


@pytest.fixture
def beat_client(beat_settings):
    from jobs.recorder import close_recorders
    from worker.factory import create_app

    yield Client(create_app(beat_settings))
    close_recorders()


def count(client, name):
    return len(scheduled_jobs(client, name))


def test_added_schedules_fire_run_and_are_tracked(beat_settings, beat_client, beats, start_worker):
    start_worker(beat_settings, queues="default", concurrency=2)
    beat = beats(beat_settings)
    beat.wait_loaded(0)
    s = Schedules(beat_client)
    s.add("ping", "system.ping", every=1, payload={"message": "tick"})
    s.add("slow", "system.sleep", every=1, payload={"seconds": 2.5, "steps": 1}, overlap="skip")
    s.add("broken", "system.sleep", every=1, payload={"seconds": 0, "fail": True, "permanent": True})

    done = wait_until(lambda: [j for j in scheduled_jobs(beat_client, "ping") if j.status == "succeeded"],
                      timeout=30, message="a scheduled ping to succeed")
    assert done[0].kwargs == {"message": "tick"} and done[0].task == "system.ping"
    # overlap=skip: ticks while the previous sleep runs are skipped, never stacked
    wait_until(lambda: any(f.outcome == "skipped" for f in firings(beat_client, "slow")), timeout=30,
               message="a skipped tick of the slow schedule")
    # failures are counted and flagged
    view = wait_until(lambda: next((v for v in s.list() if v.name == "broken" and v.flags), None), timeout=30,
                      message="the broken schedule to be flagged")
    assert view.failure_streak >= 3 and any(f.startswith("failing") for f in view.flags)
    ping = wait_until(lambda: next((v for v in s.list() if v.name == "ping" and v.last_success_at), None),
                      timeout=30, message="the ping schedule's last success")
    assert ping.failure_streak == 0 and ping.run_count >= 1 and not ping.flags
    beat.stop()
    slow = scheduled_jobs(beat_client, "slow")
    for before, after in zip(slow, slow[1:], strict=False):
        assert before.finished_at is not None and after.created_at >= before.finished_at


def test_edits_reach_a_running_beat_without_restart(beat_settings, beat_client, beats):
    beat = beats(beat_settings)
    beat.wait_loaded(0)
    s = Schedules(beat_client)
    s.add("edit", "system.ping", cron="0 0 1 1 *", payload={"message": "v1"})  # next Jan 1: not in this test
    beat.wait_loaded(s.store.version())
    assert count(beat_client, "edit") == 0

    s.update("edit", every=1)
    wait_until(lambda: count(beat_client, "edit") >= 1, timeout=20, message="the re-timed schedule to fire")
    s.update("edit", payload={"message": "v2"})
    wait_until(lambda: any(j.kwargs == {"message": "v2"} for j in scheduled_jobs(beat_client, "edit")),
               timeout=20, message="a job with the edited payload")

    s.disable("edit")
    beat.wait_loaded(s.store.version())
    stopped_at = count(beat_client, "edit")
    time.sleep(2.5)
    assert count(beat_client, "edit") == stopped_at

    s.enable("edit")
    wait_until(lambda: count(beat_client, "edit") > stopped_at, timeout=20, message="the re-enabled schedule")
    s.remove("edit")
    beat.wait_loaded(s.store.version())
    removed_at = count(beat_client, "edit")
    time.sleep(2)
    assert count(beat_client, "edit") == removed_at

    # SIGTERM: a clean exit that hands the lock over at once
    assert leader(beat_settings) == beat.ident()
    assert beat.stop() == 0
    assert leader(beat_settings) is None
    assert "released the leader lock" in beat.output()


def test_catch_up_after_downtime_and_refused_jobs(beat_settings, beat_client, beats):
    s = Schedules(beat_client)
    for policy in ("once", "skip"):
        s.add(policy, "system.ping", cron="0 0 1 1 *", catchup=policy)
        # as if beat had been down for three New Years
        s.store.update(policy, {"armed_at": utcnow() - timedelta(days=3 * 365 + 2)})
    # a payload the task no longer accepts (written behind the API's back, as a task upgrade would)
    s.store.create({"name": "stale", "task": "system.ping", "every": 1, "payload": {"gone": 1}})
    beat = beats(beat_settings)
    wait_until(lambda: firings(beat_client, "once") and firings(beat_client, "skip"), timeout=30,
               message="both schedules to handle their missed ticks")
    stale = wait_until(lambda: next((v for v in s.list() if v.name == "stale" and v.failure_streak >= 3),
                                    None), timeout=30, message="the stale schedule's refusals to count")
    assert any(f.startswith("refused: invalid input for system.ping") for f in stale.flags)
    assert any(f.startswith("failing") for f in stale.flags)
    assert {f.outcome for f in firings(beat_client, "stale")} == {"error"}
    assert count(beat_client, "stale") == 0
    latest = Timing(cron="0 0 1 1 *").latest_until(utcnow())
    [once] = firings(beat_client, "once")
    assert once.outcome == "enqueued" and once.slot == latest
    assert [j.id for j in scheduled_jobs(beat_client, "once")] == [once.job_id]
    [skip] = firings(beat_client, "skip")
    assert skip.outcome == "missed" and skip.job_id is None and count(beat_client, "skip") == 0
    assert any(f.startswith("missed") for f in next(v for v in s.list() if v.name == "skip").flags)
    beat.stop()


def _assert_one_job_per_tick(client, name, min_span):
    fired = firings(client, name)
    jobs = scheduled_jobs(client, name)
    assert all(f.outcome == "enqueued" for f in fired), [f.outcome for f in fired]
    assert sorted(j.id for j in jobs) == sorted(f.job_id for f in fired)  # one job per firing, no stray job
    slots = [f.slot for f in fired]
    assert len(set(slots)) == len(slots)
    span = (slots[-1] - slots[0]).total_seconds()
    assert span >= min_span and span == len(slots) - 1  # every second, none lost
    return fired


@pytest.mark.slow
def test_several_beats_fire_exactly_one_job_per_second(settings, client, beats):
    s = settings.model_copy(update=FAST)
    # a and b share the lock (one leads, one stands by); c has a lock of its own, so it
    # believes it leads too: a and c race for every tick and only the claim row decides
    lone = s.model_copy(update={"beat_lock_key": "conveyor:beat:other"})
    started = [beats(s), beats(s), beats(lone)]
    for b in started:
        b.wait_loaded(0)
    Schedules(client).add("tick", "system.ping", every=1)
    wait_until(lambda: len(firings(client, "tick")) >= 7, timeout=60, message="7 ticks")
    for b in started:
        assert b.stop() == 0
    fired = _assert_one_job_per_tick(client, "tick", min_span=5)
    assert {f.fired_by for f in fired} <= {b.ident() for b in started}


@pytest.mark.slow
def test_killing_the_leader_hands_over_without_double_or_lost_ticks(beat_settings, beat_client, beats):
    a, b = beats(beat_settings), beats(beat_settings)
    a.wait_loaded(0)
    b.wait_loaded(0)
    Schedules(beat_client).add("tick", "system.ping", every=1)
    wait_until(lambda: len(firings(beat_client, "tick")) >= 3, timeout=30, message="3 ticks")
    first, standby = (a, b) if leader(beat_settings) == a.ident() else (b, a)
    assert leader(beat_settings) == first.ident()
    first.kill()
    wait_until(lambda: leader(beat_settings) == standby.ident(), timeout=30, message="the standby to lead")
    wait_until(lambda: sum(f.fired_by == standby.ident() for f in firings(beat_client, "tick")) >= 3,
               timeout=30, message="3 ticks fired by the new leader")
    assert standby.stop() == 0
    fired = firings(beat_client, "tick")
    # The killed leader may have died between claiming a tick and recording its job: at most
    # one such firing, the old leader's, with at most one job (published or not). Every other
    # tick has exactly one job.
    orphans = [f for f in fired if f.outcome == "claimed"]
    assert len(orphans) <= 1 and all(f.fired_by == first.ident() for f in orphans)
    recorded = [f.job_id for f in fired if f.job_id]
    jobs = {j.id for j in scheduled_jobs(beat_client, "tick")}
    assert len(recorded) == len(set(recorded)) and set(recorded) <= jobs
    assert len(jobs - set(recorded)) <= len(orphans)
    slots = [f.slot for f in fired]
    assert (slots[-1] - slots[0]).total_seconds() == len(slots) - 1  # no tick lost in the hand-over
