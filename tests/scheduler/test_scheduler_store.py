"""Schedules in the database (SQLite and PostgreSQL): validation, the change marker, claims, seeding."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa

from jobs.db import get_engine, utcnow
from jobs.errors import InvalidInput, PayloadInvalid, UnknownTask
from scheduler.defaults import DEFAULTS, Default, seed
from scheduler.errors import InvalidSchedule, ScheduleExists, ScheduleNotFound
from scheduler.models import Outcome
from scheduler.service import Schedules


@pytest.fixture
def schedules(client):
    return Schedules(client)


def test_add_validates_and_stores(schedules):
    before = schedules.store.version()
    row = schedules.add("hello", "system.ping", cron="0 7 * * *", tz="Europe/Paris",
                        payload={"message": "hi"}, queue="default", priority=3, overlap="skip")
    assert schedules.store.version() == before + 1
    stored = schedules.get("hello")
    assert (stored.task, stored.payload, stored.cron, stored.timezone) == ("system.ping", {"message": "hi"},
                                                                           "0 7 * * *", "Europe/Paris")
    assert stored.next_run_at is not None and stored.next_run_at > utcnow()
    assert stored.id == row.id and stored.enabled and stored.run_count == 0


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"task": "system.ping", "cron": "99 * * * *"}, InvalidSchedule),
    ({"task": "system.ping", "cron": "0 7 * *"}, InvalidSchedule),
    ({"task": "no.such_task", "every": 60}, UnknownTask),
    ({"task": "system.ping", "every": 60, "payload": {"unknown": 1}}, PayloadInvalid),
    ({"task": "system.sleep", "every": 60, "payload": {"seconds": "soon"}}, PayloadInvalid),
    ({"task": "system.ping", "every": "10 parsecs"}, InvalidSchedule),
    ({"task": "system.ping", "every": 60, "tz": "Nowhere/Land"}, InvalidSchedule),
    ({"task": "system.ping", "every": 60, "queue": "nope"}, InvalidSchedule),
    ({"task": "system.ping", "every": 60, "overlap": "sometimes"}, InvalidSchedule),
    ({"task": "system.ping"}, InvalidSchedule),
])
def test_bad_definitions_are_refused_and_nothing_is_saved(schedules, kwargs, error):
    before = schedules.store.version()
    kwargs = dict(kwargs)
    task = kwargs.pop("task")
    with pytest.raises(error) as exc:
        schedules.add("bad", task, **kwargs)
    assert isinstance(exc.value, InvalidInput)
    assert schedules.store.names() == set() and schedules.store.version() == before


def test_a_one_off_in_the_past_is_refused(schedules):
    with pytest.raises(InvalidSchedule, match="in the past"):
        schedules.add("late", "system.ping", at=utcnow() - timedelta(seconds=1))
    assert schedules.store.names() == set()


def test_names_are_unique(schedules):
    schedules.add("one", "system.ping", every=60)
    with pytest.raises(ScheduleExists):
        schedules.add("one", "system.ping", every=30)
    with pytest.raises(InvalidSchedule):
        schedules.add("two words", "system.ping", every=30)


def test_every_edit_bumps_the_marker_and_bad_updates_change_nothing(schedules):
    schedules.add("s", "system.ping", every=60)
    v = schedules.store.version()
    schedules.update("s", every="5m")
    assert schedules.store.version() == v + 1 and schedules.get("s").every == 300
    schedules.disable("s")
    assert schedules.store.version() == v + 2 and not schedules.get("s").enabled
    assert schedules.get("s").next_run_at is None
    schedules.enable("s")
    assert schedules.store.version() == v + 3 and schedules.get("s").next_run_at is not None
    with pytest.raises(PayloadInvalid):
        schedules.update("s", payload={"message": 5})
    with pytest.raises(InvalidSchedule):
        schedules.update("s", cron="not a cron")
    assert schedules.store.version() == v + 3 and schedules.get("s").every == 300
    schedules.remove("s")
    assert schedules.store.version() == v + 4
    with pytest.raises(ScheduleNotFound):
        schedules.get("s")


def test_a_new_timing_re_arms_but_a_payload_change_does_not(schedules):
    row = schedules.add("s", "system.ping", every=60)
    armed = row.armed_at
    schedules.update("s", payload={"message": "new"})
    assert schedules.get("s").armed_at == armed
    schedules.update("s", cron="0 * * * *")
    after = schedules.get("s")
    assert after.armed_at > armed and after.cron == "0 * * * *" and after.every is None


def test_a_slot_is_claimed_once_even_by_racing_beats(schedules):
    row = schedules.add("race", "system.ping", every=1)
    slot = utcnow().replace(microsecond=0)
    results: list[object] = []
    barrier = threading.Barrier(4)

    def claim(i: int) -> None:
        barrier.wait()
        results.append(schedules.store.claim(row.id, slot, f"beat-{i}", skip_if_running=False))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [r for r in results if r is not None]
    assert len(won) == 1 and won[0][1] is Outcome.CLAIMED
    assert schedules.store.claim(row.id, slot + timedelta(seconds=1), "beat-x", skip_if_running=False)


def test_overlap_skip_and_settling_outcomes(schedules, client):
    row = schedules.add("o", "system.ping", every=1, overlap="skip")
    t0 = utcnow().replace(microsecond=0)
    fid, outcome = schedules.store.claim(row.id, t0, "b", skip_if_running=True)
    assert outcome is Outcome.CLAIMED
    job = client.enqueue("system.ping", {}, source="schedule:o")
    schedules.store.enqueued(fid, row.id, t0, job.id, None)
    # the job is queued: the next tick is skipped
    _, outcome = schedules.store.claim(row.id, t0 + timedelta(seconds=1), "b", skip_if_running=True)
    assert outcome is Outcome.SKIPPED
    assert schedules.get("o").last_outcome == Outcome.SKIPPED
    # the job fails: settling counts it, and the next tick is no longer skipped
    with get_engine(client.settings.database_url).begin() as conn:
        conn.execute(sa.text("UPDATE jobs SET status='failed', finished_at=:t WHERE id=:id"),
                     {"t": utcnow(), "id": job.id})
    assert schedules.store.settle() == 1
    after = schedules.get("o")
    assert after.failure_streak == 1 and after.last_success_at is None and after.run_count == 1
    _, outcome = schedules.store.claim(row.id, t0 + timedelta(seconds=2), "b", skip_if_running=True)
    assert outcome is Outcome.CLAIMED
    [firing] = [f for f, _ in schedules.store.firings("o") if f.job_id == job.id]
    assert firing.outcome == Outcome.FAILED


def test_removing_a_schedule_removes_its_firings(schedules, client):
    row = schedules.add("gone", "system.ping", every=1)
    schedules.store.claim(row.id, utcnow(), "b", skip_if_running=False)
    schedules.remove("gone")
    with get_engine(client.settings.database_url).connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM schedule_firings")).scalar() == 0


def test_seed_is_idempotent_and_skips_what_is_not_installed(schedules):
    defaults = (*DEFAULTS, Default("ghost", "ghost.task", "not installed", every="1m"),
                Default("bad-payload", "system.sleep", "refused", every="1m",
                        payload=lambda spec, s: {"seconds": -1}))
    first = {r.name: r for r in seed(schedules, defaults)}
    assert first["prune-jobs"].action == "created"
    assert not schedules.get("prune-jobs").enabled  # disabled until an operator enables it
    assert first["ghost"].action == "skipped" and "not registered" in first["ghost"].message
    assert first["bad-payload"].action == "skipped" and "seconds" in first["bad-payload"].message
    for d in DEFAULTS:
        assert first[d.name].action in ("created", "skipped")
        if first[d.name].action == "created":
            assert schedules.get(d.name).enabled is d.enabled
    second = {r.name: r.action for r in seed(schedules, defaults)}
    created = {n for n, r in first.items() if r.action == "created"}
    assert {n for n, a in second.items() if a == "exists"} == created
    assert schedules.store.names() == created


def test_migration_matches_the_models_and_downgrades(database_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    import jobs.schema  # noqa: F401
    from jobs.db import Base
    from jobs.migrate import downgrade, upgrade

    mine = {"schedules", "schedule_firings", "schedule_changes"}
    with get_engine(database_url).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert [d for d in diff if any(t in str(d) for t in mine)] == []
    downgrade(database_url, "0003_reconciliation")  # the revision before the schedules (later ones go too)
    with get_engine(database_url).connect() as conn:
        assert not mine & set(sa.inspect(conn).get_table_names())
    upgrade(database_url)
    with get_engine(database_url).connect() as conn:
        assert mine <= set(sa.inspect(conn).get_table_names())
        assert conn.execute(sa.text("SELECT version FROM schedule_changes WHERE id = 1")).scalar() == 0


def test_list_flags_a_schedule_that_stopped_happening(schedules):
    schedules.add("quiet", "system.ping", every=60)
    schedules.add("off", "system.ping", every=60, enabled=False)
    views = {v.name: v for v in schedules.list()}
    assert views["quiet"].flags == [] and views["off"].flags == []
    # no beat ran for ten minutes
    for name in ("quiet", "off"):
        schedules.store.update(name, {"armed_at": utcnow() - timedelta(minutes=10)})
    views = {v.name: v for v in schedules.list()}
    assert len(views["quiet"].flags) == 1 and views["quiet"].flags[0].startswith("overdue")
    assert views["off"].flags == []  # a disabled schedule is not expected to run
