"""The `conveyor` command line, run as a real subprocess against Redis, the job store and a worker."""

from __future__ import annotations

import json

import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.one_database  # the job store is not the subject here


def test_tasks_lists_input_fields(run_cli, settings):
    out = run_cli(settings, "tasks", "--json")
    assert out.returncode == 0, out.stderr
    tasks = {t["name"]: t for t in json.loads(out.stdout)}
    assert {"system.ping", "system.sleep", "maintenance.prune_jobs"} <= set(tasks)
    fields = {f["name"]: f for f in tasks["system.sleep"]["fields"]}
    assert fields["seconds"]["type"] == "float" and not fields["seconds"]["required"]


def test_enqueue_wait_list_show(run_cli, settings, start_worker):
    start_worker(settings)
    out = run_cli(settings, "enqueue", "system.ping", "-d", "message=hello", "--wait", "--timeout", "30",
                  "--json")
    assert out.returncode == 0, out.stderr
    job = json.loads(out.stdout)
    assert job["status"] == "succeeded" and job["result"]["message"] == "hello" and job["source"] == "cli"

    listed = json.loads(run_cli(settings, "jobs", "list", "--json", "--since", "1h").stdout)
    assert [j["id"] for j in listed] == [job["id"]]
    shown = json.loads(run_cli(settings, "jobs", "show", job["id"], "--json").stdout)
    assert shown["attempt_history"][0]["reason"] == "first_run"

    human = run_cli(settings, "jobs", "show", job["id"])
    assert human.returncode == 0 and "succeeded" in human.stdout and "hello" in human.stdout


def test_failed_job_exits_nonzero_and_can_be_retried(run_cli, settings, start_worker):
    start_worker(settings)
    out = run_cli(settings, "enqueue", "system.sleep", "--data",
                  '{"seconds": 0, "fail": true, "permanent": true}', "--wait", "--timeout", "30")
    assert out.returncode == 1 and "PermanentError" in out.stdout
    failed = json.loads(run_cli(settings, "jobs", "list", "--status", "failed", "--json").stdout)
    assert len(failed) == 1
    retried = run_cli(settings, "jobs", "retry", failed[0]["id"], "--json")
    assert retried.returncode == 0, retried.stderr
    assert json.loads(retried.stdout)["retry_of"] == failed[0]["id"]


def test_bad_input_is_one_line_and_nonzero(run_cli, settings):
    out = run_cli(settings, "enqueue", "system.sleep", "-d", "seconds=-3")
    assert out.returncode == 2 and "seconds" in out.stderr and "Traceback" not in out.stderr
    out = run_cli(settings, "enqueue", "no.such.task")
    assert out.returncode == 2 and "system.ping" in out.stderr
    out = run_cli(settings, "enqueue", "system.ping", "--data", "{not json")
    assert out.returncode == 2 and "not JSON" in out.stderr
    out = run_cli(settings, "jobs", "show", "nope")
    assert out.returncode == 1 and "no job" in out.stderr
    out = run_cli(settings, "jobs", "list", "--status", "sleeping")
    assert out.returncode == 2 and "unknown status" in out.stderr
    assert json.loads(run_cli(settings, "jobs", "list", "--json").stdout) == []


def test_broker_and_database_down_are_one_line_errors(run_cli, settings, tmp_path):
    dead_redis = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    out = run_cli(settings.model_copy(update={"broker_url": dead_redis}), "enqueue", "system.ping",
                  timeout=20)
    assert out.returncode == 3, out.stderr
    assert "broker redis://:***@127.0.0.1" in out.stderr and "hunter2" not in out.stderr
    assert "Traceback" not in out.stderr

    dead_db = f"postgresql://app:hunter2@127.0.0.1:{free_port()}/x"
    out = run_cli(settings.model_copy(update={"database_url": dead_db}), "jobs", "list", timeout=20)
    assert out.returncode == 3 and "app:***@127.0.0.1" in out.stderr and "hunter2" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_status_reports_every_part(run_cli, settings, start_worker):
    out = run_cli(settings, "status", "--json", "--timeout", "0.5")
    report = json.loads(out.stdout)
    assert out.returncode == 0
    assert report["broker"]["ok"] and report["database"]["ok"] and report["database"]["migrations_current"]
    assert report["workers"] == []
    run_cli(settings, "enqueue", "system.ping", "--queue", "maintenance", "--priority", "9")
    run_cli(settings, "enqueue", "system.ping", "--queue", "maintenance")
    report = json.loads(run_cli(settings, "status", "--json", "--timeout", "0.5").stdout)
    assert report["queues"] == {"default": 0, "email": 0, "analysis": 0, "reconciliation": 0,
                                "maintenance": 2}
    start_worker(settings)
    report = json.loads(run_cli(settings, "status", "--json").stdout)
    assert len(report["workers"]) == 1


def test_status_without_migrations_says_so(run_cli, make_settings, redis_url, tmp_path):
    settings = make_settings(broker_url=redis_url, database_url=f"sqlite:///{tmp_path / 'empty.db'}")
    out = run_cli(settings, "status")
    assert out.returncode == 3 and "conveyor db upgrade" in out.stdout
    assert run_cli(settings, "db", "upgrade").returncode == 0
    assert run_cli(settings, "status", "--timeout", "0.2").returncode == 0


def test_cancel_holds_through_worker_restart(run_cli, client, settings, start_worker):
    job = client.enqueue("system.ping", {"message": "never"})  # no worker is running
    out = run_cli(settings, "jobs", "cancel", job.id)
    assert out.returncode == 0, out.stderr
    start_worker(settings)
    marker = client.enqueue("system.ping", {"message": "after"})  # queued behind the cancelled one
    marker.wait(timeout=30)
    done = client.get_job(job.id)
    assert done.status == "revoked" and done.started_at is None
    assert client.attempts(job.id) == []
