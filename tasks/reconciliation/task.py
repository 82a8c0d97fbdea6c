"""The `reconciliation.reconcile` task: validate, run (see `run.execute`), return the summary."""

from __future__ import annotations

from typing import Any

from tasks.reconciliation.inputs import ReconcileInput
from tasks.reconciliation.run import execute
from tasks.registry import job
from worker.base import ConveyorTask

#: What `make demo` runs: the sample month (copied into the data directory by `demo_setup`).
EXAMPLE = {
    "ledger": "reconciliation/ledger.csv",
    "statement": "reconciliation/statement.csv",
    "mapping": "default",
    "date_tolerance_days": 3,
    "amount_tolerance": "0",
    "notify": None,
}


@job("reconciliation.reconcile", input=ReconcileInput, example=EXAMPLE, max_retries=3)
def reconcile(task: ConveyorTask, data: ReconcileInput) -> dict[str, Any]:
    """Match a ledger against a bank or processor statement and report every discrepancy."""
    return execute(task.settings, data, job_id=task.request.id, progress=task.progress, app=task.app)
