"""A real Flower (started by `conveyor flower`) watching a real worker on the test broker.

One stack for the module: Flower comes up first (it only sees events sent while it listens),
then a worker, then one job of every outcome. The tests read what Flower's HTTP API shows.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from jobs.models import JobStatus
from tests.conftest import wait_until
from tests.monitoring.support import (
    PASSWORD,
    USER,
    flush_redis,
    module_database,
    stack_settings,
    start_flower,
    start_worker,
)
from tests.monitoring.tasks_sensitive import SECRET

PREFIX = "flower"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from jobs.client import Client
    from jobs.recorder import close_recorders
    from worker.factory import create_app

    tmp = tmp_path_factory.mktemp("flower")
    flush_redis()
    database = module_database("sqlite", tmp)
    settings = stack_settings(tmp, next(database), retry_max=1, flower_url_prefix=PREFIX)
    ns = SimpleNamespace(settings=settings, tmp=tmp, worker=None,
                         flower=start_flower(settings, tmp / "flower.log"))
    try:
        ns.worker = start_worker(settings, tmp / "worker.log")
        client = Client(create_app(settings))
        jobs = {
            "ping": client.enqueue("system.ping", {"message": "hello flower"}),
            "login": client.enqueue("monitoring_test.login", {"user": "ada", "password": SECRET}),
            "login_retried": client.enqueue("monitoring_test.login",
                                            {"user": "bob", "password": SECRET, "fail_first": True}),
            "failed": client.enqueue("system.sleep", {"seconds": 0, "fail": True, "permanent": True}),
            "dead": client.enqueue("system.sleep", {"seconds": 0, "fail": True}),
            "revoked": client.enqueue("system.sleep", {"seconds": 0}, countdown=2),
        }
        client.cancel(jobs["revoked"].id)
        # Published to a queue no worker consumes: Flower knows it only from its task-sent event.
        parked = client.enqueue("monitoring_test.login", {"user": "cy", "password": SECRET},
                                queue="parked")
        finals = {name: job.wait_finished(timeout=60) for name, job in jobs.items()}
        ns.client, ns.jobs, ns.parked, ns.http = client, finals, parked, ns.flower.http
        yield ns
    finally:
        if ns.worker is not None:
            ns.worker.stop()
        ns.flower.stop()
        close_recorders()
        database.close()
        flush_redis()


EXPECTED = {
    "ping": ("SUCCESS", JobStatus.SUCCEEDED),
    "login": ("SUCCESS", JobStatus.SUCCEEDED),
    "login_retried": ("SUCCESS", JobStatus.SUCCEEDED),
    "failed": ("FAILURE", JobStatus.FAILED),
    "dead": ("FAILURE", JobStatus.DEAD),
    "revoked": ("REVOKED", JobStatus.REVOKED),
}


def flower_tasks(stack: Any) -> dict[str, Any]:
    return stack.http.json("api/tasks")


def test_the_jobs_ran_as_planned(stack):
    assert {name: job.status for name, job in stack.jobs.items()} == \
        {name: status for name, (_, status) in EXPECTED.items()}
    assert stack.jobs["login"].result == {"user": "ada", "password_ok": True}  # the worker got it


def test_every_job_reaches_flower_with_its_final_state(stack):
    ids = {name: job.id for name, job in stack.jobs.items()}

    def final_states() -> dict[str, str] | None:
        tasks = flower_tasks(stack)
        states = {name: (tasks.get(job_id) or {}).get("state") for name, job_id in ids.items()}
        return states if states == {n: s for n, (s, _) in EXPECTED.items()} else None

    wait_until(final_states, timeout=30, interval=0.3, message="Flower to show every job's final state")

    tasks = flower_tasks(stack)
    for name in ("ping", "login", "login_retried", "failed", "dead"):
        task = tasks[ids[name]]
        # sent by the producer, received and started by the worker
        assert task["sent"] and task["received"] and task["started"], (name, task)
        assert task["worker"].startswith("mon-")
    assert tasks[ids["ping"]]["succeeded"] and tasks[ids["failed"]]["failed"]
    assert tasks[ids["revoked"]]["revoked"]
    # retried, then succeeded / retried, then dead
    for name in ("login_retried", "dead"):
        info = stack.http.json(f"api/task/info/{ids[name]}")
        assert info["retried"] and info["retries"] == 1, info
    assert "asked to fail permanently" in stack.http.json(f"api/task/info/{ids['failed']}")["exception"]


def test_sensitive_arguments_are_redacted(stack):
    for name in ("login", "login_retried"):
        info = wait_until(lambda n=name: (i := stack.http.json(f"api/task/info/{stack.jobs[n].id}"))
                          .get("state") == "SUCCESS" and i, timeout=30, message="the login job")
        assert "'password': '***'" in info["kwargs"] and "'user'" in info["kwargs"], info["kwargs"]
        assert SECRET not in json.dumps(info)


def test_a_job_no_worker_received_yet_is_redacted_too(stack):
    info = wait_until(lambda: (i := stack.http.json(f"api/task/info/{stack.parked.id}")).get("sent") and i,
                      timeout=30, message="Flower to see the parked job")
    assert info["state"] == "PENDING"
    assert SECRET not in json.dumps(info)
    status, body = stack.http.request("api/tasks")
    assert status == 200 and SECRET.encode() not in body


def test_requests_without_credentials_are_refused(stack):
    http = stack.http
    for path in ("", "tasks", "api/workers", "api/tasks", f"api/task/info/{stack.jobs['ping'].id}"):
        assert http.request(path, auth=False)[0] == 401, path
        assert http.request(path, credentials=(USER, "wrong"))[0] == 401, path
        assert http.request(path, credentials=("someone", PASSWORD))[0] == 401, path
    assert http.request("api/workers")[0] == 200
    assert http.request("")[0] == 200  # the dashboard, with credentials


def test_the_password_is_not_on_flowers_command_line(stack):
    assert "flower" in stack.flower.cmdline and f"--url_prefix={PREFIX}" in stack.flower.cmdline
    assert PASSWORD not in stack.flower.cmdline and USER not in stack.flower.cmdline


def test_workers_are_listed(stack):
    workers = wait_until(lambda: stack.http.json("api/workers?refresh=1") or None, timeout=20,
                         message="Flower to list the worker")
    [name] = workers
    assert name.startswith("mon-")
    assert "monitoring_test.login" in workers[name]["registered"]


def test_metrics_answer_for_prometheus(stack):
    status, body = stack.http.request("metrics")
    text = body.decode()
    assert status == 200 and "flower_events_total" in text and "flower_task_runtime_seconds" in text
    assert 'task="monitoring_test.login"' in text and 'type="task-succeeded"' in text
    assert SECRET not in text
    # Flower serves /metrics (and /healthcheck) without credentials, as docs/monitoring.md and
    # deploy/prometheus.yml say: if an upgrade closes it, they need updating.
    assert stack.http.request("metrics", auth=False)[0] == 200



def test_task_history_survives_a_flower_restart(stack):
    from tests.monitoring.support import start_flower as restart

    ping = stack.jobs["ping"].id
    wait_until(lambda: stack.http.json(f"api/task/info/{ping}").get("state") == "SUCCESS", timeout=30,
               message="Flower to record the ping")
    stack.flower.stop()
    assert stack.flower.proc.returncode == 0
    stack.flower = restart(stack.settings, stack.tmp / "flower.log")
    stack.http = stack.flower.http
    info = stack.http.json(f"api/task/info/{ping}")  # from the saved state: no event since
    assert info["state"] == "SUCCESS" and info["name"] == "system.ping"
