"""What the chaos tests share: fast recovery settings and a ledger of what became of each job."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from jobs.models import FINISHED

#: Lost-worker recovery in seconds instead of minutes (as in tests/core/test_core_recovery.py).
FAST_RECOVERY = {"recovery_heartbeat_interval": 0.5, "recovery_node_ttl": 3,
                 "recovery_sweep_interval": 1, "recovery_min_age": 2}
#: `testing.not_repeatable` and `testing.charge`, an application's own tasks.
APP_TASKS = ["tests.core.sample_tasks"]


@dataclass(frozen=True)
class Entry:
    """One job's record and attempt history, as the job store has them."""

    id: str
    status: str
    attempts: int
    history: tuple[tuple[str | None, str | None, int | None], ...]  # (reason, outcome, pid)

    @property
    def successes(self) -> int:
        return sum(1 for _, outcome, _ in self.history if outcome == "succeeded")

    @property
    def reasons(self) -> list[str | None]:
        return [reason for reason, _, _ in self.history]

    @property
    def outcomes(self) -> list[str | None]:
        return [outcome for _, outcome, _ in self.history]


def ledger(client: Any, ids: list[str]) -> dict[str, Entry]:
    """Every job of `ids` with its attempts (a job missing from the store raises)."""
    out = {}
    for job_id in ids:
        job = client.get_job(job_id)
        history = tuple((a.reason, a.outcome, a.pid) for a in client.attempts(job_id))
        out[job_id] = Entry(job_id, job.status, job.attempts, history)
    return out


def all_finished(client: Any, ids: list[str]) -> bool:
    return all(client.get_job(i).status in FINISHED for i in ids)


def statuses(book: dict[str, Entry]) -> Counter[str]:
    return Counter(e.status for e in book.values())


def describe(book: dict[str, Entry]) -> str:
    """A readable dump of the jobs that did not end as one clean successful attempt."""
    odd = [e for e in book.values() if e.status != "succeeded" or len(e.history) != 1]
    return "\n".join(f"{e.id[:8]} {e.status} attempts={e.attempts} {list(e.history)}" for e in odd)
