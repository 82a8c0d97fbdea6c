"""`make demo`: migrate the SQLite job store, start a worker, run one job of every kind, print results.

Runs on the embedded defaults (SQLite file conveyor.db, Redis on localhost). Each task family
declares an example payload; families that need inputs (sample data sets, an SMTP sink) set
them up in their `demo_setup` hook.
"""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)


def main() -> int:
    from rich.console import Console

    from config import get_settings
    from jobs.migrate import upgrade
    from tasks import TASK_MODULES, load_all

    console = Console()
    settings = get_settings()
    console.print(f"[bold]job store[/] {settings.database_url}  [bold]broker[/] {settings.broker_url}")
    upgrade(settings.database_url)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.results_dir.mkdir(parents=True, exist_ok=True)

    cleanups = []
    for module in TASK_MODULES:  # families prepare what their examples need
        setup = getattr(importlib.import_module(module), "demo_setup", None)
        if setup is not None:
            cleanups.append(setup(settings))

    log_path = ROOT / "var" / "demo-up.log"
    log = open(log_path, "wb")
    # The whole stack, as an operator runs it: worker, beat and Flower under `conveyor up`.
    stack = subprocess.Popen([sys.executable, "-m", "cli", "up", "-c", "2", "--no-migrate"],
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        from jobs.client import default_client

        client = default_client()
        with console.status("waiting for the stack to come up (conveyor up)"):
            deadline = time.monotonic() + 90
            while not (client.app.control.ping(timeout=0.5) or []):
                if stack.poll() is not None or time.monotonic() > deadline:
                    console.print(f"[red]the stack did not start; see {log_path}[/]")
                    return 1
        specs = [s for s in load_all().values() if s.example is not None]
        jobs = [client.enqueue(s.name, s.example, source="cli") for s in specs]
        console.print(f"enqueued {len(jobs)} jobs: " + ", ".join(j.task or "" for j in jobs))
        from scheduler import demo as schedule_demo

        with console.status("two beats fire a schedule kept in the database (one leads)"):
            jobs += schedule_demo.run(client, ROOT / "var")
        finished = []
        with console.status("running them"):
            for job in jobs:
                finished.append(job.wait_finished(timeout=300))

        from cli import print_table

        print_table("Results, read back from the job store",
                    ["task", "source", "status", "attempts", "runtime", "result (in brief) or error"],
                    [(j.task, j.source, j.status, j.attempts, f"{j.runtime or 0:.3f}s",
                      brief(j.result) if j.status == "succeeded"
                      else f"{j.error_type}: {j.error_message}") for j in finished])
        console.print("Whole results: .venv/bin/conveyor jobs show JOB_ID (or --json)")
        for line in log_path.read_text(errors="replace").splitlines():
            if "Flower" in line and "http" in line:
                console.print(line.strip())
                break
        console.print("Try: .venv/bin/conveyor jobs list   .venv/bin/conveyor stats   "
                      ".venv/bin/conveyor up (the stack, until Ctrl-C)")
        return 0 if all(j.status == "succeeded" for j in finished) else 1
    finally:
        os.kill(stack.pid, signal.SIGTERM)  # `up` stops its parts (warm shutdown) and waits
        try:
            stack.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(stack.pid, signal.SIGKILL)
        for cleanup in cleanups:
            if callable(cleanup):
                cleanup()


def brief(result: object, limit: int = 160) -> str:
    """The scalar fields of a result, `key=value`, cut at `limit` characters."""
    import json

    if isinstance(result, dict):
        parts = [f"{k}={v}" for k, v in result.items() if isinstance(v, (str, int, float, bool))]
        text = ", ".join(parts) or ", ".join(result)
    else:
        text = json.dumps(result, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


if __name__ == "__main__":
    sys.exit(main())
