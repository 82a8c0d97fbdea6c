"""Fixtures of the email tests: real SMTP servers (aiosmtpd) that can refuse or stall on cue,
and one worker per module (module-scoped, built on tests.conftest's helpers).

A module asks for `stack_factory(...)` once: it makes a database, flushes the test Redis,
points this process's settings (`get_settings()`, which the input validators read) at them,
starts the SMTP server and a worker, and undoes all of it when the module ends.
"""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib

from tasks.email.sink import Handler, Received, Sink
from tests.conftest import REDIS_DB, REDIS_URL, ROOT, WorkerProcess, make_database, settings_env, wait_until


class ScriptedHandler(Handler):
    """Accepts and records, except where a test scripted otherwise (per recipient address):
    replies to give at RCPT or at the end of DATA (one per attempt), or a stall in RCPT or
    DATA until the test releases it."""

    def __init__(self) -> None:
        super().__init__()
        self.rcpt_replies: dict[str, list[str]] = {}
        self.data_replies: dict[str, list[str]] = {}
        self.holds: dict[tuple[str, str], Hold] = {}

    def hold(self, stage: str, address: str) -> Hold:
        h = self.holds[(stage, address)] = Hold()
        return h

    async def _stall(self, stage: str, address: str) -> None:
        h = self.holds.pop((stage, address), None)
        if h is not None:
            h.arrived.set()
            while not h.release.is_set():
                await asyncio.sleep(0.02)

    def _next(self, replies: dict[str, list[str]], address: str) -> str | None:
        with self.lock:
            queue = replies.get(address)
            return queue.pop(0) if queue else None

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        await self._stall("rcpt", address)
        reply = self._next(self.rcpt_replies, address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        first = envelope.rcpt_tos[0]
        reply = self._next(self.data_replies, first)
        if reply:
            return reply
        self.record(session, envelope)  # the server has the whole message from here on
        await self._stall("data", first)
        return "250 2.0.0 Message accepted for delivery"

    def to(self, address: str) -> list[Received]:
        return [m for m in self.messages if address in m.rcpt_tos]


@dataclass
class Hold:
    arrived: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


def tls_contexts(directory: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context with a certificate for localhost/127.0.0.1, and the CA file to trust."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server)
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return server, ca_file


@dataclass
class Stack:
    settings: Any
    sink: Sink
    handler: ScriptedHandler
    worker: WorkerProcess | None
    client: Any
    directory: Path

    def address(self, label: str) -> str:
        """A recipient no other test uses."""
        return f"{label}-{uuid.uuid4().hex[:8]}@example.org"

    def outbox(self) -> Any:
        from tasks.email.outbox import Outbox

        return Outbox(self.settings.database_url)

    def arrived(self, address: str, n: int = 1, timeout: float = 30) -> list[Received]:
        return wait_until(lambda: len(self.handler.to(address)) >= n and self.handler.to(address),
                          timeout=timeout, message=f"{n} message(s) to {address}")


def start_module_worker(settings: Any, log: Path, *, concurrency: int,
                        queues: str = "email,default") -> WorkerProcess:
    """`tests.conftest.start_worker`, for a module: a real celery worker subprocess."""
    from worker.factory import create_app

    name = f"email-{uuid.uuid4().hex[:6]}@%h"
    env = {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-l", "INFO", "-c", str(concurrency),
           "-n", name, "--without-gossip", "--without-mingle", "-Q", queues]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    w = WorkerProcess(proc, log, env)
    probe = create_app(settings, patch=False)
    host = name.replace("%h", __import__("socket").gethostname())

    def answered() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"worker exited early:\n{w.output()[-3000:]}")
        return any(host in r for r in (probe.control.ping(destination=[host], timeout=0.5) or []))

    wait_until(answered, timeout=40, message="the worker to answer a ping")
    probe.close()
    return w


@pytest.fixture(scope="module")
def stack_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Stack]]:
    made: list[Callable[[], None]] = []

    def build(*, database: str = "sqlite", concurrency: int = 1, tls: bool = False, auth: bool = False,
              worker: bool = True, **overrides: Any) -> Stack:
        try:
            redis_lib.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
        except redis_lib.RedisError:
            pytest.skip(f"Redis at {REDIS_URL} is not available")
        from config import Settings, get_settings

        directory = tmp_path_factory.mktemp("email")
        (directory / "data").mkdir()
        (directory / "results").mkdir()
        databases = make_database(database, directory)
        database_url = next(databases)
        broker = f"{REDIS_URL.rstrip('/')}/{REDIS_DB}"
        results = f"{REDIS_URL.rstrip('/')}/{REDIS_DB - 1}"
        for url in (broker, results):
            redis_lib.Redis.from_url(url).flushdb()
        handler = ScriptedHandler()
        sink_kwargs: dict[str, Any] = {}
        smtp: dict[str, Any] = {"smtp_host": "127.0.0.1"}
        if tls:
            server_ctx, ca_file = tls_contexts(directory)
            sink_kwargs["starttls"] = server_ctx
            smtp.update(smtp_starttls=True, smtp_ca_file=ca_file)
        if auth:
            sink_kwargs["users"] = {"conveyor": "s3cret-pa55word"}
            smtp.update(smtp_user="conveyor", smtp_password="s3cret-pa55word")
        sink = Sink(handler=handler, **sink_kwargs).start()
        base: dict[str, Any] = {
            "broker_url": broker, "result_backend": results, "database_url": database_url,
            "data_dir": directory / "data", "results_dir": directory / "results",
            "retry_backoff": 1, "retry_backoff_max": 2, "cancel_poll_interval": 0.2,
            "smtp_port": sink.port, "smtp_timeout": 10, "email_rate_limit": 1000,
            "mail_from": "Conveyor Tests <conveyor@example.org>", **smtp,
        }
        settings = Settings(_env_file=None, **{**base, **overrides})
        saved = dict(os.environ)
        os.environ.update(settings_env(settings))
        get_settings.cache_clear()
        w = (start_module_worker(settings, directory / "worker.log", concurrency=concurrency)
             if worker else None)
        from jobs.client import Client
        from worker.factory import create_app

        app = create_app(settings)
        client = Client(app)

        def teardown() -> None:
            if w is not None:
                w.stop()
            for h in handler.holds.values():
                h.release.set()
            sink.stop()
            from jobs.recorder import close_recorders

            close_recorders()
            os.environ.clear()
            os.environ.update(saved)
            get_settings.cache_clear()
            for url in (broker, results):
                redis_lib.Redis.from_url(url).flushdb()
            next(databases, None)  # drop the database

        made.append(teardown)
        return Stack(settings, sink, handler, w, client, directory)

    yield build
    for teardown in reversed(made):
        teardown()


def kill_pool_child(worker: WorkerProcess) -> int:
    """SIGKILL the worker's (one) pool process; the main process requeues its job at once."""
    children = wait_until(worker.children, timeout=10, message="the pool process")
    os.kill(children[0], signal.SIGKILL)
    return children[0]


def finished(client: Any, job_id: str, timeout: float = 60) -> Any:
    """The job's final record (whatever the outcome)."""
    return client.get_job(job_id).wait_finished(timeout)


__all__ = ["Hold", "ScriptedHandler", "Stack", "finished", "kill_pool_child", "time"]
