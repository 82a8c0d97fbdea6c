"""Email throughput: Conveyor's `email.send` (outbox, exactly-once claims, global rate limiter,
job records) on 2 worker processes, against a bare smtplib loop in one process, both sending
the same messages to the same local aiosmtpd sink (its own process, counting what it accepts).

    python -m bench.email [--messages 2000] [--quick] [--db sqlite|postgresql] [--template]
                          [--pipelining] [--profile DIR [--wall]]

Prints messages per second delivered by each and their ratio; the same worker's throughput of
no-op `system.ping` jobs (the platform's ceiling for any job on this machine); how many SMTP
sessions the workers opened; and CPU per message of the worker's main process, its pool
processes and the sink. The limiter is on but not binding (CONVEYOR_EMAIL_RATE_LIMIT=1e6): its
Redis round trip is part of the cost measured. `--profile` samples the worker's processes with
py-spy (`pip install py-spy`) and prints where their time went.
"""

from __future__ import annotations

import os
import sys

# `python bench/email.py` would put bench/ first on sys.path, where this file would shadow the
# standard library's `email` package: take that entry out before anything imports it.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
ROOT = os.path.dirname(_HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import argparse  # noqa: E402
import multiprocessing  # noqa: E402
import signal  # noqa: E402
import smtplib  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from datetime import UTC  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379")
REDIS_DB = int(os.environ.get("BENCH_EMAIL_REDIS_DB", "13"))
PG_ADMIN = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
SENDER = "bench@example.org"


def serve_sink(port: int, count: Any, sessions: Any, ready: Any, pipelining: bool) -> None:
    """The sink process: accept everything, count messages and sessions (EHLO), keep nothing.
    With `pipelining` it offers PIPELINING, as Postfix, Exim and the big relays do (aiosmtpd
    reads commands in order from a buffered stream, so it takes them pipelined; it just does
    not say so)."""
    from aiosmtpd.controller import Controller

    class Counting:
        async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                              responses: list[str]) -> list[str]:
            session.host_name = hostname
            with sessions.get_lock():
                sessions.value += 1
            return [*responses[:-1], "250-PIPELINING", responses[-1]] if pipelining else responses

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            with count.get_lock():
                count.value += 1
            return "250 2.0.0 OK"

    # server_hostname: without it aiosmtpd calls socket.getfqdn() for every connection
    controller = Controller(Counting(), hostname="127.0.0.1", port=port, server_hostname="bench.sink")
    controller.start()
    ready.set()
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    controller.stop()


class SinkProcess:
    def __init__(self, pipelining: bool = False) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        ctx = multiprocessing.get_context("fork")
        self.count = ctx.Value("l", 0)
        self.sessions = ctx.Value("l", 0)
        ready = ctx.Event()
        self.proc = ctx.Process(target=serve_sink, args=(self.port, self.count, self.sessions, ready, pipelining),
                                daemon=True)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})  # for sigwait
        self.proc.start()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
        if not ready.wait(10):
            raise SystemExit("the SMTP sink did not start")

    @property
    def received(self) -> int:
        return int(self.count.value)

    def wait_for(self, n: int, timeout: float = 600) -> float:
        deadline = time.monotonic() + timeout
        while self.received < n:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {self.received} of {n} messages arrived")
            time.sleep(0.002)
        return time.perf_counter()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.join(10)


def messages(n: int, settings: Any, template: bool = False) -> list[tuple[str, bytes, dict[str, Any]]]:
    """The same n messages for both runs: (recipient, rendered bytes, email.send payload). Plain
    text receipts, or the shipped `daily_digest` template (HTML and text) per recipient."""
    from datetime import datetime

    from tasks.email import compose
    from tasks.email.render import render_template

    out = []
    for i in range(n):
        to = f"reader{i}@example.org"
        if template:
            context = {"date": "2026-01-01", "stats": {"jobs_run": 1000 + i, "failed": i % 7}}
            payload: dict[str, Any] = {"to": [to], "template": "daily_digest", "context": context}
            r = render_template("daily_digest", context)
            content = compose.Content(to=[to], cc=[], bcc=[], subject=r.subject or "", text=r.text, html=r.html)
        else:
            payload = {"to": [to], "subject": f"Your receipt #{i}", "text": f"Thanks for order {i}.\n" * 20}
            content = compose.Content(to=[to], cc=[], bcc=[], subject=payload["subject"], text=payload["text"])
        raw = compose.build(content, settings, message_id=compose.new_message_id(settings),
                            date=datetime.now(UTC))
        out.append((to, raw, payload))
    return out


def bare_loop(sink: SinkProcess, batch: list[tuple[str, bytes, dict[str, Any]]]) -> float:
    """One process, one connection, smtplib.sendmail in a loop: no outbox, no jobs."""
    start = sink.received
    t0 = time.perf_counter()
    with smtplib.SMTP("127.0.0.1", sink.port) as smtp:
        for to, raw, _ in batch:
            smtp.sendmail(SENDER, [to], raw)
    t1 = sink.wait_for(start + len(batch))
    return len(batch) / (t1 - t0)


