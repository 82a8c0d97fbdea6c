"""A split analysis job on PostgreSQL: the merge completes the parent's record there too.

Its own module (and worker): a worker shares the broker with every other worker of the test
Redis database, so two workers on two job stores must never run at the same time.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis as redis_lib

from config import Settings
from jobs.client import Client
from jobs.models import JobStatus
from tests.analysis.test_analysis_e2e import TIMEOUT, start_worker, stop_worker
from tests.analysis.test_analysis_engine import make_rows, write_known
from tests.conftest import REDIS_DB, make_database

pytestmark = pytest.mark.postgres


def test_split_job_on_postgresql(tmp_path: Path, redis_base: str) -> None:
    write_known(tmp_path / "data", make_rows(600))
    broker, backend = f"{redis_base}/{REDIS_DB}", f"{redis_base}/{REDIS_DB - 1}"
    for url in (broker, backend):
        redis_lib.Redis.from_url(url).flushdb()
    databases = make_database("postgresql", tmp_path)
    settings = Settings(_env_file=None, broker_url=broker, result_backend=backend,
                        database_url=next(databases), data_dir=tmp_path / "data",
                        results_dir=tmp_path / "results", retry_backoff=1, retry_backoff_max=2)
    worker = start_worker(settings, tmp_path / "worker.log")
    try:
        from worker.factory import create_app

        client = Client(create_app(settings))
        job = client.enqueue("analysis.anomalies", {"path": "known_parts", "metric": "sum:amount",
                                                    "bucket": "day:ts"})
        result = job.wait(timeout=TIMEOUT)
        assert result["split"] == {"partitions": 4} and result["buckets"] >= 18
        done = client.get_job(job.id)
        assert done.status == JobStatus.SUCCEEDED and done.progress["current"] == 4
        assert [a.outcome for a in client.attempts(job.id)] == ["succeeded"]
    finally:
        stop_worker(worker)
        for url in (broker, backend):
            redis_lib.Redis.from_url(url).flushdb()
        for _ in databases:
            pass
