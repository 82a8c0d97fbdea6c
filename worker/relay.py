"""Runs `jobs.relay` in each worker's main process, every `relay_interval` seconds."""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery, bootsteps

log = logging.getLogger("conveyor.relay")


class RelayStep(bootsteps.StartStopStep):  # type: ignore[misc]
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self, c: Any) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._loop, args=(c.app,), name="conveyor-relay",
                                           daemon=True)
            self.thread.start()

    def shutdown(self, c: Any) -> None:
        self.stopping.set()

    def _loop(self, app: Celery) -> None:
        from jobs.client import Client
        from jobs.relay import relay_once

        client = Client(app)
        settings = app.conf.conveyor_settings
        while not self.stopping.wait(settings.relay_interval):
            try:
                n = relay_once(client, grace=settings.relay_grace)
                if n:
                    log.info("relay published %d jobs", n)
            except Exception as exc:  # noqa: BLE001 - database or broker away: next pass
                log.debug("relay pass failed: %s", exc)


def install(app: Celery) -> None:
    app.steps["consumer"].add(RelayStep)
