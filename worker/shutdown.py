"""Graceful shutdown with a deadline: SIGTERM lets running jobs finish for `shutdown_grace`
seconds, then the worker shuts down cold and the unfinished jobs go back to their queues.

Celery's warm shutdown (SIGTERM) waits for running jobs however long they take; its cold
shutdown (SIGQUIT) stops them at once. A timer started when the warm shutdown begins sends the
worker SIGQUIT once the grace period is over. With late acknowledgement nothing unfinished was
acknowledged, and kombu gives the unacknowledged messages back to Redis as it closes.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

from celery import Celery, signals

log = logging.getLogger("conveyor.shutdown")


def install(app: Celery) -> None:
    def on_shutting_down(sig: Any = None, how: str | None = None, **_: Any) -> None:
        if how != "Warm":
            return
        grace = app.conf.conveyor_settings.shutdown_grace
        log.warning("warm shutdown: running jobs have %.0fs to finish", grace)

        def deadline() -> None:
            log.warning("grace period over: stopping the jobs still running; they will run again")
            os.kill(os.getpid(), signal.SIGQUIT)

        timer = threading.Timer(grace, deadline)
        timer.daemon = True
        timer.start()

    signals.worker_shutting_down.connect(on_shutting_down, weak=False,
                                         dispatch_uid="conveyor.shutdown_deadline")
