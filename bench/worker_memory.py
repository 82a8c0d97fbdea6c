"""Does a worker's main process grow with the jobs it runs? Conveyor against plain Celery.

    python bench/worker_memory.py [--jobs 40000] [--batch 5000]

Runs one worker of each (2 pool processes, no kills, same Redis) through the same stream of
no-op jobs, and prints the main process's resident memory after every batch (the worker's other
processes beside it) and the main process's growth per 1,000 jobs:
`worker_max_tasks_per_child` recycles pool children; nothing recycles the main process.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)  # as in bench/throughput.py: bench/email.py must not shadow email

import redis  # noqa: E402

import bench.throughput as bt  # noqa: E402
from bench.procs import rss_kib, worker_processes  # noqa: E402


def stream(name: str, app_module: str, probe_app: object, env: dict[str, str], tmp: Path,
           publish: Callable[[str, int], None], total: int, batch: int) -> list[tuple[int, float]]:
    r = redis.Redis.from_url(bt.BROKER)
    r.flushdb()
    w = bt.Worker(app_module, env, tmp / f"{name}.log")
    try:
        bt.wait_ready(probe_app, w)
        key = f"mem:{name}"
        samples = [(0, rss_kib(w.proc.pid) / 1024)]
        done = 0
        while done < total:
            publish(key, batch)
            done += batch
            bt.wait_count(r, key, done)
            samples.append((done, rss_kib(w.proc.pid) / 1024))
            kids, recorder = worker_processes(w.proc.pid)
            others = "  ".join([f"child {rss_kib(p) / 1024:6.1f}" for p in kids]
                               + [f"recorder {rss_kib(p) / 1024:6.1f}" for p in recorder])
            print(f"  {name:9s} {done:>7,} jobs  main process {samples[-1][1]:6.1f} MiB  ({others})", flush=True)
        return samples
    finally:
        w.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=40_000)
    parser.add_argument("--batch", type=int, default=5_000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="conveyor-mem-"))
    env = bt.conveyor_env(bt.make_database("sqlite", tmp))
    os.environ.update(env)
    from config import get_settings

    get_settings.cache_clear()
    import bench.plain_app as plain

    ptask = plain.app.tasks["bench.count"]

    def plain_publish(key: str, n: int) -> None:
        with plain.app.producer_or_acquire() as producer:
            for _ in range(n):
                ptask.apply_async(kwargs={"k": key}, producer=producer)

    t0 = time.time()
    # Plain Celery first: building the Conveyor app connects its publish hooks process-wide.
    plain_run = stream("plain", "bench.plain_app", plain.app, env, tmp, plain_publish, args.jobs, args.batch)

    from jobs.client import Client
    from worker.factory import create_app

    client = Client(create_app(get_settings()))

    def conveyor_publish(key: str, n: int) -> None:
        client.enqueue_many("bench.count", [{"k": key}] * n)

    conveyor_run = stream("conveyor", "worker.app", client.app, env, tmp, conveyor_publish, args.jobs, args.batch)

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Worker main process memory over {args.jobs:,} no-op jobs ({time.time() - t0:.0f} s)")
    columns = ("worker", "start MiB", "after first batch MiB", "end MiB", "growth per 1,000 jobs after")
    for col in columns:
        table.add_column(col, justify="right")
    for name, run in (("plain Celery", plain_run), ("Conveyor", conveyor_run)):
        (_, start), (first_n, first), (last_n, last) = run[0], run[1], run[-1]
        per_k = (last - first) / max(1, (last_n - first_n) / 1000)
        table.add_row(name, f"{start:.1f}", f"{first:.1f}", f"{last:.1f}", f"{per_k * 1024:.0f} KiB")
    Console().print(table)


if __name__ == "__main__":
    main()
