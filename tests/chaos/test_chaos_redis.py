"""Redis restarted or wiped under running workers and producers.

- Restarted with AOF on (`appendfsync always`): messages queued before the restart are still
  there and run; the worker and a producer made before the restart both carry on without being
  restarted themselves (kombu reconnects).
- Jobs running while Redis restarts run once, whether the worker has free slots or not; the
  recovery sweep trusts no claims until Redis has been up a node TTL.
- Wiped (FLUSHALL): the job store still knows every queued job, so `maintenance.recover_lost`
  publishes again those safe to repeat and marks the others `lost`; none runs twice.
"""

from __future__ import annotations

import pytest
import redis

from jobs.models import JobStatus
from tests.chaos.support import all_finished, describe, ledger, statuses
from tests.conftest import wait_until
from worker.health import message_ids, queue_depths


def restart_with_aof(r) -> None:
    """Restart the private Redis with an append-only file synced on every write."""
    r.kill()
    i = r.args.index("--appendonly")
    r.args[i + 1] = "yes"
    r.args += ["--appendfsync", "always"]
    r.start()


@pytest.mark.slow
def test_redis_restart_keeps_queued_jobs_and_everyone_reconnects(chaos_settings, chaos_client,
                                                                  private_redis, start_worker):
    c = chaos_client
    restart_with_aof(private_redis)
    # Queued while no worker runs, then Redis dies (SIGKILL: no shutdown save).
    waiting = [c.enqueue("system.ping", {"message": f"w{i}"}) for i in range(10)]
    private_redis.kill()
    private_redis.start()
    assert queue_depths(chaos_settings.broker_url)["default"] == 10
    worker = start_worker(chaos_settings, concurrency=2)
    ids = [j.id for j in waiting]
    wait_until(lambda: all_finished(c, ids), timeout=60, message="the jobs kept by the AOF to run")
    book = ledger(c, ids)
    assert statuses(book) == {"succeeded": 10} and all(e.attempts == 1 for e in book.values()), describe(book)

    # Redis dies under a running worker (SIGKILL again) and comes back.
    private_redis.kill()
    private_redis.start()
    # The producer made before the restart enqueues after it.
    after = c.enqueue("system.ping", {"message": "after the restart"})
    assert after.wait(timeout=60)["message"] == "after the restart"
    more = [c.enqueue("system.sleep", {"seconds": 0.1, "steps": 1}) for _ in range(10)]
    wait_until(lambda: all_finished(c, [j.id for j in more]), timeout=60, message="the jobs after")
    book = ledger(c, [j.id for j in more])
    assert statuses(book) == {"succeeded": 10}, describe(book)
    assert all(len(e.history) == 1 for e in book.values()), describe(book)
    assert worker.proc.poll() is None  # the same worker process all along
    # The log says the connection was lost, without Celery's notice about a future default
    # that Conveyor does not take (running jobs are kept and claimed).
    log = worker.output()
    assert "Connection to broker lost" in log
    assert "worker_cancel_long_running_tasks_on_connection_loss" not in log


@pytest.mark.slow
def test_redis_wiped_recover_lost_republishes_safe_jobs_and_marks_the_rest(
        chaos_settings, chaos_client, private_redis, start_worker):
    c = chaos_client
    safe = [c.enqueue("system.ping", {"message": f"s{i}"}) for i in range(5)]
    unsafe = [c.enqueue("testing.not_repeatable", {"n": i}) for i in range(3)]
    redis.Redis(port=private_redis.port).flushall()
    assert message_ids(chaos_settings.broker_url) == set()
    start_worker(chaos_settings, concurrency=2)
    out = c.enqueue("maintenance.recover_lost", {"older_than_seconds": 0.1}).wait(timeout=60)
    assert sorted(out["republished"]) == sorted(j.id for j in safe)
    assert sorted(out["lost"]) == sorted(j.id for j in unsafe)

    ids = [j.id for j in safe + unsafe]
    wait_until(lambda: all_finished(c, ids), timeout=60, message="the republished jobs to run")
    book = ledger(c, ids)
    assert all(book[j.id].status == JobStatus.SUCCEEDED and book[j.id].history[-1][1] == "succeeded"
               and book[j.id].successes == 1 for j in safe), describe(book)
    # The unsafe ones never ran, and a second pass finds nothing more to do.
    assert all(book[j.id].status == JobStatus.LOST and book[j.id].history == () for j in unsafe)
    again = c.enqueue("maintenance.recover_lost", {"older_than_seconds": 0.1}).wait(timeout=60)
    assert again["republished"] == [] and again["lost"] == []


