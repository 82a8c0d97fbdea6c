"""`conveyor up` as a real process tree: every part answers, jobs flow, a killed part comes
back, and SIGTERM finishes the running job and leaves no process behind."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

from jobs.models import JobStatus
from tests.conftest import ROOT, settings_env, wait_until
from tests.monitoring.support import Http, alive, descendants, flush_redis, stack_settings
from tests.monitoring.tasks_sensitive import SECRET


def test_up_runs_the_stack_and_stops_it_cleanly(redis_url, tmp_path):
    from jobs.client import Client
    from worker.factory import create_app

    flush_redis()
    # A job store that does not exist yet: `up` migrates it.
    settings = stack_settings(tmp_path, f"sqlite:///{tmp_path / 'fresh.db'}", up_shutdown_timeout=60)
    log = tmp_path / "up.log"
    env = {**os.environ, **settings_env(settings), "COLUMNS": "200"}
    with open(log, "wb") as fh:
        up = subprocess.Popen([sys.executable, "-m", "cli", "up", "-c", "2"], cwd=ROOT, env=env,
                              stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    text = lambda: log.read_text(errors="replace")  # noqa: E731
    try:
        wait_until(lambda: "Conveyor is up" in text() or up.poll() is not None, timeout=60,
                   message="`conveyor up` to report the stack up")
        assert up.poll() is None, text()
        out = text()
        # every part started, with its output prefixed by its name
        for part in ("worker", "beat", "flower"):
            assert re.search(rf"^{part} +\| started \(pid \d+\)", out, re.M), (part, out[-3000:])
        assert re.search(r"^worker +\| .*worker@\S+ ready\.", out, re.M)
        for part in ("worker", "flower"):
            assert re.search(rf"^{part} +\| answering", out, re.M), part
        url = f"http://127.0.0.1:{settings.flower_port}/"
        assert f"Flower: {url}" in out and "user admin" in out
        assert settings.flower_password.get_secret_value() not in out

        # every part answers: the worker a ping, Flower its API (with credentials only)
        app = create_app(settings)
        client = Client(app)
        node = f"worker@{socket.gethostname()}"
        assert app.control.ping(destination=[node], timeout=2)
        http = Http(url)
        assert http.request("api/workers", auth=False)[0] == 401
        assert node in wait_until(lambda: http.json("api/workers?refresh=1"), timeout=20,
                                  message="Flower to list the worker")

        # jobs flow, and Flower sees them, redacted
        jobs = [client.enqueue("system.ping", {"message": f"up {i}"}) for i in range(3)]
        jobs.append(client.enqueue("monitoring_test.login", {"user": "ada", "password": SECRET}))
        assert all(j.wait_finished(timeout=30).status == JobStatus.SUCCEEDED for j in jobs)
        wait_until(lambda: (shown := http.json("api/tasks")) and all(
            (shown.get(j.id) or {}).get("state") == "SUCCESS" for j in jobs),
            timeout=30, message="Flower to show the jobs")
        assert SECRET.encode() not in http.request("api/tasks")[1]

        # a part that dies is reported and started again; the rest stays up
        flower_pid = int(re.findall(r"^flower +\| started \(pid (\d+)\)", out, re.M)[-1])
        os.kill(flower_pid, signal.SIGKILL)
        wait_until(lambda: "flower killed by SIGKILL" in text(), timeout=10, message="the report")
        wait_until(lambda: len(re.findall(r"^flower +\| answering", text(), re.M)) == 2, timeout=30,
                   message="Flower to be started again")
        assert http.request("api/workers")[0] == 200

        # SIGTERM while a job runs: the job finishes, then everything stops
        running = client.enqueue("system.sleep", {"seconds": 2, "steps": 2})
        wait_until(lambda: client.get_job(running.id).status == JobStatus.STARTED, timeout=20,
                   message="the job to start")
        tree = descendants(up.pid)
        assert len(tree) >= 4  # a worker and its 2 pool children, Flower (beat may be backing off)
        up.send_signal(signal.SIGTERM)
        assert up.wait(90) == 0, text()[-3000:]
        assert client.get_job(running.id).status == JobStatus.SUCCEEDED
        left = [pid for pid in tree if alive(pid)]
        assert not left, f"processes left behind: {left}"
        out = text()
        assert "SIGTERM received: stopping" in out and "all stopped" in out
        assert re.search(r"^worker +\| .*Warm shutdown", out, re.M)
        # beat stops first, Flower last, after the workers
        stops = [m.group(1) for m in re.finditer(r"^(\w+) +\| stopped \(code", out, re.M)]
        assert stops[-1] == "flower" and stops.index("worker") < stops.index("flower")
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait(10)
        flush_redis()


def test_up_refuses_bad_options_before_starting_anything(run_cli, make_settings, tmp_path: Path):
    settings = make_settings(flower_user="admin")  # a user without a password
    result = run_cli(settings, "up", "--no-migrate")
    assert result.returncode == 2 and "CONVEYOR_FLOWER_PASSWORD" in result.stderr
    assert "started" not in result.stdout


def test_up_restarts_a_worker_that_is_alive_but_not_consuming(redis_url, tmp_path):
    import json

    import redis

    from jobs.client import Client
    from worker.factory import create_app
    from worker.recovery import NODE_PREFIX

    flush_redis()
    settings = stack_settings(tmp_path, f"sqlite:///{tmp_path / 'stall.db'}", stall_after=2,
                              recovery_heartbeat_interval=0.5)
    log = tmp_path / "up.log"
    env = {**os.environ, **settings_env(settings), "COLUMNS": "200"}
    with open(log, "wb") as fh:
        up = subprocess.Popen([sys.executable, "-m", "cli", "up", "-c", "1", "--no-beat", "--no-flower"],
                              cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    text = lambda: log.read_text(errors="replace")  # noqa: E731
    pids = lambda: [int(p) for p in re.findall(r"^worker +\| started \(pid (\d+)\)", text(), re.M)]  # noqa: E731
    stopped = None
    try:
        wait_until(lambda: "Conveyor is up" in text() or up.poll() is not None, timeout=60,
                   message="`conveyor up` to report the stack up")
        client = Client(create_app(settings))
        assert client.enqueue("system.ping", {"message": "first"}).wait(timeout=30)["message"] == "first"
        [stopped] = pids()
        r = redis.Redis.from_url(settings.broker_url)
        key = f"{NODE_PREFIX}worker@{socket.gethostname()}"
        wait_until(lambda: (raw := r.get(key)) and json.loads(raw)["tags"] == [], timeout=20,
                   message="the worker to hold nothing")
        os.kill(stopped, signal.SIGSTOP)  # alive, connected, not consuming...
        r.expire(key, 120)  # ...but its claim still fresh, as a stuck consumer's heartbeat keeps it
        jobs = [client.enqueue("system.ping", {"message": str(i)}) for i in range(3)]
        wait_until(lambda: "worker is alive but not consuming" in text(), timeout=30,
                   message="`up` to notice the stalled worker")
        wait_until(lambda: len(pids()) == 2, timeout=60, message="the worker to be started again")
        assert pids()[1] != stopped
        for j in jobs:
            assert j.wait_finished(timeout=60).status == JobStatus.SUCCEEDED
    finally:
        if stopped:
            try:
                os.kill(stopped, signal.SIGCONT)
            except ProcessLookupError:
                pass
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait(10)
        flush_redis()
