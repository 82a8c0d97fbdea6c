"""docker-compose.yml rehearsed without Docker (there is no container engine on the machines
these tests run on): each service of the production shape runs its own `command`, through the
image's entrypoint, with its own environment, against a Redis and a PostgreSQL of the test's
own (the compose network's host names `redis` and `postgres` pointed at them); the worker's
healthcheck runs against the worker. A command, option, setting name or healthcheck the image
would not honour fails here. What only a container run shows (the image builds, the volumes'
permissions) is not covered."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import yaml

from jobs.migrate import is_current
from tests.conftest import empty_pg_database, free_port, missing, wait_until

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _services() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


def _entrypoint() -> list[str]:
    line = re.search(r"^ENTRYPOINT (.+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert line, "the Dockerfile has no ENTRYPOINT"
    return json.loads(line.group(1))


def _interpolate(value: str, given: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}`, from `given` only."""
    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if name in given:
            return given[name]
        if op == "-":
            return arg
        raise AssertionError(f"compose needs {name} set: {arg or 'no default'}")

    return re.sub(r"\$\{(\w+)(?::([-?])([^}]*))?\}", one, value)


@pytest.fixture
def empty_pg() -> Iterator[str]:
    """A PostgreSQL database with no tables: the compose's `migrate` creates them."""
    yield from empty_pg_database("conveyor_compose")


@pytest.mark.slow
def test_the_compose_services_run_as_the_image_would_run_them(private_redis, empty_pg, tmp_path):
    services = _services()
    assert _entrypoint() == ["conveyor"]
    redis_base = f"redis://127.0.0.1:{private_redis.port}"

    def env_of(name: str) -> dict[str, str]:
        env = {k: _interpolate(str(v), {}) for k, v in services[name]["environment"].items()}
        for key in ("CONVEYOR_BROKER_URL", "CONVEYOR_RESULT_BACKEND"):
            assert env[key].startswith("redis://redis:6379/"), env[key]
            env[key] = env[key].replace("redis://redis:6379", redis_base)
        assert urlsplit(env["CONVEYOR_DATABASE_URL"]).hostname == "postgres"
        env["CONVEYOR_DATABASE_URL"] = empty_pg
        # the image's volumes
        for key, folder in (("CONVEYOR_DATA_DIR", "data"), ("CONVEYOR_RESULTS_DIR", "results")):
            env[key] = str(tmp_path / folder)
            (tmp_path / folder).mkdir(exist_ok=True)
        outside = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        return {**outside, **env, "PATH": f"{BIN}{os.pathsep}{outside.get('PATH', '')}",
                "HOSTNAME": socket.gethostname()}  # as Docker sets it in a container

    def argv(name: str) -> list[str]:
        return [str(BIN / _entrypoint()[0]), *services[name]["command"]]

    # redis: its own command on the local binary keeps queued jobs in an append-only file
    port = free_port()
    r_cmd = services["redis"]["command"]
    if shutil.which(r_cmd[0]) is None:
        missing(f"{r_cmd[0]} binary")
    own = subprocess.Popen([r_cmd[0], *r_cmd[1:], "--port", str(port), "--bind", "127.0.0.1",
                            "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        r = redis.Redis(port=port)
        wait_until(lambda: _pings(r), timeout=10, message="the compose's redis command to start")
        assert r.config_get("appendonly") == {"appendonly": "yes"}
    finally:
        own.terminate()
        own.wait(10)

    # migrate: a one-shot that creates the schema
    out = subprocess.run(argv("migrate"), env=env_of("migrate"), cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert is_current(empty_pg)
    assert services["migrate"]["restart"] == "no"

    # seed-schedules: another one-shot, after migrate
    out = subprocess.run(argv("seed-schedules"), env=env_of("seed-schedules"), cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr

    # worker: scalable (no fixed name), consumes, and its healthcheck passes against it
    worker_service = services["worker"]
    assert "container_name" not in worker_service and "ports" not in worker_service
    env = env_of("worker")
    log = open(tmp_path / "worker.log", "wb")
    worker = subprocess.Popen(argv("worker"), env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        kind, check = worker_service["healthcheck"]["test"][0], worker_service["healthcheck"]["test"][1:]
        assert kind == "CMD-SHELL"
        shell = check[0].replace("$$", "$")  # compose's escape for a literal $

        def healthy() -> bool:
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()
            return subprocess.run(["sh", "-c", shell], env=env, cwd=tmp_path, capture_output=True,
                                  timeout=60).returncode == 0

        wait_until(healthy, timeout=90, interval=1, message="the worker's healthcheck to pass")
        out = subprocess.run([str(BIN / "conveyor"), "enqueue", "system.ping", "-d", "message=compose",
                              "--wait", "--timeout", "60", "--json"], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert "compose" in out.stdout
    finally:
        os.killpg(worker.pid, signal.SIGTERM)  # what `docker compose stop` sends
        try:
            code = worker.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            raise
        log.close()
    assert code == 0, (tmp_path / "worker.log").read_text()[-3000:]
    # a healthcheck that cannot fail proves nothing: against no worker it fails
    assert subprocess.run(["sh", "-c", shell], env=env, cwd=tmp_path, capture_output=True,
                          timeout=60).returncode != 0


def _pings(r: redis.Redis) -> bool:
    try:
        return bool(r.ping())
    except redis.RedisError:
        return False


def test_compose_and_dockerfile_agree_on_what_the_image_holds():
    """Every path the Dockerfile copies exists, and holds what the services import."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = [p for line in re.findall(r"^COPY (.+)$", dockerfile, re.MULTILINE)
              for p in shlex.split(line)[:-1]]
    assert copied and all((ROOT / p).exists() for p in copied), copied
    for package in ("config", "jobs", "worker", "tasks", "scheduler", "migrations"):
        assert package in copied, f"{package} is not in the image"
    conveyor_services = [n for n, s in _services().items() if s.get("build") == "."]
    assert {"migrate", "worker", "beat", "flower"} <= set(conveyor_services)
