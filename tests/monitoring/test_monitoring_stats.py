"""`conveyor stats`: figures checked against a known set of jobs, on SQLite and PostgreSQL;
queue depths and ages from a real Redis; the command end to end with a real worker."""

from __future__ import annotations

import json
import random
from datetime import timedelta

import pytest

from jobs.db import utcnow
from jobs.models import JobStatus
from jobs.stats import StatsQueries, queue_stats
from jobs.store import JobStore
from tests.conftest import wait_until
from worker.cli import seconds

T0 = utcnow().replace(microsecond=0) - timedelta(days=1)


def row(task: str, status: JobStatus, *, runtime: float | None = None, attempts: int = 1,
        minute: float = 1) -> dict:
    created = T0 + timedelta(minutes=minute)
    return {"id": f"{task}-{random.random()}", "task": task, "queue": "default", "status": status,
            "created_at": created, "runtime": runtime, "attempts": attempts,
            "finished_at": created + timedelta(seconds=runtime or 0) if status in
            (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.DEAD) else None}


def known_jobs() -> list[dict]:
    rows = [row("report.build", JobStatus.SUCCEEDED, runtime=float(r)) for r in range(1, 18)]
    rows += [
        row("report.build", JobStatus.SUCCEEDED, runtime=18.0, attempts=2),  # one retry, then fine
        row("report.build", JobStatus.FAILED, runtime=19.0),
        row("report.build", JobStatus.DEAD, runtime=20.0, attempts=3),  # two retries, then dead
        row("report.build", JobStatus.REVOKED),
        row("report.build", JobStatus.QUEUED, attempts=0),
        row("report.build", JobStatus.STARTED),
        row("report.build", JobStatus.RETRYING, attempts=2),  # waiting for its retry
        row("mail.send", JobStatus.SUCCEEDED, runtime=0.25, minute=9.5),
        # outside the window [T0, T0 + 10 min): not counted
        row("report.build", JobStatus.SUCCEEDED, runtime=500.0, minute=-0.01),
        row("report.build", JobStatus.FAILED, runtime=600.0, minute=10),
        row("old.task", JobStatus.SUCCEEDED, runtime=1.0, minute=-60),
    ]
    random.shuffle(rows)
    return rows


def test_task_figures_match_a_known_set_of_jobs(database_url):
    JobStore(database_url).create_many(known_jobs())
    stats = {t.task: t for t in StatsQueries(database_url).task_stats(T0, T0 + timedelta(minutes=10))}
    assert sorted(stats) == ["mail.send", "report.build"]

    report = stats["report.build"]
    assert (report.jobs, report.succeeded, report.failed, report.dead, report.revoked, report.running,
            report.queued) == (24, 18, 1, 1, 1, 2, 1)
    assert report.retries == 1 + 2 + 1
    assert report.success_rate == pytest.approx(18 / 20)
    # nearest rank over the 20 jobs that ran to an end, runtimes 1..20
    assert (report.runtime_p50, report.runtime_p95, report.runtime_max) == (10.0, 19.0, 20.0)
    assert report.throughput == pytest.approx(20 / 10)

    mail = stats["mail.send"]
    assert (mail.jobs, mail.succeeded, mail.retries, mail.success_rate) == (1, 1, 0, 1.0)
    assert mail.runtime_p50 == mail.runtime_p95 == mail.runtime_max == 0.25


def test_no_jobs_and_no_finished_jobs(database_url):
    queries = StatsQueries(database_url)
    assert queries.task_stats(T0, T0 + timedelta(minutes=10)) == []
    JobStore(database_url).create_many([row("x.y", JobStatus.QUEUED, attempts=0)])
    [only] = queries.task_stats(T0, T0 + timedelta(minutes=10))
    assert (only.jobs, only.queued, only.success_rate, only.runtime_p50, only.runtime_max,
            only.throughput) == (1, 1, None, None, None, 0.0)


