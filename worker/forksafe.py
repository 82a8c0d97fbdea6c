"""Fresh locks for `cached_property` descriptors in a forked pool child.

Python 3.11's `functools.cached_property`, and kombu's subclass of it on every version, hold one
lock per *descriptor* (shared by every instance of the class) while they compute a value. When
the worker's main process forks a pool child (at start, after a child died, when one is
recycled) while another of its threads is inside such a property (the recovery sweep opening
a Redis channel, say), the child inherits that lock held by a thread it does not have, and the
first time it touches the same property it waits for ever: the job it was given never starts
(seen: a job whose attempts kill their child hung at `Channel.__init__` in the replacement).

After a fork the child replaces every such lock it can find with a new one. Whatever the other
thread was computing belongs to the parent's objects, which the child never uses. Written here
because neither Python nor kombu resets these locks at fork (logging, by contrast, does).
"""

from __future__ import annotations

import functools
import os
import sys
import threading

#: Modules whose classes are scanned: the libraries a pool child uses with threads about.
PREFIXES = ("kombu", "celery", "billiard", "redis", "jobs", "worker", "tasks", "config")


def reset_property_locks() -> int:
    """Give every lock-holding `cached_property` of the scanned modules a new lock; how many.

    Scanned in each child, not once in the parent, so classes imported later are covered too;
    it costs about 10 ms at the child's start, off the parent's event loop."""
    count = 0
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(PREFIXES):
            continue
        for obj in list(vars(module).values()):
            if not isinstance(obj, type) or obj.__module__ != name:
                continue
            for attr in list(vars(obj).values()):
                if isinstance(attr, functools.cached_property) and hasattr(attr, "lock"):
                    attr.lock = threading.RLock()
                    count += 1
    return count


_installed = False


def install() -> None:
    """Reset the locks in every child this process forks from now on (idempotent)."""
    global _installed
    if not _installed:
        os.register_at_fork(after_in_child=reset_property_locks)
        _installed = True
