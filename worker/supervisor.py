"""`conveyor up`: run the whole stack as one process tree and take it down cleanly.

A small supervisor, in the spirit of honcho/foreman with a restart policy: each part (a
worker, beat, Flower) is a child process in a process group of its own, its output prefixed
with its coloured name. Start-up waits until each part answers its health check. A part that
exits is reported and started again after an exponential backoff; the rest of the stack stays
up. A worker that is alive but no longer consuming (its queues have work, it has free slots, it
received nothing for `stall_after` seconds: the classic consumer stuck after a Redis reconnect)
is stopped and so started again. Ctrl-C or SIGTERM stops the parts in order (beat first, so
nothing new is scheduled, then the workers with Celery's warm shutdown, so running jobs finish,
then Flower, so it sees the last events); a second Ctrl-C forces it. Whatever is left in a
part's process group at the end is killed: nothing outlives `up`.

Signal handlers only set flags; the loop acts on them (huey's consumer does the same).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, TextIO

import click

if TYPE_CHECKING:
    from celery import Celery

    from config import Settings
    from worker.flower import FlowerCommand

#: Parts without a health check count as up once they have run this long.
SETTLE_SECONDS = 2.0
#: A part that ran this long before it exited starts again without waiting.
STABLE_SECONDS = 30.0
POLL_SECONDS = 0.1
PROBE_SECONDS = 0.5
#: How often a part's `stalled` check runs, and how long a stalled part gets to stop before
#: it is killed.
STALL_CHECK_SECONDS = 5.0
STALL_STOP_SECONDS = 30.0
COLOURS = ("cyan", "magenta", "blue", "green", "yellow", "bright_cyan", "bright_magenta")

# On Linux a part is told to stop (SIGTERM) if `up` itself dies, even by SIGKILL, so no part is
# ever orphaned. The launcher sets that, checks `up` did not die before, and execs the part.
_LAUNCHER = """\
import ctypes, os, signal, sys
parent = int(sys.argv[1])
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass
if os.getppid() != parent:
    sys.exit(1)
