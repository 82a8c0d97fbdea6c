"""What the monitoring tests share: a module-wide stack (settings, a worker, Flower) built on
tests/conftest.py's helpers, an HTTP client for Flower's API, and a process-tree census."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import redis as redis_lib

from tests.conftest import REDIS_DB, REDIS_URL, ROOT, WorkerProcess, free_port, settings_env, wait_until

USER, PASSWORD = "admin", "s3cret-flower-pw"
TASK_MODULE = "tests.monitoring.tasks_sensitive"


def flush_redis() -> None:
    for db in (REDIS_DB, REDIS_DB - 1):
        client = redis_lib.Redis.from_url(f"{REDIS_URL.rstrip('/')}/{db}")
        client.flushdb()
        client.close()


def stack_settings(tmp: Path, database_url: str, **overrides: Any) -> Any:
    """Settings on the test Redis database, with Flower credentials and the sensitive task."""
    from config import Settings

    base = REDIS_URL.rstrip("/")
    (tmp / "data").mkdir(exist_ok=True)
    (tmp / "results").mkdir(exist_ok=True)
    values: dict[str, Any] = {
        "broker_url": f"{base}/{REDIS_DB}", "result_backend": f"{base}/{REDIS_DB - 1}",
        "database_url": database_url, "data_dir": tmp / "data", "results_dir": tmp / "results",
        "retry_backoff": 1, "retry_backoff_max": 2, "cancel_poll_interval": 0.2,
        "task_modules": [TASK_MODULE], "flower_user": USER, "flower_password": PASSWORD,
        "flower_port": free_port(), "flower_db": tmp / "flower" / "state.db",
        "flower_state_save_interval": 0,
    }
    return Settings(_env_file=None, **{**values, **overrides})


def start_worker(settings: Any, log: Path, concurrency: int = 2) -> WorkerProcess:
    """A real worker (as tests/conftest.py's `start_worker` runs it), answering a ping."""
    from tasks.registry import QUEUES
    from worker.factory import create_app

    name = f"mon-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
    env = {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-l", "INFO",
           "-c", str(concurrency), "-n", name, "-Q", ",".join(QUEUES)]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    worker = WorkerProcess(proc, log, env)
    probe = create_app(settings, patch=False)

    def answers() -> bool:
        assert proc.poll() is None, f"worker exited:\n{worker.output()[-3000:]}"
        return any(name in r for r in probe.control.ping(destination=[name], timeout=0.5) or [])

    wait_until(answers, timeout=30, message="the worker to answer a ping")
    probe.close()
    return worker


@dataclass
class Http:
    """Flower's HTTP API at `base` (ending in /), with or without credentials."""

    base: str
    user: str | None = USER
    password: str | None = PASSWORD

    def request(self, path: str, *, auth: bool = True, credentials: tuple[str, str] | None = None
                ) -> tuple[int, bytes]:
        req = Request(self.base + path.lstrip("/"))
        creds = credentials or ((self.user, self.password) if auth and self.user else None)
        if creds:
            token = base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        try:
            with urlopen(req, timeout=5) as resp:  # noqa: S310 - our Flower on loopback
                return resp.status, resp.read()
        except HTTPError as err:
            return err.code, err.read()

    def json(self, path: str) -> Any:
        status, body = self.request(path)
        assert status == 200, f"GET {path}: {status} {body[:300]!r}"
        return json.loads(body)

    def healthy(self) -> bool:
        try:
            return self.request("healthcheck", auth=False) == (200, b"OK")
        except OSError:
            return False


@dataclass
class FlowerProcess:
    proc: subprocess.Popen[bytes]
    log: Path
    http: Http
    cmdline: str

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def start_flower(settings: Any, log: Path, **options: Any) -> FlowerProcess:
    """`conveyor flower` as a real process (it execs Flower), answering its health check."""
    from worker.flower import flower_command

    cmd = flower_command(settings, **options)  # for the URL; the process builds its own
    env = {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1"}
    args = ["--insecure-local"] if options.get("insecure_local") else []
    with open(log, "ab") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "cli", "flower", *args], cwd=ROOT, env=env,
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    http = Http(cmd.url)
    flower = FlowerProcess(proc, log, http, "")

    def answers() -> bool:
        assert proc.poll() is None, f"flower exited:\n{flower.output()[-3000:]}"
        return http.healthy()

    wait_until(answers, timeout=30, message="Flower to answer its health check")
    flower.cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return flower


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, found through /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def module_database(kind: str, tmp: Path) -> Iterator[str]:
    from tests.conftest import make_database

    yield from make_database(kind, tmp)
