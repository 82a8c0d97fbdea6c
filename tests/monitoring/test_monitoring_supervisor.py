"""The supervisor behind `conveyor up`, with small stand-in parts: a part that keeps crashing is
restarted with backoff while the others stay up; one that ignores SIGTERM is forced after the
timeout; what a part leaves behind in its process group is killed; `up` dying takes its parts
with it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import ROOT, wait_until
from tests.monitoring.support import alive, descendants

SCRIPT = textwrap.dedent("""
    import sys
    from worker.supervisor import PartSpec, Supervisor
    stubborn = "trap '' TERM; sleep 1000 & while true; do sleep 0.1; done"
    specs = [
        PartSpec("steady", ["sh", "-c", "echo steady here; exec sleep 1000"], stop_order=0),
        PartSpec("crashy", ["sh", "-c", "echo boom; exit 3"], stop_order=0),
        PartSpec("stubborn", ["sh", "-c", stubborn], stop_order=1),
    ]
    sup = Supervisor(specs, start_timeout=30, shutdown_timeout=1, backoff_max=2,
                     on_ready=lambda s: print("READY", s.summary(), flush=True))
    sys.exit(sup.run())
""")


def start(tmp_path: Path, stubborn: bool = True) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / "sup.log"
    script = SCRIPT if stubborn else SCRIPT.replace('    PartSpec("stubborn"', '    # ')
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log


def test_backoff_force_and_leftovers(tmp_path):
    proc, log = start(tmp_path)
    text = lambda: log.read_text()  # noqa: E731
    try:
        wait_until(lambda: text().count("crashy exited with code 3") >= 3, timeout=30,
                   message="crashy to crash three times")
        out = text()
        assert re.search(r"^steady +\| steady here", out, re.M) and re.search(r"^crashy +\| boom", out, re.M)
        # backoff doubles, capped at backoff_max
        delays = re.findall(r"crashy will start again in (\d+)s", out)
        assert delays[:3] == ["1", "2", "2"]
        assert "READY" in out and "'steady', " in out  # announced once crashy had failed
        assert "steady exited" not in out
        tree = descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        out = text()
        assert "timed out: stopping stubborn now" in out
        # its `sleep 1000 &` outlived it in its process group: killed, not left behind
        assert "stubborn: killed processes left behind" in out
        assert not [pid for pid in tree if alive(pid)]
        # steady stopped first (order 0), stubborn after (order 1)
        assert out.index("steady   | stopped") < out.index("timed out: stopping stubborn")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def test_parts_die_with_the_supervisor(tmp_path):
    proc, log = start(tmp_path, stubborn=False)
    tree: set[int] = set()
    try:
        wait_until(lambda: "READY" in log.read_text(), timeout=30, message="the supervisor")
        tree = descendants(proc.pid)
        assert tree
        proc.send_signal(signal.SIGKILL)  # no chance to clean up: the kernel tells the parts
        proc.wait(5)
        wait_until(lambda: not [p for p in tree if alive(p)], timeout=10, message="the parts to stop")
    finally:
        for pid in tree:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