os.execvp(sys.argv[2], sys.argv[2:])
"""


@dataclass
class PartSpec:
    """What to run, how to know it answers, and how to stop it."""

    name: str
    argv: list[str]
    env: dict[str, str] | None = field(default=None, repr=False)
    #: Returns True once the part answers; None: up once it has run SETTLE_SECONDS.
    ready: Callable[[], bool] | None = None
    #: Returns why a running part should be restarted (alive but not working), or None.
    stalled: Callable[[], str | None] | None = None
    #: Lower stops first.
    stop_order: int = 0
    stop_signal: int = signal.SIGTERM
    #: Sent on a second Ctrl-C (Celery's cold shutdown is SIGQUIT).
    force_signal: int = signal.SIGKILL
    umask: int | None = None


@dataclass
class Part:
    spec: PartSpec
    colour: str
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    ready: bool = False
    last_probe: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    reader: threading.Thread | None = None
    groups: set[int] = field(default_factory=set)
    last_stall_check: float = 0.0
    stopping_since: float | None = None  # asked to stop because it stalled

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Output:
    """Writes prefixed lines from many threads, one whole line at a time."""

    def __init__(self, stream: TextIO | None = None, width: int = 8) -> None:
        self.stream = stream
        self.width = width
        self.lock = threading.Lock()
        self.broken = False

    def line(self, name: str, colour: str, text: str) -> None:
        prefix = click.style(f"{name:<{self.width}} |", fg=colour, bold=name == "up")
        with self.lock:
            if self.broken:
                return
            try:
                click.echo(f"{prefix} {text}", file=self.stream)
            except OSError:
                # Our output is gone (`conveyor up | head`): keep draining the parts' pipes so
                # they never block on a full one, and keep supervising.
                self.broken = True

    def say(self, text: str) -> None:
        self.line("up", "white", text)


class Supervisor:
    """Starts the parts, waits for them to answer, restarts those that exit, stops them all."""

    def __init__(self, specs: Sequence[PartSpec], *, output: Output | None = None,
                 start_timeout: float = 60.0, shutdown_timeout: float = 300.0,
                 backoff_max: float = 60.0,
                 on_ready: Callable[[Supervisor], None] | None = None) -> None:
        self.parts = [Part(s, COLOURS[i % len(COLOURS)]) for i, s in enumerate(specs)]
        self.out = output or Output(width=max([len(s.name) for s in specs] + [4]))
        self.start_timeout = start_timeout
        self.shutdown_timeout = shutdown_timeout
        self.backoff_max = backoff_max
        self.on_ready = on_ready
        self.stop_requested = 0  # how many times we were asked to stop
        self.stop_signal_name = ""

    # --- signals: flags only ------------------------------------------------------------------
    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stop_requested += 1
        self.stop_signal_name = signal.Signals(signum).name

    def _install_signals(self) -> dict[int, object]:
        return {sig: signal.signal(sig, self._on_signal)
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}

    # --- one part -----------------------------------------------------------------------------
    def _start(self, part: Part) -> None:
        spec = part.spec
        env = dict(os.environ if spec.env is None else spec.env)
        env["PYTHONUNBUFFERED"] = "1"
        argv = spec.argv
        if sys.platform == "linux":
            argv = [sys.executable, "-c", _LAUNCHER, str(os.getpid()), *argv]
        try:
            part.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         start_new_session=True,
                                         umask=-1 if spec.umask is None else spec.umask)
        except OSError as exc:
            self.out.say(f"{spec.name} could not start: {exc}")
            self._schedule_restart(part, 0.0)
            return
        part.groups.add(part.proc.pid)  # start_new_session: its pid is its process group
        part.started_at = time.monotonic()
        part.ready = False
        part.restart_at = None
        part.stopping_since = None
        part.last_stall_check = part.started_at
        part.reader = threading.Thread(target=self._pump, args=(part, part.proc), daemon=True,
                                       name=f"up-{spec.name}")
        part.reader.start()
        self.out.line(spec.name, part.colour, f"started (pid {part.proc.pid})")

    def _pump(self, part: Part, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            self.out.line(part.spec.name, part.colour, raw.decode(errors="replace").rstrip())
        proc.stdout.close()

    def _probe(self, part: Part) -> None:
        """Mark `part` ready once its health check answers (at most every PROBE_SECONDS)."""
        now = time.monotonic()
        if part.ready or not part.running or now - part.last_probe < PROBE_SECONDS:
            return
        part.last_probe = now
        check = part.spec.ready
        try:
            ok = (now - part.started_at >= SETTLE_SECONDS) if check is None else bool(check())
        except Exception:  # noqa: BLE001 - not answering yet
            ok = False
        if ok:
            part.ready = True
            self.out.line(part.spec.name, part.colour, "answering")

    def _check_stalled(self, part: Part) -> None:
        """Stop a part that is alive but stalled (it is then reaped and started again)."""
        now = time.monotonic()
        if part.stopping_since is not None:
            if part.running and now - part.stopping_since > STALL_STOP_SECONDS:
                self.out.say(f"{part.spec.name} did not stop: killing it")
                self._signal(part, signal.SIGKILL)
            return
        check = part.spec.stalled
        if check is None or not part.ready or not part.running or now - part.last_stall_check < STALL_CHECK_SECONDS:
            return
        part.last_stall_check = now
        try:
            reason = check()
        except Exception:  # noqa: BLE001 - the broker is away: nothing to tell
            return
        if reason:
            self.out.say(f"{part.spec.name} is alive but not consuming ({reason}): restarting it")
            part.stopping_since = now
            self._signal(part, part.spec.stop_signal)
            self._signal(part, signal.SIGCONT)  # a stopped process must wake to handle it

    def _schedule_restart(self, part: Part, ran_for: float) -> None:
        part.failures = 1 if ran_for >= STABLE_SECONDS else part.failures + 1
        delay = 0.0 if part.failures == 1 and ran_for >= STABLE_SECONDS else \
            min(self.backoff_max, 2.0 ** (part.failures - 1))
        part.restart_at = time.monotonic() + delay
        self.out.say(f"{part.spec.name} will start again in {delay:.0f}s")

    def _reap(self, part: Part) -> None:
        """Report a part that exited and schedule its restart."""
        assert part.proc is not None
        code = part.proc.returncode
        ran_for = time.monotonic() - part.started_at
        if code < 0:
            try:
                how = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"killed by signal {-code}"
        else:
            how = f"exited with code {code}"
        self.out.say(f"{part.spec.name} {how} after {ran_for:.1f}s")
        self._kill_leftovers(part)
        part.proc = None
        part.ready = False
        self._schedule_restart(part, ran_for)

    def _kill_leftovers(self, part: Part) -> None:
        """SIGKILL whatever is still in the part's process groups (a pool child, say)."""
        for pgid in list(part.groups):
            try:
                os.killpg(pgid, signal.SIGKILL)
                self.out.say(f"{part.spec.name}: killed processes left behind in group {pgid}")
            except ProcessLookupError:
                pass
            except PermissionError:
                pass
            part.groups.discard(pgid)

    # --- the loop ------------------------------------------------------------------------------
    def run(self) -> int:
        """Run until asked to stop; return 0 after a clean shutdown."""
        previous = self._install_signals()
        try:
            return self._run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)  # type: ignore[arg-type]

    def _run(self) -> int:
        for part in self.parts:
            self._start(part)
        deadline = time.monotonic() + self.start_timeout
        announced = False
        while not self.stop_requested:
            for part in self.parts:
                if part.proc is not None and part.proc.poll() is not None:
                    self._reap(part)
                if part.proc is None and part.restart_at is not None and time.monotonic() >= part.restart_at:
                    self._start(part)
                self._probe(part)
                self._check_stalled(part)
            # Announce once every part answers or has failed at least once (and is being
            # restarted): one part that cannot start does not hold up the rest.
            settled = all(p.ready or p.failures for p in self.parts)
            if not announced and (settled or time.monotonic() > deadline):
                announced = True
                late = [p.spec.name for p in self.parts if not p.ready]
                if late:
                    self.out.say(f"not answering yet: {', '.join(late)} (still trying)")
                if self.on_ready:
                    self.on_ready(self)
            time.sleep(POLL_SECONDS)
        return self.shutdown()

    def shutdown(self) -> int:
        """Stop the parts in order: warm first, forced on a second request or after the timeout."""
        self.out.say(f"{self.stop_signal_name or 'stop'} received: stopping "
                     "(running jobs finish; Ctrl-C again to force)")
        asked = self.stop_requested
        for order in sorted({p.spec.stop_order for p in self.parts}):
            group = [p for p in self.parts if p.spec.stop_order == order]
            for part in group:
                part.restart_at = None
                self._signal(part, part.spec.stop_signal)
            deadline = time.monotonic() + self.shutdown_timeout
            forced = False
            while any(p.running for p in group):
                if not forced and (self.stop_requested > asked or time.monotonic() > deadline):
                    forced = True
                    why = "timed out" if time.monotonic() > deadline else "forced"
                    for part in group:
                        if part.running:
                            self.out.say(f"{why}: stopping {part.spec.name} now")
                            self._signal(part, part.spec.force_signal)
                    deadline = time.monotonic() + 10  # then SIGKILL, below
                elif forced and time.monotonic() > deadline:
                    for part in group:
                        self._signal(part, signal.SIGKILL)
                time.sleep(POLL_SECONDS)
            for part in group:
                if part.proc is not None:
                    code = part.proc.returncode
                    self.out.line(part.spec.name, part.colour, f"stopped (code {code})")
                self._kill_leftovers(part)
                if part.reader is not None:
                    part.reader.join(timeout=5)
        self.out.say("all stopped")
        return 0

    def _signal(self, part: Part, sig: int) -> None:
        if part.running:
            assert part.proc is not None
            try:
                part.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    # --- what the operator is shown ------------------------------------------------------------
    def summary(self) -> list[tuple[str, str, str]]:
        """(part, pid, state) for each part."""
        rows = []
        for p in self.parts:
            state = "up" if p.ready else "starting" if p.running else "restarting"
            rows.append((p.spec.name, str(p.proc.pid) if p.proc else "", state))
        return rows


