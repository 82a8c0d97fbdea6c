"""Helpers for the scheduler's tests: real `conveyor beat` processes and what they fired."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib

from tests.conftest import REDIS_DB, ROOT, settings_env, wait_until

_LOADED = re.compile(r"beat (\S+) loaded schedules version (\d+)")


@dataclass
class BeatProcess:
    """One `conveyor beat` subprocess and its log."""

    proc: subprocess.Popen[bytes]
    log: Path
    settings: Any

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def ident(self) -> str | None:
        """The beat's ident (host:pid:token), once it logged its first load."""
        m = _LOADED.search(self.output())
        return m.group(1) if m else None

    def loaded_version(self) -> int:
        """The newest schedules version this beat loaded (-1 before the first load)."""
        return max((int(v) for _, v in _LOADED.findall(self.output())), default=-1)

    def wait_loaded(self, version: int, timeout: float = 20) -> None:
        """Wait until the beat has loaded the schedules at `version` or later."""
        wait_until(lambda: self.alive() and self.loaded_version() >= version, timeout,
                   message=f"beat to load schedules version {version}:\n{self.output()[-2000:]}")

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            pytest.fail(f"beat exited early ({self.proc.returncode}):\n{self.output()[-3000:]}")
        return True

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM, as a supervisor would; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return int(self.proc.returncode)

    def kill(self) -> None:
        """SIGKILL: the beat dies without releasing anything."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def start_beats(tmp_path: Path) -> Iterator[Callable[..., BeatProcess]]:
    """A factory of real beat processes on given settings; all stopped at teardown."""
    started: list[BeatProcess] = []

    def start(settings: Any) -> BeatProcess:
        env = {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1"}
        log = tmp_path / f"beat-{len(started)}-{uuid.uuid4().hex[:4]}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen([sys.executable, "-m", "cli", "beat", "-l", "INFO"], cwd=ROOT, env=env,
                                    stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        beat = BeatProcess(proc, log, settings)
        started.append(beat)
        return beat

    yield start
    for beat in started:
        beat.stop()


def leader(settings: Any) -> str | None:
    """The ident in the leader lock, read straight from Redis."""
    r = redis_lib.Redis.from_url(settings.beat_lock_url or settings.broker_url)
    value = r.get(settings.beat_lock_key)
    return value.decode() if value else None


def scheduled_jobs(client: Any, name: str) -> list[Any]:
    """Jobs in the job store whose source is the schedule `name`, oldest first."""
    jobs = [j for j in client.list_jobs(limit=100_000) if j.source == f"schedule:{name}"]
    return sorted(jobs, key=lambda j: j.created_at)


def firings(client: Any, name: str) -> list[Any]:
    """The schedule's firing rows, oldest tick first."""
    from scheduler.store import ScheduleStore

    rows = ScheduleStore(client.settings.database_url).firings(name, limit=100_000)
    return sorted((f for f, _ in rows), key=lambda f: f.slot)


__all__ = ["REDIS_DB", "BeatProcess", "firings", "leader", "scheduled_jobs", "start_beats"]
