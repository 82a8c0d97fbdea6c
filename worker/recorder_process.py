"""The worker's recorder process: writes the lifecycle records its pool children send it.

Recording inside each pool child put the database work (and a flusher thread holding the
child's GIL) on the path of every job, and a child killed right after a job took its unwritten
records with it. Instead the worker's main process forks one recorder process before its pool
starts; each child sends its records over a Unix socket (`jobs.recorder.ForwardingRecorder`)
the moment they happen, and this process merges and writes them in batches with the same
`Recorder` every other process uses. Records a child sent survive the child.

It ends when the worker's main process is gone (its control socket closes, however the main
process ends): it reads what the children still send, writes everything, and exits. It runs
in a session of its own, and ignores Ctrl-C and SIGTERM, so signals sent to the worker's
process group (a warm shutdown, or `kill -9 -<pgid>` of the whole worker) are the main
process's alone: the records of the worker's last jobs are still written.
"""

from __future__ import annotations

import logging
import os
import selectors
import shutil
import signal
import socket
import tempfile
import time
from typing import Any

from jobs import recorder as recording

log = logging.getLogger("conveyor.recorder")

#: After the main process is gone, how long to wait for children still sending.
DRAIN_SECONDS = 3.0
#: After a round that read records, how long to let the next ones gather in the sockets.
#: Reading each frame the moment it arrives woke this process once per job, and each wakeup
#: cost the sending child too; reading every few milliseconds lets one read take many frames.
#: bench/throughput.py (2 pool children, no-op jobs, records not written): 810 -> 856 jobs/s,
#: this process's CPU 64 -> 38 us a job. A frame asking for a sync is answered in the round
#: that reads it, so a sync waits at most this long more.
READ_TICK = 0.005
#: Its name in `ps -o comm` and /proc/<pid>/comm (Linux keeps 15 characters).
PROCESS_NAME = "conveyor-record"


def is_recorder_process(pid: int) -> bool:
    """Whether `pid` is a worker's recorder process (rather than one of its pool children)."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip() == PROCESS_NAME
    except OSError:
        return False


def _set_name() -> None:
    try:
        import ctypes

        ctypes.CDLL(None).prctl(15, PROCESS_NAME.encode(), 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):  # not Linux: the name is only a convenience
        pass


class RecorderProcess:
    """The main process's handle on its recorder process."""

    def __init__(self, pid: int, control: socket.socket, folder: str) -> None:
        self.pid = pid
        self.control = control
        self.folder = folder

    def stop(self, timeout: float = 15.0) -> None:
        """Let it write what it holds and exit; wait up to `timeout` seconds."""
        try:
            self.control.close()
        except OSError:
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                break
            time.sleep(0.02)
        else:
            log.error("recorder process %d did not finish within %.0fs", self.pid, timeout)
        shutil.rmtree(self.folder, ignore_errors=True)
        recording.forward_to(None)


def start(database_url: str, interval: float, batch_size: int) -> RecorderProcess:
    """Fork the recorder process and make this process's future children forward to it."""
    folder = tempfile.mkdtemp(prefix="conveyor-recorder-")  # mode 0700: only this user connects
    address = os.path.join(folder, "socket")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen(128)
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the recorder process
        code = 0
        try:
            ours.close()
            _serve(listener, theirs, database_url, interval, batch_size)
        except BaseException:  # noqa: BLE001 - report, then leave without running the parent's exit hooks
            log.exception("recorder process failed")
            code = 1
        finally:
            os._exit(code)
    listener.close()
    theirs.close()
    # Children forked from here on (the pool's) must not hold the control socket open, or the
    # recorder would not see the main process go.
    os.register_at_fork(after_in_child=lambda: _close_quietly(ours))
    recording.forward_to(address, owner_pid=os.getpid())
    return RecorderProcess(pid, ours, folder)


def _close_quietly(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


def _serve(listener: socket.socket, control: socket.socket, database_url: str, interval: float,
           batch_size: int) -> None:
    _set_name()
    os.setsid()  # out of the worker's process group: a signal to the group is not for us
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)
    from jobs.db import dispose_engines
    from jobs.store import JobStore

    recording.forward_to(None)
    dispose_engines()  # never use a connection pool inherited across fork
    rec = recording.Recorder(JobStore(database_url), interval, batch_size)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, "accept")
    sel.register(control, selectors.EVENT_READ, "control")
    buffers: dict[socket.socket, bytearray] = {}
    stopping_since: float | None = None
    while True:
        events = sel.select(timeout=0.5)
        for key, _ in events:
            sock: Any = key.fileobj
            if key.data == "accept":
                conn, _ = sock.accept()
                buffers[conn] = bytearray()
                sel.register(conn, selectors.EVENT_READ, "child")
            elif key.data == "control":
                if not sock.recv(1):  # the main process is gone
                    sel.unregister(sock)
                    sel.unregister(listener)
                    stopping_since = time.monotonic()
            else:
                data = sock.recv(1 << 16)
                if data:
                    buffers[sock] += data
                    _deliver(buffers[sock], rec, sock)
                else:  # the child exited (a partial frame it left is dropped)
                    sel.unregister(sock)
                    sock.close()
                    del buffers[sock]
        if events and stopping_since is None:
            time.sleep(READ_TICK)
        if stopping_since is not None and (not buffers or time.monotonic() - stopping_since > DRAIN_SECONDS):
            break
    rec.close()


def _deliver(buf: bytearray, rec: recording.Recorder, sock: socket.socket) -> None:
    """Hand every complete frame in `buf` to `rec`, keeping the incomplete tail; answer a
    frame that asks for a sync once everything is written."""
    offset = 0
    while (frame := recording.next_frame(buf, offset)) is not None:
        payload, exact, offset = frame
        try:
            records, sync = recording.decode_records(payload, exact)
        except (ValueError, TypeError) as exc:  # orjson's JSONDecodeError is a ValueError
            log.error("dropped a malformed lifecycle record: %s", exc)
            continue
        rec.extend(records)
        if sync:
            try:
                sock.sendall(b"1" if rec.flush() else b"0")
            except OSError:  # the child is gone
                pass
    del buf[:offset]