# --- Conveyor's stack ----------------------------------------------------------------------------
def _worker_probe(app: Celery, nodename: str) -> Callable[[], bool]:
    def answers() -> bool:
        replies = app.control.ping(destination=[nodename], timeout=0.5) or []
        return any(nodename in reply for reply in replies)

    return answers


def _worker_stalled(settings: Settings, nodename: str) -> Callable[[], str | None]:
    """Why the worker `nodename` is stalled (worker.health.stalled_workers), or None."""
    from worker.health import stalled_workers

    return lambda: stalled_workers(settings).get(nodename)


def _http_probe(url: str) -> Callable[[], bool]:
    def answers() -> bool:
        from urllib.request import urlopen

        with urlopen(url, timeout=1) as resp:  # noqa: S310 - our own Flower on loopback
            return bool(resp.status == 200)

    return answers


def build_stack(settings: Settings, *, workers: int, concurrency: int, queues: str | None,
                loglevel: str, beat: bool, flower: FlowerCommand | None) -> list[PartSpec]:
    """The parts of `conveyor up`: N workers, beat, Flower (a `worker.flower.FlowerCommand`)."""
    import socket

    from worker.factory import create_app

    probe_app = create_app(settings, patch=False)
    cli = [sys.executable, "-m", "cli"]
    specs = []
    for i in range(1, workers + 1):
        name = f"worker{i}" if workers > 1 else "worker"
        nodename = f"{name}@{socket.gethostname()}"
        argv = [*cli, "worker", "-n", nodename, "-c", str(concurrency), "-l", loglevel]
        if queues:
            argv += ["-Q", queues]
        specs.append(PartSpec(name, argv, ready=_worker_probe(probe_app, nodename),
                              stalled=_worker_stalled(settings, nodename), stop_order=1,
                              force_signal=signal.SIGQUIT))
    if beat:
        specs.append(PartSpec("beat", [*cli, "beat"], stop_order=0))
    if flower is not None:
        specs.append(PartSpec("flower", list(flower.argv), env=dict(flower.env),
                              ready=_http_probe(flower.health_url), stop_order=2, umask=0o077))
    return specs


