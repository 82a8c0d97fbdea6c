"""Analysis jobs end to end: a real prefork worker, Redis, the job store, the CLI, an SMTP server.

One worker serves the whole module (its data set is read-only). Checked here: a split job (a
chord: a task per partition file, then the merge) gives the same answer as a single-process
job and completes the job the user enqueued, with progress along the way; a failing partition
fails that job with its message; a report renders its files and mails its chart; the CLI
checks its input before anything is published.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib

from config import Settings
from jobs.client import Client
from jobs.errors import JobFailed
from jobs.models import JobStatus
from tests.analysis.test_analysis_engine import ACCURACY, assert_same, make_rows, write_known
from tests.conftest import REDIS_DB, ROOT, make_database, settings_env, wait_until

TIMEOUT = 90


class Mailbox:
    """A real SMTP server (aiosmtpd) on a free port that keeps what it receives."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.messages: list[bytes] = []
        self.lock = threading.Lock()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        with self.lock:
            self.messages.append(envelope.original_content or envelope.content)
        return "250 OK"

    def stop(self) -> None:
        self.controller.stop()


def start_worker(settings: Settings, log: Path, concurrency: int = 2) -> subprocess.Popen[bytes]:
    """A real `celery worker` (prefork) on `settings`, answering pings before this returns."""
    from worker.factory import create_app

    name = f"analysis-{uuid.uuid4().hex[:6]}@%h"
    env = {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-l", "INFO",
             "-c", str(concurrency),
             "-n", name, "--without-gossip", "--without-mingle", "-Q", "analysis,email,default"],
            cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    probe = create_app(settings, patch=False)
    host = name.replace("%h", socket.gethostname())

    def up() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"worker exited early:\n{log.read_text()[-3000:]}")
        return any(host in r for r in probe.control.ping(destination=[host], timeout=0.5) or [])

    wait_until(up, timeout=30, message="the analysis worker to answer a ping")
    probe.close()
    return proc


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def write_bad_partitions(folder: Path) -> None:
    """Three CSV partitions; the second has a non-number far past what the sniffer samples."""
    folder.mkdir(parents=True, exist_ok=True)
    for part in range(3):
        lines = ["id,amount"] + [f"{i},{i % 97}.5" for i in range(30_000)]
        if part == 1:
            lines[25_001] = "25000,oops"
        (folder / f"part-{part}.csv").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, redis_base: str) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("analysis-e2e")
    rows = make_rows()
    write_known(root / "data", rows)
    write_bad_partitions(root / "data" / "bad")
    broker, backend = f"{redis_base}/{REDIS_DB}", f"{redis_base}/{REDIS_DB - 1}"
    for url in (broker, backend):
        redis_lib.Redis.from_url(url).flushdb()
    databases = make_database("sqlite", root)
    mailbox = Mailbox()
    settings = Settings(_env_file=None, broker_url=broker, result_backend=backend,
                        database_url=next(databases), data_dir=root / "data", results_dir=root / "results",
                        retry_backoff=1, retry_backoff_max=2, analysis_exact_distinct_limit=100,
                        analysis_quantile_accuracy=ACCURACY, smtp_host="127.0.0.1", smtp_port=mailbox.port)
    worker = start_worker(settings, root / "worker.log")
    from worker.factory import create_app

    app = create_app(settings)
    try:
        yield {"settings": settings, "client": Client(app), "rows": rows, "mailbox": mailbox, "root": root}
    finally:
        stop_worker(worker)
        mailbox.stop()
        from jobs.recorder import close_recorders

        close_recorders()
        for url in (broker, backend):
            redis_lib.Redis.from_url(url).flushdb()


def children(client: Client, parent: str, task: str) -> list[Any]:
    return [j for j in client.list_jobs(task=task, limit=1000) if j.parent_id == parent]


def test_profile_through_a_worker(env: dict[str, Any]) -> None:
    client, rows = env["client"], env["rows"]
    result = client.enqueue("analysis.profile", {"path": "known.csv"}).wait(timeout=TIMEOUT)
    cols = {c["name"]: c for c in result["columns"]}
    assert result["rows"] == len(rows) and result["split"] is None
    assert cols["qty"]["sum"] == sum(r.qty for r in rows)
    regions = Counter(r.region for r in rows if r.region)
    assert {t["value"]: t["count"] for t in cols["region"]["top"]} == dict(regions)


