"""The relay: publishes jobs that are recorded but not yet on the broker.

Two kinds wait in the job store with `published_at` unset:
- jobs enqueued inside an application's transaction (`enqueue(..., session=...)`), normally
  published by the commit hook; the relay publishes those whose process died between the commit
  and the publish (after `grace` seconds, so it does not race a live hook);
- jobs due further out than `hold_threshold`, held here rather than as Celery countdowns, which
  Redis would hand out a second time once they outlast the visibility timeout.

Publishing claims the row first (`published_at` set where it was unset), so any number of
relays and commit hooks publish each job once. Every worker's main process runs a relay.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jobs.client import Client

log = logging.getLogger("conveyor.relay")


def relay_once(client: Client, grace: float = 5.0, limit: int = 500) -> int:
    """Publish what is due; return how many jobs this call published."""
    published = 0
    for job in client.store.due_unpublished(grace, limit):
        try:
            if client.publish_recorded(job):
                published += 1
        except Exception as exc:  # noqa: BLE001 - left unpublished: the next pass tries again
            log.warning("could not publish job %s: %s", job.id, exc)
    return published