def _run_across_a_restart(chaos_settings, c, private_redis, start_worker, concurrency):
    restart_with_aof(private_redis)
    start_worker(chaos_settings, concurrency=concurrency)
    running = [c.enqueue("system.sleep", {"seconds": 6, "steps": 6}) for _ in range(2)]
    wait_until(lambda: all(c.get_job(j.id).status == JobStatus.STARTED for j in running),
               message="both jobs to start")
    private_redis.kill()
    private_redis.start()
    ids = [j.id for j in running]
    wait_until(lambda: all_finished(c, ids), timeout=60, message="the jobs to finish")
    wait_until(lambda: not message_ids(chaos_settings.broker_url), timeout=30, message="an empty broker")
    book = ledger(c, ids)
    assert all(e.status == JobStatus.SUCCEEDED for e in book.values()), describe(book)
    assert all(len(e.history) == 1 for e in book.values()), describe(book)


@pytest.mark.slow
def test_jobs_running_across_a_redis_restart_run_once(chaos_settings, chaos_client, private_redis,
                                                      start_worker):
    """Every slot busy while Redis restarts: the jobs run on, and the copy the sweep gives back
    once each has finished is acknowledged without a rerun (the job store says it succeeded)."""
    _run_across_a_restart(chaos_settings, chaos_client, private_redis, start_worker, concurrency=2)


@pytest.mark.slow
def test_jobs_running_across_a_redis_restart_run_once_with_free_slots(chaos_settings, chaos_client,
                                                                      private_redis, start_worker):
    """The lost connection's messages are not given back while their jobs run (free slots would
    take the copies at once); once done, the sweep gives them back and each copy is
    acknowledged without a rerun."""
    _run_across_a_restart(chaos_settings, chaos_client, private_redis, start_worker, concurrency=4)


def test_the_sweep_trusts_no_claims_until_redis_has_been_up_a_node_ttl(chaos_settings, private_redis):
    """Right after a Redis restart, a live worker still reconnecting has no claim in Redis: its
    running jobs' messages must not look abandoned (seen: the sweeper gave them back 0.1 s before
    the worker's own consumer reconnected, and free slots ran them twice)."""
    from worker.factory import create_app
    from worker.recovery import sweep

    app = create_app(chaos_settings)
    with app.connection_for_write() as conn:
        queue = conn.SimpleQueue("default")
        queue.put({"job": "running on a worker that is reconnecting"})
        queue.get(timeout=5)  # taken, never acknowledged: in kombu's unacked hash, claimed by no one
        queue.channel.do_restore = False  # the connection is "lost", not closed cleanly
        queue.close()
    client = redis.Redis(port=private_redis.port)
    assert int(client.info("server")["uptime_in_seconds"]) < chaos_settings.recovery_node_ttl
    assert sweep(app, min_age=0) == []
    assert client.hlen("unacked") == 1  # still unacknowledged, not given back
    assert queue_depths(chaos_settings.broker_url)["default"] == 0

    wait_until(lambda: int(client.info("server")["uptime_in_seconds"]) >= chaos_settings.recovery_node_ttl,
               timeout=10, message="Redis to have been up a node TTL")
    assert len(sweep(app, min_age=0)) == 1  # now an unclaimed message is a dead worker's
    assert queue_depths(chaos_settings.broker_url)["default"] == 1 and client.hlen("unacked") == 0
    app.close()
