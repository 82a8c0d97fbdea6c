"""Mail the summary (with the discrepancies attached) by chaining an `email.send` job.

The reconciliation never fails because of its notification: what happened (enqueued, below
the threshold, the email task not registered, the broker down) is recorded on the run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from config import Settings
from jobs.errors import InvalidInput, ServiceUnavailable, UnknownTask
from tasks.reconciliation.items import describe

if TYPE_CHECKING:
    from celery import Celery

EMAIL_TASK = "email.send"
TEMPLATE = "reconciliation_report"


def payload(summary: dict[str, Any], to: list[str]) -> dict[str, Any]:
    """The `email.send` payload for a run's summary."""
    n = summary["discrepancies"]
    ledger, statement = summary["ledger"]["path"], summary["statement"]["path"]
    return {
        "to": to,
        "subject": f"Reconciliation {ledger} vs {statement}: {n} discrepanc{'y' if n == 1 else 'ies'}",
        "template": TEMPLATE,
        "context": {
            "run_id": summary["run_id"],
            "ledger": ledger,
            "statement": statement,
            "counts": summary["counts"],
            "totals": {name: describe(amounts) for name, amounts in summary["totals"].items()},
            "unexplained_difference": describe(summary["unexplained_difference"]),
            "report_path": summary["report_path"],
        },
        "attachments": [summary["files"]["discrepancies"]],
    }


def notify(
    app: Celery | None, settings: Settings, summary: dict[str, Any], to: list[str] | None, job_id: str | None
) -> dict[str, Any]:
    """Enqueue the mail if asked for and the discrepancies reach the threshold; say what happened."""
    if not to:
        return {"status": "not_requested"}
    n, threshold = summary["discrepancies"], settings.recon_notify_threshold
    if n < threshold:
        return {"status": "below_threshold", "discrepancies": n, "threshold": threshold, "to": to}
    if app is None:
        return {"status": "skipped", "reason": "not running in a worker", "to": to}
    from jobs.client import Client

    key = f"reconciliation:{summary['run_id']}:{job_id}:mail" if job_id else None
    try:
        job = Client(app).enqueue(EMAIL_TASK, payload(summary, to), source="workflow", idempotency_key=key)
    except UnknownTask:
        return {"status": "skipped", "reason": f"the {EMAIL_TASK} task is not registered", "to": to}
    except (InvalidInput, ServiceUnavailable) as exc:
        return {"status": "failed", "reason": f"{type(exc).__name__}: {exc}", "to": to}
    return {"status": "enqueued", "job_id": job.id, "to": to}
