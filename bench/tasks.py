"""Tasks the benchmarks run: the same no-op and latency stamp as Conveyor tasks and as plain Celery.

Each one touches Redis once (INCR or RPUSH) so the benchmark knows when every job ran; the
Conveyor and plain versions do exactly the same work.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from pydantic import BaseModel, ConfigDict

from tasks.registry import job

_client: redis.Redis | None = None
_pid = 0


def bench_redis() -> redis.Redis:
    global _client, _pid
    if _client is None or _pid != os.getpid():
        _client = redis.Redis.from_url(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/3"))
        _pid = os.getpid()
    return _client


def count(k: str) -> None:
    bench_redis().incr(k)


def stamp(k: str, t0: float) -> None:
    bench_redis().rpush(k, time.time() - t0)


class CountInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    k: str


class StampInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    k: str
    t0: float


@job("bench.count", input=CountInput)
def conveyor_count(task: Any, data: CountInput) -> None:
    """Count one run in Redis (the throughput benchmark's no-op)."""
    count(data.k)


@job("bench.stamp", input=StampInput)
def conveyor_stamp(task: Any, data: StampInput) -> None:
    """Push the enqueue-to-start delay to Redis (the latency benchmark)."""
    stamp(data.k, data.t0)