def test_queue_depth_and_oldest_waiting_job(client, settings):
    # nothing consumes these: a worker is not running
    first = client.enqueue("system.ping", {}, priority=9)  # low priority: waits longest
    second = client.enqueue("system.ping", {}, priority=0)
    mail = client.enqueue("maintenance.prune_jobs", {})
    now = utcnow() + timedelta(seconds=5)
    queues, unacked = queue_stats(settings.broker_url, StatsQueries(settings.database_url),
                                  ["default", "maintenance", "email"], now)
    by_name = {q.queue: q for q in queues}
    assert (by_name["default"].depth, by_name["default"].oldest_job) == (2, first.id)
    created = client.get_job(first.id).created_at
    assert by_name["default"].oldest_age == pytest.approx((now - created).total_seconds())
    assert (by_name["maintenance"].depth, by_name["maintenance"].oldest_job) == (1, mail.id)
    email = by_name["email"]
    assert (email.depth, email.oldest_job, email.oldest_age) == (0, None, None)
    assert unacked == 0
    assert second.id != first.id


def test_stats_command_end_to_end(make_settings, redis_url, sqlite_url, start_worker, run_cli):
    from jobs.client import Client
    from jobs.recorder import close_recorders
    from worker.factory import create_app

    settings = make_settings(broker_url=redis_url, result_backend=redis_url.rsplit("/", 1)[0] + "/0",
                             database_url=sqlite_url, retry_max=1)
    start_worker(settings, queues="default")  # the maintenance queue is left alone
    client = Client(create_app(settings))
    try:
        done = [client.enqueue("system.ping", {}) for _ in range(3)]
        done.append(client.enqueue("system.sleep", {"seconds": 0, "fail": True, "permanent": True}))
        done.append(client.enqueue("system.sleep", {"seconds": 0, "fail": True}))  # retried, then dead
        parked = [client.enqueue("maintenance.prune_jobs", {}) for _ in range(2)]
        for job in done:
            job.wait_finished(timeout=30)
        running = client.enqueue("system.sleep", {"seconds": 60, "steps": 60})  # cancelled below
        wait_until(lambda: client.get_job(running.id).status == JobStatus.STARTED, message="the sleeper")

        result = run_cli(settings, "stats", "--json", "--since", "10m")
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        tasks = {t["task"]: t for t in report["tasks"]}
        assert {k: tasks["system.ping"][k] for k in ("jobs", "succeeded", "success_rate", "retries")} == \
            {"jobs": 3, "succeeded": 3, "success_rate": 1.0, "retries": 0}
        sleep = tasks["system.sleep"]
        assert (sleep["jobs"], sleep["failed"], sleep["dead"], sleep["running"], sleep["retries"],
                sleep["success_rate"]) == (3, 1, 1, 1, 1, 0.0)
        assert tasks["maintenance.prune_jobs"]["queued"] == 2
        queues = {q["queue"]: q for q in report["queues"]}
        assert queues["maintenance"]["depth"] == 2 and queues["maintenance"]["oldest_job"] == parked[0].id
        assert queues["maintenance"]["oldest_age"] >= 0 and queues["default"]["depth"] == 0
        [worker] = report["workers"]
        assert worker["worker"].startswith("w0-")
        assert [(j["id"], j["task"]) for j in worker["running"]] == [(running.id, "system.sleep")]
        assert report["errors"] == {}

        table = run_cli(settings, "stats")
        assert table.returncode == 0
        for text in ("system.ping", "system.sleep", "Queues", "maintenance", "Workers online", running.id):
            assert text in table.stdout, text
        client.cancel(running.id, terminate=True)
    finally:
        close_recorders()


def test_stats_reports_what_is_down_and_shows_the_rest(make_settings, sqlite_url, run_cli):
    settings = make_settings(broker_url="redis://127.0.0.1:1/0", database_url=sqlite_url)
    result = run_cli(settings, "stats", "--json")
    assert result.returncode == 3
    report = json.loads(result.stdout)
    assert report["tasks"] == [] and report["queues"] is None and "queues" in report["errors"]


def test_stats_refuses_a_bad_window(make_settings, sqlite_url, run_cli):
    result = run_cli(make_settings(database_url=sqlite_url), "stats", "--since", "yesterday")
    assert result.returncode == 2 and "neither a duration" in result.stderr


@pytest.mark.parametrize("value, shown", [(None, ""), (0.0042, "4.2ms"), (2.5, "2.50s"),
                                          (75, "1m15s"), (3 * 3600 + 120, "3h02m")])
def test_durations_read_at_a_glance(value, shown):
    assert seconds(value) == shown
