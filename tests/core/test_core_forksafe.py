"""A pool child forked while another thread of the worker holds a `cached_property` lock must
not hang on it (worker/forksafe.py). Real threads, a real fork."""

from __future__ import annotations

import os
import threading

from kombu.transport.redis import Channel

from worker import forksafe


def _child_can_take(lock_of) -> bool:
    """Fork while another thread holds the lock; True if the child can take it."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock_of():
            held.set()
            release.wait(10)

    t = threading.Thread(target=hold, daemon=True)
    t.start()
    held.wait(5)
    pid = os.fork()
    if pid == 0:  # the child: the thread holding the lock does not exist here
        os._exit(0 if lock_of().acquire(timeout=2) else 1)
    release.set()
    t.join()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def test_a_child_forked_while_a_thread_computes_a_kombu_property_can_compute_it_too():
    descriptor = next(v for v in vars(Channel).values() if hasattr(v, "lock"))
    forksafe.install()
    assert _child_can_take(lambda: descriptor.lock)


def test_reset_finds_the_properties_of_the_libraries_a_child_uses():
    import kombu.connection  # noqa: F401

    assert forksafe.reset_property_locks() >= 10
