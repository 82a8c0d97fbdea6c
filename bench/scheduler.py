"""The beat scheduler with many schedules in the table: edit pickup, CPU, due-to-enqueue spread.

    python bench/scheduler.py [--schedules 1000] [--seconds 60] [--edits 20] [--database-url URL]
    python bench/scheduler.py --quick          # 200 schedules, 20 s: proves the script works

Fills a fresh job store with N schedules (most daily crons that stay quiet, some every-minute
crons that all fall due together at :00, some every-5-second intervals), starts one real
`conveyor beat`, and for --seconds measures:

- edit pickup: from the commit of an edit (which bumps the change marker) to the beat's log
  line saying it loaded that version; --edits edits spread over the run, p50/p99/max;
- CPU: the beat process's user+system time over the run, scaled to one minute;
- spread: enqueue time of each job (its `created_at` in the job store) minus the tick it was
  due at, p50/p99/max over every firing of the run (the every-minute burst shows in p99).

No worker runs: jobs wait in Redis, which is flushed (database --redis-db) before and after.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)  # not bench/, where email.py would shadow the standard library

import redis  # noqa: E402

_LOADED = re.compile(r"loaded schedules version (\d+)")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def schedule_rows(n: int, minutely: int, fast: int) -> list[dict[str, Any]]:
    rng = random.Random(42)
    rows: list[dict[str, Any]] = []
    for i in range(n):
        if i < minutely:
            timing: dict[str, Any] = {"cron": "* * * * *"}
        elif i < minutely + fast:
            timing = {"every": 5}
        else:
            timing = {"cron": f"{rng.randrange(60)} {rng.randrange(24)} * * *"}
        rows.append({"name": f"bench-{i:05d}", "task": "system.ping", "payload": {"message": str(i)},
                     **timing})
    return rows


def loaded_versions(log: Path) -> list[int]:
    return [int(v) for v in _LOADED.findall(log.read_text(errors="replace"))]


def run(args: argparse.Namespace) -> dict[str, Any]:
    from config import Settings
    from jobs.db import dispose_engines, utcnow
    from jobs.migrate import upgrade
    from scheduler.store import ScheduleStore

    tmp = Path(tempfile.mkdtemp(prefix="bench-scheduler-"))
    database_url = args.database_url or f"sqlite:///{tmp / 'bench.db'}"
    broker = f"{args.redis_url.rstrip('/')}/{args.redis_db}"
    r = redis.Redis.from_url(broker)
    r.flushdb()
    upgrade(database_url)
    store = ScheduleStore(database_url)
    if store.names():
        sys.exit(f"{database_url} already has schedules: give an empty database")
    minutely, fast = max(1, args.schedules * 9 // 100), max(1, args.schedules // 100)
    store.create_many(schedule_rows(args.schedules, minutely, fast))
    settings = Settings(_env_file=None, broker_url=broker, result_backend=broker, database_url=database_url)

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CONVEYOR_BROKER_URL": broker,
           "CONVEYOR_RESULT_BACKEND": broker, "CONVEYOR_DATABASE_URL": database_url,
           "CONVEYOR_BEAT_LOCK_KEY": f"bench:beat:{os.getpid()}"}
    log = tmp / "beat.log"
    with open(log, "wb") as fh:
        beat = subprocess.Popen([sys.executable, "-m", "cli", "beat", "-l", "INFO"], cwd=ROOT, env=env,
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while "is now the leader" not in log.read_text(errors="replace") or len(loaded_versions(log)) < 2:
            if beat.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"beat did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
        started, cpu0 = utcnow(), cpu_seconds(beat.pid)
        t0 = time.monotonic()
        pickups: list[float] = []
        gap = args.seconds / (args.edits + 1)
        for k in range(args.edits):
            while time.monotonic() < t0 + gap * (k + 1):
                time.sleep(0.01)
            target = f"bench-{random.randrange(minutely + fast, args.schedules):05d}"
            committed = time.monotonic()
            version = store.update(target, {"description": f"edit {k}"}) and store.version()
            while max(loaded_versions(log), default=-1) < version:
                if time.monotonic() - committed > 30:
                    sys.exit(f"beat did not notice edit {k} within 30 s")
                time.sleep(0.002)
            pickups.append(time.monotonic() - committed)
        while time.monotonic() < t0 + args.seconds:
            time.sleep(0.05)
        elapsed = time.monotonic() - t0
        cpu = cpu_seconds(beat.pid) - cpu0
        finished = utcnow()
    finally:
        beat.send_signal(signal.SIGTERM)
        beat.wait(30)

    from sqlalchemy import select

    from jobs.models import Job
    from scheduler.models import ScheduleFiring

    with store.session() as s:
        rows = s.execute(select(ScheduleFiring.slot, Job.created_at)
                         .join(Job, Job.id == ScheduleFiring.job_id)
                         .where(ScheduleFiring.slot >= started, ScheduleFiring.slot <= finished)).all()
    spreads = [(created - slot).total_seconds() * 1000 for slot, created in rows]
    r.flushdb()
    dispose_engines()
    return {
        "schedules": args.schedules, "every_minute": minutely, "every_5s": fast, "seconds": round(elapsed, 1),
        "database": database_url.split(":", 1)[0], "firings": len(spreads),
        "edit_pickup_ms": {"p50": pct(pickups, 0.5) * 1000, "p99": pct(pickups, 0.99) * 1000,
                           "max": max(pickups, default=float("nan")) * 1000, "n": len(pickups)},
        "cpu_s_per_minute": cpu / elapsed * 60,
        "spread_ms": {"p50": pct(spreads, 0.5), "p99": pct(spreads, 0.99),
                      "max": max(spreads, default=float("nan")),
                      "mean": statistics.fmean(spreads) if spreads else float("nan")},
        "sync_interval_s": settings.beat_sync_interval,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schedules", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the measured run")
    parser.add_argument("--edits", type=int, default=20)
    parser.add_argument("--database-url", help="an EMPTY database (default: a fresh SQLite file)")
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379"))
    parser.add_argument("--redis-db", type=int, default=7, help="flushed before and after")
    parser.add_argument("--quick", action="store_true", help="200 schedules, 20 s, 8 edits")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.schedules, args.seconds, args.edits = 200, 20.0, 8
    result = run(args)
    if args.json:
        import json

        print(json.dumps(result, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    e, sp = result["edit_pickup_ms"], result["spread_ms"]
    table = Table(title=f"beat with {result['schedules']} schedules ({result['every_minute']} every minute, "
                        f"{result['every_5s']} every 5 s), {result['database']}, {result['seconds']} s")
    for col in ("measure", "p50", "p99", "max", "note"):
        table.add_column(col)
    table.add_row("edit pickup (ms)", f"{e['p50']:.0f}", f"{e['p99']:.0f}", f"{e['max']:.0f}",
                  f"{e['n']} edits; marker polled every {result['sync_interval_s']} s")
    table.add_row("due -> enqueued (ms)", f"{sp['p50']:.1f}", f"{sp['p99']:.1f}", f"{sp['max']:.1f}",
                  f"{result['firings']} firings")
    table.add_row("beat CPU (s per minute)", f"{result['cpu_s_per_minute']:.2f}", "", "", "user+system")
    Console().print(table)


if __name__ == "__main__":
    main()
