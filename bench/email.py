"""Email throughput: Conveyor's `email.send` (outbox, exactly-once claims, global rate limiter,
job records) on 2 worker processes, against a bare smtplib loop in one process, both sending
the same messages to the same local aiosmtpd sink (its own process, counting what it accepts).

    python -m bench.email [--messages 2000] [--quick] [--db sqlite|postgresql]

Prints messages per second delivered by each and their ratio. The limiter is on but not
binding (CONVEYOR_EMAIL_RATE_LIMIT=1e6): its Redis round trip is part of the cost measured.
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


def serve_sink(port: int, count: Any, ready: Any) -> None:
    """The sink process: accept everything, count it, keep nothing."""
    from aiosmtpd.controller import Controller

    class Counting:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            with count.get_lock():
                count.value += 1
            return "250 2.0.0 OK"

    controller = Controller(Counting(), hostname="127.0.0.1", port=port)
    controller.start()
    ready.set()
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    controller.stop()


class SinkProcess:
    def __init__(self) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        ctx = multiprocessing.get_context("fork")
        self.count = ctx.Value("l", 0)
        ready = ctx.Event()
        self.proc = ctx.Process(target=serve_sink, args=(self.port, self.count, ready), daemon=True)
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


def messages(n: int, settings: Any) -> list[tuple[str, bytes, dict[str, Any]]]:
    """The same n messages for both runs: (recipient, rendered bytes, email.send payload)."""
    from datetime import datetime

    from tasks.email import compose

    out = []
    for i in range(n):
        to = f"reader{i}@example.org"
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


def conveyor_run(sink: SinkProcess, batch: list[tuple[str, bytes, dict[str, Any]]], kind: str,
                 tmp: Path) -> dict[str, float]:
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
           "-Q", "email", "-n", f"bench-email-{uuid.uuid4().hex[:6]}@%h", "--without-gossip",
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
        start = sink.received
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
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)
        log.close()
        drop_database(database_url)
        for db in (REDIS_DB, REDIS_DB - 1):
            redis.Redis.from_url(f"{REDIS}/{db}").flushdb()
    n = len(batch)
    return {"delivered": n / (t1 - t0), "recorded": n / (t2 - t0), "enqueue": n / (enqueued - t0)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="300 messages: proves it runs")
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    args = parser.parse_args()
    n = 300 if args.quick else args.messages

    sink = SinkProcess()  # forked before anything heavy is imported
    try:
        from config import Settings

        batch = messages(n, Settings(_env_file=None, mail_from=SENDER))
        bare_loop(sink, batch[:50])  # warm up
        bare = bare_loop(sink, batch)
        with tempfile.TemporaryDirectory() as tmp:
            conv = conveyor_run(sink, batch, args.db, Path(tmp))
    finally:
        sink.stop()

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{n} messages to a local aiosmtpd sink ({args.db} outbox)")
    for col in ("sender", "messages/s", "x bare smtplib"):
        table.add_column(col, justify="right" if col != "sender" else "left")
    table.add_row("bare smtplib loop, 1 process, 1 connection", f"{bare:,.0f}", "1.00")
    table.add_row("conveyor email.send, 2 workers: delivered", f"{conv['delivered']:,.0f}",
                  f"{conv['delivered'] / bare:.2f}")
    table.add_row("  ... and every outbox row marked sent", f"{conv['recorded']:,.0f}",
                  f"{conv['recorded'] / bare:.2f}")
    table.add_row("  (bulk enqueue, validation included)", f"{conv['enqueue']:,.0f}", "")
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
