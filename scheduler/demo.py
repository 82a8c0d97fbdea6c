"""The scheduler's part of `make demo`: two beats, one schedule, a few ticks, each fired once.

`scripts/demo.py` calls `run(client, log_dir)` once its worker is up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from scheduler.errors import ScheduleNotFound
from scheduler.service import Schedules

if TYPE_CHECKING:
    from jobs.client import Client, Job

ROOT = Path(__file__).resolve().parent.parent
NAME = "demo-heartbeat"


def run(client: Client, log_dir: Path, ticks: int = 3, timeout: float = 60) -> list[Job]:
    """Start two `conveyor beat` processes (one leads, one stands by), schedule `system.ping`
    every 2 s, wait until `ticks` of its jobs succeeded, then stop the beats and remove the
    schedule. Returns those jobs (source `schedule:demo-heartbeat`)."""
    schedules = Schedules(client)
    try:
        schedules.remove(NAME)  # left over from an interrupted demo
    except ScheduleNotFound:
        pass
    log_dir.mkdir(parents=True, exist_ok=True)
    beats = []
    for i in range(2):
        log = open(log_dir / f"demo-beat-{i}.log", "wb")
        beats.append(subprocess.Popen([sys.executable, "-m", "cli", "beat"], cwd=ROOT, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True))
    try:
        schedules.add(NAME, "system.ping", every=2, payload={"message": "fired by beat"},
                      description="make demo: a heartbeat every 2 s")
        deadline = time.monotonic() + timeout
        while True:
            jobs = [j for j in client.list_jobs(task="system.ping", limit=1000)
                    if j.source == f"schedule:{NAME}" and j.status == "succeeded"]
            if len(jobs) >= ticks:
                return sorted(jobs, key=lambda j: j.created_at or 0)[:ticks]
            if time.monotonic() > deadline or any(b.poll() is not None for b in beats):
                raise RuntimeError(f"beat did not fire {ticks} ticks; see {log_dir}/demo-beat-*.log")
            time.sleep(0.2)
    finally:
        for b in beats:
            if b.poll() is None:
                os.killpg(b.pid, signal.SIGTERM)
        for b in beats:
            b.wait(30)
        try:
            schedules.remove(NAME)
        except ScheduleNotFound:
            pass
