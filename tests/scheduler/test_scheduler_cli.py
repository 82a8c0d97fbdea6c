"""`conveyor schedule ...` as an operator runs it: real subprocesses, a real worker for run-now."""

from __future__ import annotations

import json

import pytest

from tests.conftest import REDIS_DB


@pytest.fixture
def cli_settings(make_settings, redis_url, sqlite_url):
    results = redis_url.rsplit("/", 1)[0] + f"/{REDIS_DB - 1}"
    return make_settings(broker_url=redis_url, result_backend=results, database_url=sqlite_url)


def listed(run_cli, settings):
    out = run_cli(settings, "schedule", "list", "--json")
    assert out.returncode == 0, out.stderr
    return {s["name"]: s for s in json.loads(out.stdout)}


def test_add_list_update_disable_enable_remove(run_cli, cli_settings):
    s = cli_settings
    out = run_cli(s, "schedule", "add", "morning", "--task", "system.ping", "--cron", "0 7 * * 1-5",
                  "--tz", "Europe/Paris", "-d", "message=good morning", "--overlap", "skip", "--json")
    assert out.returncode == 0, out.stderr
    added = json.loads(out.stdout)
    assert added["timing"] == "cron 0 7 * * 1-5 (Europe/Paris)"
    assert added["payload"] == {"message": "good morning"}
    assert added["next_run_at"] and added["overlap"] == "skip"

    out = run_cli(s, "schedule", "update", "morning", "--every", "10m", "--data", '{"message": "later"}')
    assert out.returncode == 0, out.stderr
    assert "every 10m" in out.stdout
    out = run_cli(s, "schedule", "disable", "morning")
    assert out.returncode == 0 and "disabled" in out.stdout
    row = listed(run_cli, s)["morning"]
    assert row["timing"] == "every 10m" and row["payload"] == {"message": "later"}
    assert row["enabled"] is False and row["next_run_at"] is None

    out = run_cli(s, "schedule", "enable", "morning", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["enabled"] is True
    out = run_cli(s, "schedule", "remove", "morning", "--yes")
    assert out.returncode == 0, out.stderr
    out = run_cli(s, "schedule", "remove", "morning", "--yes")
    assert out.returncode == 1 and "no schedule named 'morning'" in out.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--task", "system.ping", "--cron", "0 25 * * *"], "invalid cron expression"),
    (["--task", "system.nope", "--every", "1m"], "unknown task 'system.nope'"),
    (["--task", "system.sleep", "--every", "1m", "--data", '{"seconds": "long"}'],
     "invalid input for system.sleep"),
    (["--task", "system.ping", "--every", "1m", "--cron", "* * * * *"], "give one of --cron, --every, --at"),
])
def test_bad_schedules_are_refused_and_nothing_is_saved(run_cli, cli_settings, args, message):
    out = run_cli(cli_settings, "schedule", "add", "bad", *args)
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    assert listed(run_cli, cli_settings) == {}


def test_run_now_records_the_job_with_the_schedule_as_source(run_cli, cli_settings, start_worker):
    start_worker(cli_settings, queues="default")
    assert run_cli(cli_settings, "schedule", "add", "ping", "--task", "system.ping", "--cron", "0 0 1 1 *",
                   "-d", "message=now", "--disabled").returncode == 0
    out = run_cli(cli_settings, "schedule", "run-now", "ping", "--wait", "--timeout", "60", "--json")
    assert out.returncode == 0, out.stderr
    job = json.loads(out.stdout)
    assert job["status"] == "succeeded" and job["source"] == "schedule:ping"
    assert job["result"]["message"] == "now"
    out = run_cli(cli_settings, "schedule", "show", "ping", "--json")
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["run_count"] == 1 and shown["last_job_id"] == job["id"]
    assert [f["job_id"] for f in shown["firings"]] == [job["id"]]


def test_seed_creates_defaults_once(run_cli, cli_settings):
    out = run_cli(cli_settings, "schedule", "seed", "--json")
    assert out.returncode == 0, out.stderr
    first = {r["name"]: r for r in json.loads(out.stdout)}
    assert first["prune-jobs"]["action"] == "created"
    for r in first.values():
        assert r["action"] in ("created", "skipped") and r["message"], (r, out.stderr)
    out = run_cli(cli_settings, "schedule", "seed", "--json")
    assert out.returncode == 0, out.stderr
    second = {r["name"]: r["action"] for r in json.loads(out.stdout)}
    assert second["prune-jobs"] == "exists"
    rows = listed(run_cli, cli_settings)
    assert rows["prune-jobs"]["enabled"] is False and rows["prune-jobs"]["task"] == "maintenance.prune_jobs"
    # the safety net behind "no job lost" is on from the start
    assert rows["recover-lost"]["enabled"] is True and rows["recover-lost"]["task"] == "maintenance.recover_lost"
