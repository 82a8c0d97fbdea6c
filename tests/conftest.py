"""Fixtures that give each test real services: Redis, SQLite or PostgreSQL, a real worker.

- Redis: CONVEYOR_TEST_REDIS_URL, or 127.0.0.1:6379 (databases 14 and 15, flushed around each
  test that uses them; under pytest-xdist, 12 and 13 for the second process, and so on). Tests
  that break Redis on purpose start their own (`private_redis`).
- Databases: `database_url` is parametrized over SQLite (a file per test) and PostgreSQL (a
  database per test, cloned from a migrated template; CONVEYOR_TEST_DATABASE_URL or the local
  server). A missing service skips locally and fails in CI (CI=true).
- `start_worker(settings)` runs `celery -A worker.app worker` as a subprocess configured by
  CONVEYOR_* variables, and waits until it answers a ping.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REDIS_URL = os.environ.get("CONVEYOR_TEST_REDIS_URL", "redis://127.0.0.1:6379")
#: pytest-xdist runs the suite in several processes (`make test`: two): each takes its own pair
#: of Redis databases, so their flushes and broadcasts never meet.
XDIST_INDEX = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
#: The broker's Redis database; results use the one below it. Flushed around each test.
REDIS_DB = int(os.environ.get("CONVEYOR_TEST_REDIS_DB", "15")) - 2 * XDIST_INDEX
PG_URL = os.environ.get("CONVEYOR_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


def missing(service: str) -> None:
    """Skip when a service is missing locally; fail in CI, where it must be there."""
    if IN_CI:
        pytest.fail(f"{service} is not available (CI must provide it)")
    pytest.skip(f"{service} is not available")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- Redis -----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def redis_base() -> str:
    try:
        redis_lib.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis_lib.RedisError:
        missing(f"Redis at {REDIS_URL}")
    return REDIS_URL.rstrip("/")


@pytest.fixture
def redis_url(redis_base: str) -> Iterator[str]:
    """A broker URL on a Redis database flushed before and after the test."""
    url = f"{redis_base}/{REDIS_DB}"
    client = redis_lib.Redis.from_url(url)
    client.flushdb()
    redis_lib.Redis.from_url(f"{redis_base}/{REDIS_DB - 1}").flushdb()
    yield url
    client.flushdb()
    client.close()


@dataclass
class PrivateRedis:
    port: int
    proc: subprocess.Popen[bytes]
    dir: Path
    args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis_lib.Redis:
        return redis_lib.Redis(port=self.port, socket_connect_timeout=1)

    def wait(self) -> None:
        for _ in range(100):
            try:
                self.client().ping()
                return
            except redis_lib.RedisError:
                time.sleep(0.05)
        raise RuntimeError("private redis did not start")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A Redis of the test's own, on a free port, that the test may kill and restart."""
    binary = shutil.which("redis-server")
    if binary is None:
        missing("redis-server binary")
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(tmp_path)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = PrivateRedis(port, proc, tmp_path, args)
    r.wait()
    yield r
    if r.proc.poll() is None:
        r.proc.terminate()
        r.proc.wait(5)


# --- databases ---------------------------------------------------------------------------------
_pg_template: str | None = None


def _pg_admin_url() -> str:
    return PG_URL


