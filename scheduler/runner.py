"""Run Celery beat on Conveyor's app with `DatabaseScheduler`, stopping cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

from typing import Any

from celery import platforms
from celery.apps.beat import Beat

SCHEDULER = "scheduler.beat:DatabaseScheduler"


class ConveyorBeat(Beat):  # type: ignore[misc]
    """Celery's beat program, whose signal handlers only ask the loop to stop.

    Celery's own handler syncs the schedule inside the handler and raises SystemExit. Here the
    handler sets the service's shutdown flag; the loop sees it within `max_interval` and then
    closes the scheduler, which writes what it owes and releases the leader lock, so a standby
    takes over at its next tick rather than after the lock expires.
    """

    def install_sync_handler(self, service: Any) -> None:
        def stop(signum: int, frame: Any) -> None:
            service.stop()

        platforms.signals.update(SIGTERM=stop, SIGINT=stop)


def run_beat(app: Any, *, loglevel: str = "INFO", max_interval: float | None = None,
             quiet: bool = False) -> None:
    """Run beat in this process until SIGTERM or Ctrl-C."""
    settings = app.conf.conveyor_settings
    ConveyorBeat(app=app, scheduler=SCHEDULER, loglevel=loglevel, quiet=quiet,
                 max_interval=max_interval or settings.beat_max_interval).run()