def test_split_job_equals_single_and_completes_the_parent(env: dict[str, Any]) -> None:
    client = env["client"]
    payload = {"group_by": ["region"], "bucket": "day:ts",
               "metrics": ["count", "sum:amount", "mean:score", "p95:amount", "distinct:qty", "max:ts"],
               "where": ["qty > 2"]}
    split = client.enqueue("analysis.aggregate", {"path": "known_parts", **payload})
    single = client.enqueue("analysis.aggregate", {"path": "known.parquet", **payload})
    got_split, got_single = split.wait(timeout=TIMEOUT), single.wait(timeout=TIMEOUT)
    assert got_split["split"] == {"partitions": 4} and got_single["split"] is None
    assert got_split["row_count"] == got_single["row_count"] > 100
    assert_same(got_single["rows"], got_split["rows"])
    for path in got_split["files"].values():
        assert Path(path).stat().st_size > 0

    parent = client.get_job(split.id)
    assert parent.status == JobStatus.SUCCEEDED and parent.attempts == 1 and parent.runtime
    assert parent.progress == {"current": 4, "total": 4, "message": "merged 4 partitions"}
    [attempt] = client.attempts(split.id)
    assert attempt.outcome == "succeeded" and attempt.finished_at
    parts = wait_until(lambda: len(p := children(client, split.id, "analysis.partition_run")) == 4 and p,
                       message="the partition jobs' records")
    assert all(p.status == JobStatus.SUCCEEDED and p.source == "workflow" for p in parts)
    assert sorted(p.kwargs["index"] for p in parts) == [0, 1, 2, 3]
    # the merge finishes the parent from inside its run; its own record lands just after
    merges = wait_until(lambda: [j for j in client.list_jobs(task="analysis.partition_merge", limit=100)
                                 if (j.result or {}).get("parent") == split.id],
                        message="the merge job's record")
    assert len(merges) == 1 and merges[0].status == JobStatus.SUCCEEDED
    scratch = env["settings"].results_dir / ".analysis-partials" / split.id
    assert not scratch.exists()  # the merge cleans up the partials


