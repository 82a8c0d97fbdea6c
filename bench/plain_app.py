"""Plain Celery, the baseline: same broker, same worker settings, no recording, no events,
no result backend. `celery -A bench.plain_app worker` runs it."""

from __future__ import annotations

import os

from celery import Celery

from bench.tasks import count as _count
from bench.tasks import stamp as _stamp
from config import Settings
from worker.factory import celery_config

settings = Settings(broker_url=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/3"))
app = Celery("plain")
app.conf.update(celery_config(settings))
app.conf.update(result_backend=None, worker_send_task_events=False, task_send_sent_event=False)


@app.task(name="bench.count")
def count(k: str) -> None:
    _count(k)


@app.task(name="bench.stamp")
def stamp(k: str, t0: float) -> None:
    _stamp(k, t0)
