"""Conveyor against plain Celery on the same Redis with the same worker settings (2 processes).

    python bench/throughput.py [--jobs 3000] [--repeat 3] [--db sqlite,postgresql]

Prints, per job store: end-to-end throughput of N no-op jobs (Conveyor with recording and task
events versus plain Celery without either, and their ratio), enqueue rate one by one and in
bulk, and enqueue-to-start latency p50/p99 on an idle worker. Medians of --repeat runs.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, this folder would come first on sys.path and bench/email.py would shadow the
# standard library's email package: put the project root there instead.
sys.path[0] = str(ROOT)

import redis  # noqa: E402
from celery.exceptions import DuplicateTaskNameWarning  # noqa: E402

# This process holds two apps with the same task names (plain Celery's and Conveyor's, each its
# own task classes, checked): Celery 5.7 warns about that for every name. Nothing is shadowed.
warnings.filterwarnings("ignore", category=DuplicateTaskNameWarning)

REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379")
BROKER = f"{REDIS}/3"
RESULTS = f"{REDIS}/2"
PG_ADMIN = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def conveyor_env(database_url: str) -> dict[str, str]:
    return {
        "CONVEYOR_BROKER_URL": BROKER, "CONVEYOR_RESULT_BACKEND": RESULTS,
        "CONVEYOR_DATABASE_URL": database_url, "CONVEYOR_TASK_MODULES": "bench.tasks",
        "CONVEYOR_WORKER_CONCURRENCY": "2", "BENCH_REDIS_URL": BROKER, "BENCH_BROKER_URL": BROKER,
    }


class Worker:
    def __init__(self, app_module: str, env: dict[str, str], log: Path) -> None:
        cmd = [sys.executable, "-m", "celery", "-A", app_module, "worker", "-c", "2", "-l", "WARNING",
               "-Q", "default", "-n", f"bench-{uuid.uuid4().hex[:6]}@%h", "--without-gossip",
               "--without-mingle", "--without-heartbeat"]
        self.log = open(log, "ab")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()


def wait_ready(app: Any, worker: Worker | None) -> None:
    deadline = time.monotonic() + 60
    while not (app.control.ping(timeout=0.3) or []):
        if (worker and worker.proc.poll() is not None) or time.monotonic() > deadline:
            raise SystemExit(f"worker failed to start; see {worker.log.name if worker else 'its log'}")
    # and really consuming: one job through
    r = redis.Redis.from_url(BROKER)
    k = f"warm:{uuid.uuid4().hex}"
    app.send_task("bench.count", kwargs={"k": k}, queue="default")
    while r.get(k) is None:
        time.sleep(0.01)


def wait_count(r: redis.Redis, key: str, n: int, timeout: float = 600) -> float:
    deadline = time.monotonic() + timeout
    while int(r.get(key) or 0) < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {r.get(key)} of {n} jobs ran")
        time.sleep(0.005)
    return time.perf_counter()


def e2e(app: Any, n: int, records_done: Callable[[str], int] | None) -> tuple[float, float]:
    """Publish n no-op jobs as fast as the producer can; seconds until all ran (and were recorded)."""
    r = redis.Redis.from_url(BROKER)
    key = f"e2e:{uuid.uuid4().hex}"
    task = app.tasks["bench.count"]
    t0 = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for _ in range(n):
            task.apply_async(kwargs={"k": key}, producer=producer)
    ran = wait_count(r, key, n) - t0
    if records_done is None:
        return ran, ran
    deadline = time.monotonic() + 120
    while records_done(key) < n:
        if time.monotonic() > deadline:
            raise SystemExit("records did not all land")
        time.sleep(0.005)
    return ran, time.perf_counter() - t0


def plain_run(n: int) -> dict[str, float]:
    """Plain Celery's end-to-end run and latency, measured in a fresh interpreter: stock Celery,
    kombu and redis-py, none of the changes `create_app` makes to this process's kombu (its
    producer would otherwise reuse Redis clients, which stock Celery's does not)."""
    out = subprocess.run([sys.executable, __file__, "--plain-run", str(n)], cwd=ROOT, capture_output=True,
                         text=True, env={**os.environ, "BENCH_BROKER_URL": BROKER}, timeout=900)
    if out.returncode:
        raise SystemExit(f"plain Celery run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _plain_run_here(n: int) -> None:
    import bench.plain_app as plain

    assert "worker.patches" not in sys.modules, "the plain run must not load Conveyor's patches"
    wait_ready(plain.app, None)
    ran, _ = e2e(plain.app, n, None)
    p50, p99 = latency(plain.app)
    print(json.dumps({"e2e": n / ran, "p50": p50, "p99": p99}))


def latency(app: Any, samples: int = 500) -> tuple[float, float]:
    """Enqueue-to-start delay on an idle worker, one job at a time (ms p50, p99). 500 samples:
    with 200, the p99 was the second-worst sample, and moved by a millisecond run to run."""
    r = redis.Redis.from_url(BROKER)
    key = f"lat:{uuid.uuid4().hex}"
    task = app.tasks["bench.stamp"]
    for i in range(samples):
        task.apply_async(kwargs={"k": key, "t0": time.time()})
        while r.llen(key) <= i:
            time.sleep(0.0002)
        time.sleep(0.01)  # idle again
    values = sorted(float(v) * 1000 for v in r.lrange(key, 0, -1))
    return statistics.median(values), values[int(len(values) * 0.99) - 1]


def rate(fn: Callable[[int], None], n: int) -> float:
    t0 = time.perf_counter()
    fn(n)
    return n / (time.perf_counter() - t0)


def make_database(kind: str, tmp: Path) -> str:
    from jobs.migrate import upgrade

    if kind == "sqlite":
        url = f"sqlite:///{tmp / 'bench.db'}"
    else:
        import sqlalchemy as sa

        name = f"conveyor_bench_{os.getpid()}"
        eng = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with eng.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            c.exec_driver_sql(f'CREATE DATABASE "{name}"')
        eng.dispose()
        url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    upgrade(url)
    return url


def drop_database(url: str) -> None:
    """Drop the PostgreSQL database `make_database` made (a SQLite file goes with its folder)."""
    if not url.startswith("postgresql"):
        return
    import sqlalchemy as sa

    from jobs.db import dispose_engines

    dispose_engines()
    eng = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    eng.dispose()


def run(kind: str, n: int, repeat: int, tmp: Path) -> dict[str, Any]:
    """Every figure of one job store, on a database made for the run and dropped after it."""
    url = make_database(kind, tmp)
    try:
        return measure(kind, url, n, repeat, tmp)
    finally:
        drop_database(url)


def measure(kind: str, url: str, n: int, repeat: int, tmp: Path) -> dict[str, Any]:
    env = conveyor_env(url)
    os.environ.update(env)
    from config import get_settings

    get_settings.cache_clear()
    from jobs.client import Client
    from jobs.store import JobStore
    from worker.factory import create_app

    conveyor_app = create_app(get_settings())
    client = Client(conveyor_app)
    store = JobStore(url)
    redis.Redis.from_url(BROKER).flushdb()

    def recorded(key: str) -> int:
        from sqlalchemy import func, select

        from jobs.models import Job

        with store.session() as s:
            return s.scalar(select(func.count()).where(Job.status == "succeeded")) or 0

    out: dict[str, list[float]] = {k: [] for k in
                                   ("plain_e2e", "conv_e2e", "conv_ran", "plain_p50", "plain_p99",
                                    "conv_p50", "conv_p99")}
    for i in range(repeat):
        w = Worker("bench.plain_app", env, tmp / "plain.log")
        plain = plain_run(n)
        out["plain_e2e"].append(plain["e2e"])
        out["plain_p50"].append(plain["p50"])
        out["plain_p99"].append(plain["p99"])
        w.stop()

        store_clear(store)
        w = Worker("worker.app", env, tmp / "conveyor.log")
        wait_ready(conveyor_app, w)
        base = recorded("")
        ran, done = e2e(conveyor_app, n, lambda k, base=base: recorded(k) - base)
        out["conv_ran"].append(n / ran)
        out["conv_e2e"].append(n / done)
        p50, p99 = latency(conveyor_app)
        out["conv_p50"].append(p50)
        out["conv_p99"].append(p99)
        w.stop()
        print(f"  [{kind} run {i + 1}] plain {out['plain_e2e'][-1]:,.0f}/s, "
              f"conveyor {out['conv_ran'][-1]:,.0f}/s ran, {out['conv_e2e'][-1]:,.0f}/s recorded", flush=True)

    # enqueue rates (no worker running; the queue is flushed after)
    m = min(n, 3000)
    r = redis.Redis.from_url(BROKER)
    conv_one = rate(lambda k: [client.enqueue("bench.count", {"k": "x"}) for _ in range(k)], m)
    ctask = conveyor_app.tasks["bench.count"]
    conv_delay = rate(lambda k: [ctask.delay(k="x") for _ in range(k)], m)
    bulk_n = max(m, 10_000)
    conv_many = rate(lambda k: client.enqueue_many("bench.count", [{"k": "x"}] * k), bulk_n)
    r.flushdb()
    from jobs.recorder import close_recorders

    close_recorders()
    med = {k: statistics.median(v) for k, v in out.items()}
    return {**med, "conv_one": conv_one, "conv_delay": conv_delay, "conv_many": conv_many}


def plain_enqueue_rates(n: int) -> dict[str, float]:
    """Stock Celery's producer, measured before Conveyor's app patches anything in this process."""
    os.environ.update({"BENCH_BROKER_URL": BROKER, "BENCH_REDIS_URL": BROKER})
    import bench.plain_app as plain

    ptask = plain.app.tasks["bench.count"]
    one = rate(lambda k: [ptask.delay(k="x") for _ in range(k)], n)

    def bulk(k: int) -> None:
        with plain.app.producer_or_acquire() as producer:
            for _ in range(k):
                ptask.apply_async(kwargs={"k": "x"}, producer=producer)

    many = rate(bulk, n)
    redis.Redis.from_url(BROKER).flushdb()
    return {"plain_one": one, "plain_many": many}


def store_clear(store: Any) -> None:
    from sqlalchemy import delete

    from jobs.models import Job, JobAttempt

    with store.session() as s:
        s.execute(delete(JobAttempt))
        s.execute(delete(Job))
        s.commit()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=3000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--db", default="sqlite,postgresql")
    ap.add_argument("--plain-run", type=int, help=argparse.SUPPRESS)  # internal: see plain_run()
    args = ap.parse_args()
    if args.plain_run:
        _plain_run_here(args.plain_run)
        return
    from rich.console import Console
    from rich.table import Table

    results = {}
    plain_rates = plain_enqueue_rates(min(args.jobs, 3000))
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.db.split(","):
            print(f"{kind}: {args.jobs} jobs x {args.repeat}", flush=True)
            results[kind] = {**run(kind, args.jobs, args.repeat, Path(tmp)), **plain_rates}
    table = Table(title=f"Conveyor vs plain Celery, {args.jobs} no-op jobs, 2 worker processes, "
                        f"median of {args.repeat}")
    for col in ["job store", "plain e2e /s", "conveyor e2e /s (recorded)", "ratio",
                "plain enqueue 1-by-1 /s", "conveyor enqueue() 1-by-1 /s", "conveyor .delay() /s",
                "plain bulk /s", "conveyor enqueue_many /s", "plain p50/p99 ms", "conveyor p50/p99 ms"]:
        table.add_column(col, justify="right")
    for kind, r in results.items():
        table.add_row(kind, f"{r['plain_e2e']:,.0f}", f"{r['conv_e2e']:,.0f}",
                      f"{r['conv_e2e'] / r['plain_e2e']:.2f}", f"{r['plain_one']:,.0f}",
                      f"{r['conv_one']:,.0f}", f"{r['conv_delay']:,.0f}", f"{r['plain_many']:,.0f}",
                      f"{r['conv_many']:,.0f}", f"{r['plain_p50']:.2f} / {r['plain_p99']:.2f}",
                      f"{r['conv_p50']:.2f} / {r['conv_p99']:.2f}")
    Console(width=250).print(table)


if __name__ == "__main__":
    main()