def make_database(kind: str, tmp: Path) -> str:
    from jobs.migrate import upgrade

    if kind == "sqlite":
        url = f"sqlite:///{tmp / 'bench-email.db'}"
    else:
        import sqlalchemy as sa

        name = f"conveyor_bench_email_{os.getpid()}"
        eng = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with eng.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            c.exec_driver_sql(f'CREATE DATABASE "{name}"')
        eng.dispose()
        url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    upgrade(url)
    return url


def drop_database(url: str) -> None:
    from jobs.db import dispose_engines

    dispose_engines()
    if url.startswith("postgresql"):
        import sqlalchemy as sa

        eng = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with eng.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
        eng.dispose()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def spy(pids: list[int], out: Path, wall: bool) -> list[subprocess.Popen[bytes]]:
    """py-spy on each process, raw stacks per thread, one file each: on-CPU samples only, or
    waits included (`wall`)."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.txt"):
        old.unlink()
    exe = Path(sys.executable).with_name("py-spy")
    return [subprocess.Popen([str(exe), "record", "--pid", str(pid), *(["--idle"] if wall else []),
                              "--threads", "--nolineno", "--rate", "250", "--format", "raw",
                              "-o", str(out / f"{role}-{pid}.txt")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for role, pid in (("main" if i == 0 else "child", p) for i, p in enumerate(pids))]


def summarize(out: Path, top: int = 40) -> None:
    """Where each process's main thread (the one running tasks, in a pool child) spent its
    time: the inclusive share of each function."""
    for f in sorted(out.glob("*.txt")):
        counts: dict[str, int] = {}
        total = 0
        main_thread = f"thread ({f.stem.rsplit('-', 1)[1]})"
        for line in f.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            frames = stack.split(";")
            if not frames[0].startswith(main_thread):
                continue
            total += int(n)
            for frame in set(frames[1:]):
                counts[frame] = counts.get(frame, 0) + int(n)
        print(f"\n{f.name}: {total} samples of the main thread")
        shown = [(frame, n) for frame, n in counts.items() if n < 0.995 * total]  # not the loop itself
        for frame, n in sorted(shown, key=lambda kv: -kv[1])[:top]:
            print(f"  {100 * n / max(total, 1):5.1f}%  {frame}")


def noop_run(client: Any, database_url: str, n: int) -> float:
    """The platform's ceiling on the same worker: n `system.ping` jobs (validate, record, ack;
    no mail), enqueued in bulk, per second until the job store has recorded them all."""
    from sqlalchemy import func, select

    from jobs.db import get_engine
    from jobs.models import Job

    def done() -> int:
        with get_engine(database_url).connect() as conn:
            return int(conn.scalar(select(func.count()).where(Job.task == "system.ping",
                                                               Job.status == "succeeded")) or 0)

    t0 = time.perf_counter()
    client.enqueue_many("system.ping", [{"message": str(i)} for i in range(n)])
    while done() < n:
        time.sleep(0.01)
    return n / (time.perf_counter() - t0)


def conveyor_run(sink: SinkProcess, batch: list[tuple[str, bytes, dict[str, Any]]], kind: str,
                 tmp: Path, profile: Path | None = None, wall: bool = False) -> dict[str, float]:
    """2 worker processes running email.send for each message, enqueued in bulk."""
    import redis
    from sqlalchemy import func, select

    database_url = make_database(kind, tmp)
    env = {
        "CONVEYOR_BROKER_URL": f"{REDIS}/{REDIS_DB}", "CONVEYOR_RESULT_BACKEND": f"{REDIS}/{REDIS_DB - 1}",
        "CONVEYOR_DATABASE_URL": database_url, "CONVEYOR_SMTP_HOST": "127.0.0.1",
        "CONVEYOR_SMTP_PORT": str(sink.port), "CONVEYOR_MAIL_FROM": SENDER,
        "CONVEYOR_EMAIL_RATE_LIMIT": "1000000", "CONVEYOR_WORKER_CONCURRENCY": "2",
    }
    os.environ.update(env)
    from config import get_settings

    get_settings.cache_clear()
    for db in (REDIS_DB, REDIS_DB - 1):
        redis.Redis.from_url(f"{REDIS}/{db}").flushdb()
    from jobs.client import Client
    from jobs.db import get_engine
    from tasks.email.models import OutboxMessage
    from worker.factory import create_app

    app = create_app(get_settings())
    client = Client(app)
    log = open(tmp / "worker.log", "ab")
    cmd = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-c", "2", "-l", "WARNING",
           "-Q", "email,default", "-n", f"bench-email-{uuid.uuid4().hex[:6]}@%h", "--without-gossip",
           "--without-mingle"]
    worker = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ}, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (app.control.ping(timeout=0.5) or []):
            if worker.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the worker did not start; see {tmp / 'worker.log'}")
        warm = client.enqueue("email.send", {"to": ["warm@example.org"], "subject": "warm", "text": "up"})
        warm.wait(timeout=60)
        children = subprocess.run(["pgrep", "-P", str(worker.pid)], capture_output=True, text=True)
        pool = [int(p) for p in children.stdout.split()]
        spies = spy([worker.pid, *pool], profile, wall) if profile is not None else []
        time.sleep(1 if spies else 0)
        cpu0 = {"worker main": cpu_seconds(worker.pid), "pool children": sum(map(cpu_seconds, pool)),
                "SMTP sink": cpu_seconds(sink.proc.pid or 0)}
        start = sink.received
        sessions = sink.sessions.value
        t0 = time.perf_counter()
        client.enqueue_many("email.send", [p for _, _, p in batch])
        enqueued = time.perf_counter()
        t1 = sink.wait_for(start + len(batch))

        def sent() -> int:
            with get_engine(database_url).connect() as conn:
                return int(conn.scalar(select(func.count()).where(OutboxMessage.status == "sent")) or 0)

        while sent() < len(batch) + 1:
            time.sleep(0.01)
        t2 = time.perf_counter()
        cpu1 = {"worker main": cpu_seconds(worker.pid), "pool children": sum(map(cpu_seconds, pool)),
                "SMTP sink": cpu_seconds(sink.proc.pid or 0)}
        connections = sink.sessions.value - sessions
        for p in spies:
            p.send_signal(signal.SIGINT)
            p.wait(30)
        ceiling = noop_run(client, database_url, len(batch))
        cpu2 = {"worker main": cpu_seconds(worker.pid), "pool children": sum(map(cpu_seconds, pool))}
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)
        log.close()
        drop_database(database_url)
        for db in (REDIS_DB, REDIS_DB - 1):
            redis.Redis.from_url(f"{REDIS}/{db}").flushdb()
    n = len(batch)
    return {"ceiling": ceiling, "delivered": n / (t1 - t0), "recorded": n / (t2 - t0), "enqueue": n / (enqueued - t0),
            "connections": connections,
            **{f"cpu {k}": 1000 * (cpu1[k] - cpu0[k]) / n for k in cpu0},
            **{f"ping cpu {k}": 1000 * (cpu2[k] - cpu1[k]) / n for k in cpu2}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="300 messages: proves it runs")
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="py-spy the worker's processes during the run (raw stacks in DIR) "
                        "and print where their CPU time went (needs py-spy)")
    parser.add_argument("--wall", action="store_true", help="with --profile: count waits too")
    parser.add_argument("--template", action="store_true",
                        help="send the shipped daily_digest template (HTML + text) instead of plain text")
    parser.add_argument("--pipelining", action="store_true",
                        help="the sink offers PIPELINING (RFC 2920), as production relays do")
    args = parser.parse_args()
    n = 300 if args.quick else args.messages

    sink = SinkProcess(args.pipelining)  # forked before anything heavy is imported
    try:
        from config import Settings

        batch = messages(n, Settings(_env_file=None, mail_from=SENDER), args.template)
        bare_loop(sink, batch[:50])  # warm up
        bare = bare_loop(sink, batch)
        with tempfile.TemporaryDirectory() as tmp:
            conv = conveyor_run(sink, batch, args.db, Path(tmp), args.profile, args.wall)
    finally:
        sink.stop()

    from rich.console import Console
    from rich.table import Table

    offers = ", PIPELINING" if args.pipelining else ""
    kind = "templated (daily_digest)" if args.template else "plain-text"
    table = Table(title=f"{n} {kind} messages to a local aiosmtpd sink{offers} ({args.db} outbox)")
    for col in ("sender", "messages/s", "x bare smtplib"):
        table.add_column(col, justify="right" if col != "sender" else "left")
    table.add_row("bare smtplib loop, 1 process, 1 connection", f"{bare:,.0f}", "1.00")
    table.add_row("conveyor system.ping (no-op job), same worker", f"{conv['ceiling']:,.0f}",
                  f"{conv['ceiling'] / bare:.2f}")
    table.add_row("conveyor email.send, 2 workers: delivered", f"{conv['delivered']:,.0f}",
                  f"{conv['delivered'] / bare:.2f}")
    table.add_row("  ... and every outbox row marked sent", f"{conv['recorded']:,.0f}",
                  f"{conv['recorded'] / bare:.2f}")
    table.add_row("  (bulk enqueue, validation included)", f"{conv['enqueue']:,.0f}", "")
    Console().print(table)
    print(f"SMTP sessions the workers opened for {n} messages: {conv['connections']:.0f}")
    print("CPU per message (ms): " + ", ".join(f"{k[4:]} {v:.2f}" for k, v in conv.items()
                                                 if k.startswith("cpu ")))
    print("CPU per no-op job (ms): " + ", ".join(f"{k[9:]} {v:.2f}" for k, v in conv.items()
                                                  if k.startswith("ping cpu ")))
    if args.profile is not None:
        summarize(args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
