"""A running worker's processes and their memory, read from /proc (for the benchmarks)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def rss_kib(pid: int) -> int:
    """Resident memory of `pid` in KiB (/proc VmRSS); 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def worker_processes(pid: int) -> tuple[list[int], list[int]]:
    """The processes of the worker whose main process is `pid`: (pool children, recorder process).
    Only pool children run job code, so only they are what crashing jobs take down."""
    from worker.recorder_process import is_recorder_process

    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    recorder = [int(p) for p in out if is_recorder_process(int(p))]
    return [int(p) for p in out if int(p) not in recorder], recorder