def write_uneven_parts(folder: Path, big_rows: int = 1_500_000) -> None:
    """Four partitions, the first far larger than the rest: while it runs, the parent stays at
    one to three of four for a good part of a second (with four small ones, all four could
    finish between two looks at the record)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate([big_rows, 100, 100, 100]):
        ids = np.arange(n, dtype=np.int64)
        pq.write_table(pa.table({"id": ids, "amount": (ids % 997) * 1.5}), folder / f"part-{i}.parquet")


def test_parent_shows_progress_as_partitions_finish(env: dict[str, Any]) -> None:
    client = env["client"]
    write_uneven_parts(env["settings"].data_dir / "uneven_parts")
    job = client.enqueue("analysis.profile", {"path": "uneven_parts"})
    seen: list[tuple[int, int]] = []
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        rec = client.get_job(job.id)
        if rec.progress and rec.progress.get("total") == 4:
            point = (rec.progress["current"], rec.progress["total"])
            if not seen or seen[-1] != point:
                seen.append(point)
        if rec.finished:
            break
        time.sleep(0.005)
    assert client.get_job(job.id).status == JobStatus.SUCCEEDED
    currents = [c for c, _ in seen]
    assert currents == sorted(currents) and currents[-1] == 4
    assert any(0 < c < 4 for c in currents), f"no partition progress was seen: {seen}"


def test_failing_partition_fails_the_parent_with_its_message(env: dict[str, Any]) -> None:
    client = env["client"]
    job = client.enqueue("analysis.aggregate", {"path": "bad", "metrics": ["sum:amount"]})
    with pytest.raises(JobFailed) as failed:
        job.wait(timeout=TIMEOUT)
    assert failed.value.status == JobStatus.FAILED
    assert failed.value.error_type == "UnreadableDataset"
    assert failed.value.error.startswith("partition 2 of 3: reading part-1.csv failed: Conversion Error")
    assert 'Could not convert string "oops"' in failed.value.error
    bad = wait_until(lambda: [p for p in children(client, job.id, "analysis.partition_run")
                              if p.status == JobStatus.FAILED], message="the failed partition's record")
    assert [p.kwargs["index"] for p in bad] == [1] and bad[0].attempts == 1  # permanent: not retried


def test_report_renders_and_mails_its_chart(env: dict[str, Any]) -> None:
    client = env["client"]
    result = client.enqueue("analysis.report", {
        "path": "known_parts", "title": "Known sales", "email": ["ops@example.com"],
        "aggregates": [{"group_by": ["region"], "bucket": "week:ts", "metrics": ["sum:amount", "count"]}],
        "anomalies": {"metric": "count", "bucket": "day:ts"}}).wait(timeout=TIMEOUT)
    chart, html = Path(result["files"]["chart"]), Path(result["files"]["html"])
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 5000
    page = html.read_text()
    assert "<h1>Known sales</h1>" in page and 'src="chart.png"' in page and "Profile: 3000 rows" in page
    assert result["split"] == {"partitions": 4} and result["summary"][0].startswith("3,000 rows")
    email = client.get_job(result["email_job"])
    assert email.task == "email.send" and email.source == "workflow"
    assert email.kwargs["to"] == ["ops@example.com"] and email.kwargs["template"] == "analysis_report"
    assert email.kwargs["attachments"] == [str(chart)]
    assert email.kwargs["context"]["summary"] == result["summary"]
    mailbox = env["mailbox"]
    wait_until(lambda: mailbox.messages, timeout=TIMEOUT, message="the report's email")
    message = message_from_bytes(mailbox.messages[0], policy=policy.default)
    attached = {part.get_filename(): part.get_content() for part in message.iter_attachments()}
    assert attached == {"chart.png": chart.read_bytes()}


def test_report_email_without_the_email_task_is_refused(env: dict[str, Any]) -> None:
    from tasks.analysis import api
    from tasks.analysis.errors import EmailUnavailable
    from worker.factory import create_app

    app = create_app(env["settings"])
    app.tasks.pop("email.send")
    with pytest.raises(EmailUnavailable, match="no 'email.send' task is registered"):
        api.submit(Client(app), "analysis.report", {"path": "known.csv", "email": ["ops@example.com"]})
    reports = env["client"].list_jobs(task="analysis.report", limit=100)
    assert all(j.kwargs.get("path") != "known.csv" for j in reports)  # nothing was published


# --- the CLI ----------------------------------------------------------------------------------------
def test_cli_aggregate_waits_and_prints(env: dict[str, Any], run_cli: Any) -> None:
    s = env["settings"]
    out = run_cli(s, "analyze", "aggregate", "known_parts", "--group-by", "region", "--bucket", "month:ts",
                  "--metric", "sum:amount", "--metric", "p95:amount", "--where", "region != east",
                  "--wait", "--json", timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr
    job = json.loads(out.stdout)
    assert job["status"] == "succeeded" and job["source"] == "cli"
    assert job["result"]["columns"] == ["region", "month", "sum_amount", "p95_amount"]
    # != drops nulls, as in SQL
    assert {r["region"] for r in job["result"]["rows"]} == {"north", "south", "west"}
    table = run_cli(s, "analyze", "aggregate", "known.csv", "--group-by", "region", "--metric", "count",
                    "--sort", "-count", "--wait", timeout=TIMEOUT)
    assert table.returncode == 0, table.stderr
    assert "region" in table.stdout and "aggregate.csv" in table.stdout


@pytest.mark.parametrize("args,message", [
    (["profile", "missing.csv"], "'missing.csv' does not exist under the data directory"),
    (["profile", "../etc/passwd"], "no '..'"),
    (["aggregate", "known.csv", "--metric", "sum:nope"], "unknown column 'nope'; the data set has: id, ts"),
    (["aggregate", "known.csv", "--metric", "mean:region"], "needs a numeric column"),
    (["aggregate", "known.csv", "--where", "amount > abc"], "'abc' is not a number"),
    (["aggregate", "known.csv", "--where", "amount"], "not 'column op value'"),
])
def test_cli_refuses_bad_input_before_publishing(env: dict[str, Any], run_cli: Any, args: list[str],
                                                 message: str) -> None:
    before = len(env["client"].list_jobs(limit=10_000))
    out = run_cli(env["settings"], "analyze", *args)
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert len(env["client"].list_jobs(limit=10_000)) == before  # nothing recorded, nothing published


def test_cli_no_check_fails_the_job_with_the_same_message(env: dict[str, Any], run_cli: Any) -> None:
    out = run_cli(env["settings"], "analyze", "profile", "missing.csv", "--no-check", "--wait",
                  timeout=TIMEOUT)
    assert out.returncode == 1
    assert "DatasetNotFound: 'missing.csv' does not exist under the data directory" in out.stderr
