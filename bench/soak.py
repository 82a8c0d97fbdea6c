"""Soak: a long stream of mixed jobs through 2 workers while workers and pool children are SIGKILLed.

    python bench/soak.py                 # 100,000 jobs
    python bench/soak.py --quick         # 5,000 jobs
    python bench/soak.py --jobs 20000 --kill-every 3 --database-url postgresql://...

Starts its own Redis (a free port, a temporary directory) and, unless --database-url is given,
its own SQLite job store; runs 2 Conveyor workers (`-c 2`) with lost-worker recovery tuned to
act in seconds. A producer thread enqueues the mix in batches (system.ping; system.sleep of
10-50 ms; some that fail at once; some that fail until they are dead), keeping the queue
shallow so it is a stream, not a backlog. Every --kill-every seconds (jittered) a killer picks
a worker and SIGKILLs either the whole worker (then starts it again) or one pool child (Celery
forks a new one). Worker 0 is never killed whole, so its main process's memory tells whether
memory stays flat.

When the stream stalls with jobs unfinished, it runs `maintenance.recover_lost` once, as the
production schedule does: a job whose message vanished around a whole-worker kill (likely taken
from Redis by the dying worker before kombu wrote it down as unacknowledged: docs/reliability.md,
section 2) is still `queued` in the job store, and is published again.

At the end it prints what became of every job: enqueued, succeeded, failed, dead, lost,
unfinished (no final record), what recover_lost did, run again after a kill, and succeeded
twice; and the workers' RSS (main process, pool children, recorder process; /proc VmRSS) at
the start and the end, and worker 0's as the stream went. Targets: nothing lost or unfinished,
nothing succeeded twice, flat memory.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as `python bench/soak.py`, bench/ comes first on sys.path, where bench/email.py would
# shadow the standard library's `email` (which redis-py imports): drop it, put the project in.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from bench.procs import rss_kib, worker_processes  # noqa: E402

#: Once the stream has stalled this long, run maintenance.recover_lost as the schedule would.
RECOVER_AFTER = 15.0

FAST_RECOVERY = {"recovery_heartbeat_interval": "0.5", "recovery_node_ttl": "3",
                 "recovery_sweep_interval": "1", "recovery_min_age": "2"}
#: (share of the jobs, task, payload); the failing ones are failed or dead by design.
MIX: list[tuple[float, str, dict[str, Any]]] = [
    (0.70, "system.ping", {"message": "soak"}),
    (0.25, "system.sleep", {"seconds": 0.02, "steps": 1}),
    (0.03, "system.sleep", {"seconds": 0, "fail": True, "permanent": True}),
    (0.02, "system.sleep", {"seconds": 0, "fail": True}),
]


#: Seconds between two samples of worker 0's memory.
SAMPLE_EVERY = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Worker:
    index: int
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0

    def start(self) -> None:
        cmd = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-l", "WARNING", "-c", "2",
               "-Q", "default,maintenance", "-n", f"soak{self.index}-{uuid.uuid4().hex[:6]}@%h",
               "--without-gossip", "--without-mingle"]
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=fh, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def kill_all(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def kill_child(self) -> bool:
        assert self.proc is not None
        kids, _ = worker_processes(self.proc.pid)
        if not kids:
            return False
        os.kill(random.choice(kids), signal.SIGKILL)
        return True

    def rss(self) -> tuple[int, int, int]:
        """(main process, pool children, recorder process) resident memory in KiB."""
        assert self.proc is not None
        kids, recorder = worker_processes(self.proc.pid)
        return rss_kib(self.proc.pid), sum(map(rss_kib, kids)), sum(map(rss_kib, recorder))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


@dataclass
class Chaos:
    whole: int = 0
    child: int = 0
    log: list[str] = field(default_factory=list)


def killer(workers: list[Worker], every: float, stop: threading.Event, chaos: Chaos) -> None:
    while not stop.wait(every * random.uniform(0.6, 1.4)):
        w = random.choice(workers)
        if w.index > 0 and random.random() < 0.5:
            w.kill_all()
            w.start()
            w.restarts += 1
            chaos.whole += 1
        elif w.kill_child():
            chaos.child += 1


def producer(client: Any, total: int, broker: str, stop: threading.Event, sent: list[int]) -> None:
    from worker.health import queue_depths

    weights = [m[0] for m in MIX]
    batch = 250
    while sent[0] < total and not stop.is_set():
        if queue_depths(broker)["default"] > 2_000:
            time.sleep(0.05)
            continue
        n = min(batch, total - sent[0])
        counts = [0] * len(MIX)
        for i in random.choices(range(len(MIX)), weights, k=n):
            counts[i] += 1
        for (_, task, payload), k in zip(MIX, counts, strict=True):
            if k:
                client.enqueue_many(task, [payload] * k, source="soak")
        sent[0] += n


def census(database_url: str) -> dict[str, int]:
    from sqlalchemy import text

    from jobs.db import get_engine

    queries = {
        "by_status": "SELECT status, count(*) FROM jobs GROUP BY status",
        # Attempts beyond the first that no retry policy asked for: the job ran again after a kill.
        "rerun": ("SELECT count(*) FROM jobs j WHERE j.attempts > 1 AND NOT EXISTS (SELECT 1 FROM "
                  "job_attempts a WHERE a.job_id = j.id AND a.reason = 'retry')"),
        "twice": ("SELECT count(*) FROM (SELECT job_id FROM job_attempts WHERE outcome = 'succeeded' "
                  "GROUP BY job_id HAVING count(*) > 1) AS t"),
    }
    out: dict[str, int] = {}
    with get_engine(database_url).connect() as c:
        for status, n in c.execute(text(queries["by_status"])):
            out[status] = n
        out["rerun"] = c.execute(text(queries["rerun"])).scalar_one()
        out["twice"] = c.execute(text(queries["twice"])).scalar_one()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="5,000 jobs")
    parser.add_argument("--kill-every", type=float, default=3.0, help="seconds between kills (jittered)")
    parser.add_argument("--database-url", help="default: a SQLite file of its own")
    parser.add_argument("--settle", type=float, default=60.0,
                        help="give up waiting once nothing finished for this many seconds")
    args = parser.parse_args()
    total = 5_000 if args.quick else args.jobs

    tmp = Path(tempfile.mkdtemp(prefix="conveyor-soak-"))
    port = free_port()
    redis_bin = shutil.which("redis-server") or sys.exit("redis-server is not installed")
    redis_proc = subprocess.Popen([redis_bin, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no", "--dir", str(tmp)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    broker = f"redis://127.0.0.1:{port}/0"
    database_url = args.database_url or f"sqlite:///{tmp / 'soak.db'}"
    workers: list[Worker] = []
    stop = threading.Event()
    try:
        import redis

        for _ in range(100):
            try:
                redis.Redis(port=port).ping()
                break
            except redis.RedisError:
                time.sleep(0.05)
        from jobs.migrate import upgrade

        upgrade(database_url)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "CONVEYOR_BROKER_URL": broker,
               "CONVEYOR_RESULT_BACKEND": broker, "CONVEYOR_DATABASE_URL": database_url,
               "CONVEYOR_RETRY_MAX": "2", "CONVEYOR_RETRY_BACKOFF": "1", "CONVEYOR_RETRY_BACKOFF_MAX": "2",
               **{f"CONVEYOR_{k.upper()}": v for k, v in FAST_RECOVERY.items()}}
        os.environ.update({k: v for k, v in env.items() if k.startswith("CONVEYOR_")})
        from config import Settings
        from jobs.client import Client
        from worker.factory import create_app

        client = Client(create_app(Settings(_env_file=None)))
        workers = [Worker(i, env, tmp / f"worker-{i}.log") for i in range(2)]
        for w in workers:
            w.start()
        client.enqueue("system.ping", {"message": "warm-up"}).wait(timeout=60)
        time.sleep(1)
        rss_start = [w.rss() for w in workers]

        chaos = Chaos()
        sent = [0]
        started = time.monotonic()
        threads = [threading.Thread(target=producer, args=(client, total, broker, stop, sent), daemon=True),
                   threading.Thread(target=killer, args=(workers, args.kill_every, stop, chaos), daemon=True)]
        for t in threads:
            t.start()
        finished_states = ("succeeded", "failed", "dead", "lost", "revoked")
        last, last_change = -1, time.monotonic()
        # Worker 0's memory as the stream goes (it is never killed whole): growth that stops
        # is a one-time cost, growth that goes on is a leak.
        samples: list[tuple[float, int, tuple[int, int, int]]] = []
        recovered: dict[str, int] = {}  # what maintenance.recover_lost did, once the stream stalled
        while True:
            time.sleep(2)
            counts = census(database_url)
            done = sum(counts.get(s, 0) for s in finished_states)
            print(f"  {time.monotonic() - started:6.0f}s  enqueued {sent[0]:>7,}  finished {done:>7,}  "
                  f"kills: {chaos.whole} workers, {chaos.child} children", flush=True)
            if done != last:
                last, last_change = done, time.monotonic()
            if not samples or time.monotonic() - started - samples[-1][0] >= SAMPLE_EVERY:
                samples.append((time.monotonic() - started, done, workers[0].rss()))
            if sent[0] >= total and done >= total + 1 + bool(recovered):  # + the warm-up (and recovery)
                break
            if sent[0] >= total and not recovered and time.monotonic() - last_change > RECOVER_AFTER:
                # What the production schedule runs (scheduler/defaults.py `recover-lost`): jobs
                # still queued whose message left Redis.
                out = client.enqueue("maintenance.recover_lost",
                                     {"older_than_seconds": RECOVER_AFTER}).wait(timeout=120)
                recovered = {"republished": len(out["republished"]), "lost": len(out["lost"])}
                print(f"  stalled: maintenance.recover_lost republished {recovered['republished']}, "
                      f"marked {recovered['lost']} lost", flush=True)
                last_change = time.monotonic()
                continue
            if sent[0] >= total and time.monotonic() - last_change > args.settle:
                print(f"  nothing finished for {args.settle:.0f}s: stopping", flush=True)
                break
            if sent[0] >= total and done >= total * 0.98:
                stop.set()  # the tail: let recovery finish without new kills
        stop.set()
        elapsed = time.monotonic() - started
        time.sleep(1)
        rss_end = [w.rss() for w in workers]
        counts = census(database_url)
        counts["succeeded"] = counts.get("succeeded", 0) - 1 - bool(recovered)  # warm-up, recovery
        unfinished = sum(n for s, n in counts.items() if s in ("queued", "started", "retrying"))
        from sqlalchemy import text

        from jobs.db import get_engine
        from worker.health import message_ids

        with get_engine(database_url).connect() as c:
            open_jobs = dict(c.execute(text("SELECT id, attempts FROM jobs WHERE status IN "
                                            "('queued', 'started', 'retrying')")).all())
        held = set(open_jobs) & message_ids(broker)
        in_redis = len(held)
        never_started = sum(1 for j, n in open_jobs.items() if j not in held and not n)

        rows = [
            ("jobs enqueued", f"{sent[0]:,}"),
            ("succeeded", f"{counts.get('succeeded', 0):,}"),
            ("failed (by design: permanent failures)", f"{counts.get('failed', 0):,}"),
            ("dead (by design: failed every retry)", f"{counts.get('dead', 0):,}"),
            ("lost", f"{counts.get('lost', 0):,}"),
            ("unfinished (no final record)", f"{unfinished:,}"),
            ("  of which: message in Redis / gone, never started / gone, ran",
             f"{in_redis:,} / {never_started:,} / {unfinished - in_redis - never_started:,}"),
            ("republished / marked lost by maintenance.recover_lost",
             f"{recovered.get('republished', 0):,} / {recovered.get('lost', 0):,}"),
            ("run again after a kill (attempts > 1, not retried by design)", f"{counts['rerun']:,}"),
            ("succeeded twice (two succeeded attempts)", f"{counts['twice']:,}"),
            ("kills: whole worker / pool child", f"{chaos.whole} / {chaos.child}"),
            ("wall time", f"{elapsed:.0f} s ({sent[0] / elapsed:,.0f} jobs/s)"),
        ]
        for i, (a, b) in enumerate(zip(rss_start, rss_end, strict=True)):
            note = " (never killed whole)" if i == 0 else f" (restarted {workers[i].restarts}x)"
            mib = [f"{x / 1024:.0f}" for x in (*a, *b)]
            rows.append((f"worker {i} RSS main / pool children / recorder, start -> end{note}",
                         f"{mib[0]} / {mib[1]} / {mib[2]} MiB -> {mib[3]} / {mib[4]} / {mib[5]} MiB"))
        width = max(len(r[0]) for r in rows)
        print()
        for name, value in rows:
            print(f"{name:<{width}}  {value}")
        print("\nworker 0 RSS as the stream went (MiB): seconds, jobs finished, main / pool children / recorder")
        for t, n, (m, c, r) in samples:
            print(f"  {t:5.0f}s {n:>8,}  {m / 1024:6.1f} / {c / 1024:6.1f} / {r / 1024:6.1f}")
        print(f"\nlogs and job store in {tmp}")
    finally:
        stop.set()
        for w in workers:
            w.stop()
        redis_proc.terminate()
        redis_proc.wait(10)
        from jobs.recorder import close_recorders

        close_recorders()


if __name__ == "__main__":
    main()
