"""Through a real worker and the real `conveyor` CLI, on SQLite and PostgreSQL (one worker per
database for the whole module)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib

from tests.conftest import REDIS_DB, ROOT, WorkerProcess, make_database, settings_env, wait_until

SAMPLES = ROOT / "samples" / "reconciliation"
TRUTH = json.loads((SAMPLES / "truth.json").read_text())
LEDGER, STATEMENT = "reconciliation/ledger.csv", "reconciliation/statement.csv"
ALL_TYPES = {
    "exact",
    "reference",
    "tolerance",
    "grouped",
    "missing_in_statement",
    "missing_in_ledger",
    "amount_mismatch",
    "currency_mismatch",
    "duplicate_in_ledger",
    "duplicate_in_statement",
    "ambiguous",
}


@dataclass
class Env:
    settings: Any
    client: Any
    worker: WorkerProcess


def _start_worker(settings: Any, log: Path) -> WorkerProcess:
    from worker.factory import create_app

    name = f"recon-{uuid.uuid4().hex[:6]}@%h"
    env = {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "worker.app",
                "worker",
                "-l",
                "INFO",
                "-c",
                "1",
                "-n",
                name,
                "--without-gossip",
                "--without-mingle",
                "-Q",
                "reconciliation",
            ],
            cwd=ROOT,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker = WorkerProcess(proc, log, env)
    probe = create_app(settings, patch=False)
    host = name.replace("%h", socket.gethostname())

    def answered() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"worker exited early:\n{worker.output()[-3000:]}")
        return any(host in r for r in probe.control.ping(destination=[host], timeout=0.5) or [])

    wait_until(answered, timeout=40, message="the worker to answer a ping")
    probe.close()
    return worker


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def env(request, tmp_path_factory, redis_base):
    from config import Settings
    from jobs.client import Client
    from worker.factory import create_app

    tmp = tmp_path_factory.mktemp(f"recon-{request.param}")
    databases = make_database(request.param, tmp)
    url = next(databases)
    (tmp / "data" / "reconciliation").mkdir(parents=True)
    for name in ("ledger.csv", "statement.csv", "statement.camt053.xml"):
        shutil.copyfile(SAMPLES / name, tmp / "data" / "reconciliation" / name)
    broker = f"{redis_base}/{REDIS_DB}"
    for db in (REDIS_DB, REDIS_DB - 1):
        redis_lib.Redis.from_url(f"{redis_base}/{db}").flushdb()
    settings = Settings(
        _env_file=None,
        broker_url=broker,
        result_backend=f"{redis_base}/{REDIS_DB - 1}",
        database_url=url,
        data_dir=tmp / "data",
        results_dir=tmp / "results",
        retry_backoff=1,
        retry_backoff_max=2,
        cancel_poll_interval=0.2,
    )
    worker = _start_worker(settings, tmp / "worker.log")
    app = create_app(settings)
    try:
        yield Env(settings, Client(app), worker)
    finally:
        worker.stop()
        from jobs.recorder import close_recorders

        close_recorders()
        app.close()
        redis_lib.Redis.from_url(broker).flushdb()
        next(databases, None)


def test_cli_reconciles_waits_and_prints_json(env, run_cli):
    out = run_cli(env.settings, "reconcile", LEDGER, STATEMENT, "--json", timeout=120)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert set(summary["counts"]) == ALL_TYPES
    assert {k: v for k, v in summary["counts"].items() if v} == TRUTH["counts"]
    assert set(summary["totals"]) >= {"ledger", "statement", "matched", "unexplained"}
    assert Path(summary["report_path"]).is_file()
    assert Path(summary["report_path"]).is_relative_to(env.settings.results_dir)
    # the same inputs again: the same run, found by its key, not redone
    again = json.loads(run_cli(env.settings, "reconcile", LEDGER, STATEMENT, "--json", timeout=120).stdout)
    assert again["run_id"] == summary["run_id"] and again["reused"] is True
    assert again["counts"] == summary["counts"]


def test_wait_shows_tables_and_show_lists_discrepancies(env, run_cli):
    out = run_cli(
        env.settings,
        "reconcile",
        LEDGER,
        "reconciliation/statement.camt053.xml",
        "--wait",
        "--date-tolerance",
        "3",
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "missing_in_statement" in out.stdout and "Totals" in out.stdout and "unexplained" in out.stdout
    run_id = out.stdout.split("Reconciliation ", 1)[1].split(":", 1)[0]
    shown = run_cli(env.settings, "recon", "show", run_id[:8], "--discrepancies")
    assert shown.returncode == 0, shown.stderr
    assert (
        f"Discrepancies ({sum(v for k, v in TRUTH['counts'].items() if k not in _matches())}" in shown.stdout
    )
    data = json.loads(run_cli(env.settings, "recon", "show", run_id, "--discrepancies", "--json").stdout)
    assert {i["kind"] for i in data["items"]} == {"discrepancy"}
    assert {i["type"] for i in data["items"]} == ALL_TYPES - _matches()
    listed = run_cli(env.settings, "recon", "list", "--json")
    assert run_id in {r["run_id"] for r in json.loads(listed.stdout)}


def _matches() -> set[str]:
    return {"exact", "reference", "tolerance", "grouped"}


def test_bad_input_is_refused_before_anything_is_published(env, run_cli, tmp_path):
    (env.settings.data_dir / "nocurrency.csv").write_text("id,date,amount,reference\nA,2026-10-01,1.00,R\n")
    outside = tmp_path / "outside.csv"
    outside.write_text("id\n")
    before = len(env.client.list_jobs(task="reconciliation.reconcile", limit=1000))
    for args, message in (
        (("nocurrency.csv", STATEMENT), "has no column 'currency'"),
        ((str(outside), STATEMENT), "outside the data directory"),
        ((LEDGER, "nope.csv"), "does not exist"),
        ((LEDGER, STATEMENT, "--mapping", "nope"), "unknown mapping preset 'nope'"),
        ((LEDGER, STATEMENT, "--amount-tolerance", "abc"), "not a decimal number"),
    ):
        out = run_cli(env.settings, "reconcile", *args, "--wait")
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert message in out.stderr and "Traceback" not in out.stderr
    assert len(env.client.list_jobs(task="reconciliation.reconcile", limit=1000)) == before


def test_a_bad_cell_found_by_the_worker_fails_the_job_and_the_run(env, run_cli):
    from jobs.errors import JobFailed
    from tasks.reconciliation.store import RunStore

    (env.settings.data_dir / "badamount.csv").write_text(
        "id,date,amount,currency,reference,counterparty\nA,2026-10-01,1.00,EUR,R,x\nB,2026-10-02,3,14,EUR,Q,y\n".replace(
            "3,14", "3.1.4"
        )
    )
    job = env.client.enqueue("reconciliation.reconcile", {"ledger": "badamount.csv", "statement": STATEMENT})
    with pytest.raises(JobFailed) as err:
        job.wait(timeout=60)
    assert "badamount.csv line 3: amount '3.1.4' is not a decimal amount" in str(err.value)
    done = env.client.get_job(job.id)
    assert done.status == "failed" and done.attempts == 1  # bad input is not retried
    run = RunStore(env.settings.database_url).get(job.id)
    assert run.status == "failed" and "line 3" in run.error
    assert RunStore(env.settings.database_url).count_items(run.id) == 0
    shown = run_cli(env.settings, "recon", "show", job.id)
    assert shown.returncode == 1 and "line 3" in shown.stdout
    cli = run_cli(env.settings, "reconcile", "badamount.csv", STATEMENT, "--wait", timeout=120)
    assert cli.returncode == 1 and "line 3" in cli.stderr
    # the worker is still there and still works
    assert env.client.enqueue("reconciliation.reconcile", {"ledger": LEDGER, "statement": STATEMENT}).wait(60)


def test_discrepancies_mail_the_summary_through_email_send(env):
    from tasks.registry import REGISTRY

    if "email.send" not in REGISTRY:
        pytest.skip("the email family is not installed")
    job = env.client.enqueue(
        "reconciliation.reconcile",
        {"ledger": LEDGER, "statement": STATEMENT, "notify": ["finance@example.com"], "force": True},
    )
    result = job.wait(timeout=120)
    note = result["notification"]
    assert note["status"] == "enqueued", note
    mail = env.client.get_job(note["job_id"])
    assert mail.task == "email.send" and mail.source == "workflow" and mail.queue == "email"
    sent = mail.kwargs
    assert sent["to"] == ["finance@example.com"] and sent["template"] == "reconciliation_report"
    assert set(sent["context"]) == {
        "run_id",
        "ledger",
        "statement",
        "counts",
        "totals",
        "unexplained_difference",
        "report_path",
    }
    assert sent["context"]["run_id"] == result["run_id"] and sent["context"]["counts"] == result["counts"]
    [attachment] = sent["attachments"]
    assert Path(attachment).name == "discrepancies.csv" and Path(attachment).is_file()
    assert Path(attachment).is_relative_to(env.settings.results_dir)
    progress = env.client.get_job(job.id).progress
    assert progress["current"] == progress["total"]