def run_up(settings: Settings, *, workers: int, concurrency: int, queues: str | None, loglevel: str,
           beat: bool, flower: bool, flower_port: int | None, insecure_local: bool,
           migrate: bool, output: Output | None = None) -> int:
    """`conveyor up`: migrate, build the parts, supervise them until asked to stop."""
    from config import mask_url
    from worker.flower import describe, flower_command, prepare

    out = output or Output()
    flower_cmd = None
    if flower:
        # `up` is never open either: with no credentials configured it makes a password for
        # this run (shown once below), unless the operator asked for --insecure-local.
        flower_cmd = flower_command(settings, port=flower_port, insecure_local=insecure_local,
                                    generate_password=not insecure_local)
        prepare(settings, flower_cmd)
    if migrate:
        from jobs.migrate import upgrade

        upgrade(settings.database_url)
        out.say(f"job store {mask_url(settings.database_url)} is migrated")
    specs = build_stack(settings, workers=workers, concurrency=concurrency, queues=queues,
                        loglevel=loglevel, beat=beat, flower=flower_cmd)
    out.width = max(out.width, *(len(s.name) for s in specs))

    def ready(sup: Supervisor) -> None:
        parts = ", ".join(f"{name} ({state}, pid {pid})" for name, pid, state in sup.summary())
        out.say(f"Conveyor is up: {parts}")
        out.say(f"broker {mask_url(settings.broker_url)}, job store {mask_url(settings.database_url)}")
        if flower_cmd is not None:
            out.say(describe(flower_cmd))
        out.say("Ctrl-C or SIGTERM stops everything: running jobs finish first; press Ctrl-C again "
                "to force")

    supervisor = Supervisor(specs, output=out, start_timeout=settings.up_start_timeout,
                            shutdown_timeout=settings.up_shutdown_timeout,
                            backoff_max=settings.up_restart_backoff_max, on_ready=ready)
    return supervisor.run()