def _pg_template_db() -> str:
    """A database migrated to head once per session; tests clone it (fast) instead of migrating."""
    global _pg_template
    if _pg_template is None:
        import sqlalchemy as sa

        from jobs.migrate import upgrade

        name = f"conveyor_tpl_{os.getpid()}"
        admin = sa.create_engine(_pg_admin_url(), isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
            c.exec_driver_sql(f'CREATE DATABASE "{name}"')
        admin.dispose()
        url = _pg_admin_url().rsplit("/", 1)[0] + f"/{name}"
        upgrade(url)
        from jobs.db import dispose_engines

        dispose_engines()
        _pg_template = name
    return _pg_template


def pg_available() -> bool:
    import sqlalchemy as sa

    try:
        eng = sa.create_engine(PG_URL, connect_args={"connect_timeout": 2})
        with eng.connect():
            pass
        eng.dispose()
        return True
    except Exception:  # noqa: BLE001
        return False


def make_database(kind: str, tmp_path: Path) -> Iterator[str]:
    if kind == "sqlite":
        from jobs.migrate import upgrade

        url = f"sqlite:///{tmp_path / 'conveyor.db'}"
        upgrade(url)
        yield url
        return
    if not pg_available():
        missing(f"PostgreSQL at {PG_URL}")
    import sqlalchemy as sa

    template = _pg_template_db()
    name = f"conveyor_t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(_pg_admin_url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    url = _pg_admin_url().rsplit("/", 1)[0] + f"/{name}"
    yield url
    from jobs.db import dispose_engines

    dispose_engines()
    with admin.connect() as c:
        c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


def empty_pg_database(prefix: str) -> Iterator[str]:
    """A PostgreSQL database with no tables at all (for tests of what creates them); dropped after."""
    if not pg_available():
        missing(f"PostgreSQL at {PG_URL}")
    import sqlalchemy as sa

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(_pg_admin_url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    yield _pg_admin_url().rsplit("/", 1)[0] + f"/{name}"
    from jobs.db import dispose_engines

    dispose_engines()
    with admin.connect() as c:
        c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `one_database` keep only their SQLite variant: their subject is not the
    job store, and every run on PostgreSQL costs a worker start. Job-store tests run on both."""
    kept, dropped = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if item.get_closest_marker("one_database") and params.get("database_url") == "postgresql":
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated job store: SQLite and PostgreSQL (every test using it runs on both)."""
    yield from make_database(request.param, tmp_path)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    """A migrated SQLite job store, for tests whose subject is not the database."""
    yield from make_database("sqlite", tmp_path)


# --- settings, app, client ----------------------------------------------------------------------
def settings_env(settings: Any) -> dict[str, str]:
    """The CONVEYOR_* variables that reproduce `settings` in a subprocess."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        if isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        env[f"CONVEYOR_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Any]:
    def build(**overrides: Any) -> Any:
        from config import Settings

        data = tmp_path / "data"
        results = tmp_path / "results"
        data.mkdir(exist_ok=True)
        results.mkdir(exist_ok=True)
        base: dict[str, Any] = {"data_dir": data, "results_dir": results, "retry_backoff": 1,
                                "retry_backoff_max": 2, "cancel_poll_interval": 0.2}
        return Settings(_env_file=None, **{**base, **overrides})

    return build


@pytest.fixture
def settings(make_settings: Callable[..., Any], redis_url: str, database_url: str) -> Any:
    """Settings on the test Redis and the (parametrized) test database."""
    return make_settings(broker_url=redis_url, result_backend=redis_url.rsplit("/", 1)[0] + f"/{REDIS_DB - 1}",
                         database_url=database_url)


@pytest.fixture
def app(settings: Any) -> Any:
    from worker.factory import create_app

    application = create_app(settings)
    yield application
    from jobs.recorder import close_recorders

    close_recorders()


@pytest.fixture
def client(app: Any) -> Any:
    from jobs.client import Client

    return Client(app)


# --- worker processes -------------------------------------------------------------------------
@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 20) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """SIGKILL the whole worker: main process and pool children."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def children(self) -> list[int]:
        """The worker's pool children (not its recorder process)."""
        from worker.recorder_process import is_recorder_process

        out = subprocess.run(["pgrep", "-P", str(self.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split() if not is_recorder_process(int(p))]

    def recorder_process(self) -> int | None:
        from worker.recorder_process import is_recorder_process

        out = subprocess.run(["pgrep", "-P", str(self.pid)], capture_output=True, text=True).stdout
        return next((int(p) for p in out.split() if is_recorder_process(int(p))), None)


def wait_until(predicate: Callable[[], Any], timeout: float = 20, interval: float = 0.1,
               message: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real Celery workers (subprocesses) on the given settings; all stopped at teardown."""
    started: list[WorkerProcess] = []

    def start(settings: Any, *, queues: str | None = None, concurrency: int = 2,
              extra_env: dict[str, str] | None = None, args: list[str] | None = None,
              wait: bool = True) -> WorkerProcess:
        from worker.factory import create_app

        name = f"w{len(started)}-{uuid.uuid4().hex[:6]}@%h"
        env = {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1", **(extra_env or {})}
        log = tmp_path / f"worker-{len(started)}.log"
        cmd = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-l", "INFO",
               "-c", str(concurrency), "-n", name, "--without-gossip", "--without-mingle"]
        from tasks.registry import QUEUES

        cmd += ["-Q", queues or ",".join(QUEUES), *(args or [])]
        with open(log, "wb") as fh:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        w = WorkerProcess(proc, log, env)
        started.append(w)
        if wait:
            probe = create_app(settings, patch=False)
            host = name.replace("%h", socket.gethostname())

            def answered() -> bool:
                if proc.poll() is not None:
                    pytest.fail(f"worker exited early:\n{w.output()[-3000:]}")
                replies = probe.control.ping(destination=[host], timeout=0.5) or []
                return any(host in r for r in replies)

            wait_until(answered, timeout=30, message="the worker to answer a ping")
            probe.close()
        return w

    yield start
    for w in started:
        w.stop()


@pytest.fixture
def run_cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run `conveyor ARGS` as a real subprocess with `settings` exported; returns the result."""

    def run(settings: Any, *args: str, timeout: float = 60, input: str | None = None,
            extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **settings_env(settings), **(extra_env or {}), "COLUMNS": "200"}
        return subprocess.run([sys.executable, "-m", "cli", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=timeout, input=input)

    return run
