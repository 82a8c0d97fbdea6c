"""One reconciliation run, start to end: resolve inputs, match, report, store, notify.

`execute` is what the `reconciliation.reconcile` task calls; it also runs in-process (tests,
scripts) with no worker. The run is keyed by the inputs' content hashes and everything that
decides the result, so running it again finds the same run: a succeeded run is returned
as it is (unless `force`), a failed or interrupted one is done again.
"""

from __future__ import annotations

import hashlib
import json
import resource
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from config import Settings
from tasks.reconciliation import duck, items, normalize, readers
from tasks.reconciliation.errors import ReconciliationInputError
from tasks.reconciliation.inputs import ReconcileInput
from tasks.reconciliation.mapping import Mapping, resolve
from tasks.reconciliation.matching import Params, match
from tasks.reconciliation.models import ReconRun, RunStatus
from tasks.reconciliation.money import Tolerance
from tasks.reconciliation.notify import notify
from tasks.reconciliation.report import ReportFiles
from tasks.reconciliation.store import RunStore

if TYPE_CHECKING:
    from celery import Celery

#: Bump when a change to the engine may change results: old runs are then not reused.
ENGINE_VERSION = "1"
STEPS = 5

Progress = Callable[[float, float | None, str | None], None]


def _no_progress(current: float, total: float | None = None, message: str | None = None) -> None:
    return None


def parameters(settings: Settings, data: ReconcileInput, mapping: Mapping) -> tuple[Params, dict[str, Any]]:
    days = data.date_tolerance_days
    params = Params(
        date_tolerance_days=settings.recon_date_tolerance_days if days is None else days,
        amount_tolerance=Tolerance.parse(data.amount_tolerance),
        group_max_candidates=settings.recon_group_max_candidates,
    )
    described = {
        **params.as_dict(),
        "fee_pattern": settings.recon_fee_pattern,
        "mapping": mapping.model_dump(mode="json"),
        "engine": ENGINE_VERSION,
    }
    return params, described


def run_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def results_dir(settings: Settings, run_id: str) -> Path:
    return settings.results_dir / "reconciliation" / run_id


def execute(
    settings: Settings,
    data: ReconcileInput,
    *,
    job_id: str | None = None,
    progress: Progress = _no_progress,
    app: Celery | None = None,
) -> dict[str, Any]:
    """Run (or find) the reconciliation `data` describes and return its summary."""
    started = time.perf_counter()
    store = RunStore(settings.database_url)
    mapping = resolve(data.mapping)
    params, described = parameters(settings, data, mapping)
    progress(0, STEPS, "hashing inputs")
    try:
        ledger_path = readers.resolve_path(settings.data_dir, data.ledger)
        statement_path = readers.resolve_path(settings.data_dir, data.statement)
        hashes = readers.sha256_file(ledger_path), readers.sha256_file(statement_path)
    except ReconciliationInputError as exc:
        key = run_key("unreadable", data.ledger, data.statement, described)
        store.start(_row(key, job_id, data, described, (None, None)))
        store.fail(key[:20], type(exc).__name__, str(exc))
        raise
    key = run_key(hashes, described)
    run_id = key[:20]
    existing = store.find(run_id)
    if (
        existing is not None
        and existing.status == RunStatus.SUCCEEDED
        and not data.force
        and existing.report_path
        and Path(existing.report_path).exists()
    ):
        summary = summary_of(existing, reused=True)
        summary["notification"] = _notify(store, app, settings, summary, data, job_id)
        progress(STEPS, STEPS, "done: the same inputs were reconciled before")
        return summary

    store.start(_row(key, job_id, data, described, hashes))
    files = ReportFiles(results_dir(settings, run_id))
    timings: dict[str, float] = {"hash_s": time.perf_counter() - started}
    try:
        summary, item_table = _work(
            settings,
            data,
            mapping,
            params,
            described,
            run_id,
            hashes,
            (ledger_path, statement_path),
            files,
            timings,
            progress,
        )
        progress(4, STEPS, "writing the report and storing items")
        _report_and_store(store, run_id, summary, item_table, files, timings)
        files.commit()
    except Exception as exc:
        files.discard()
        try:
            store.fail(run_id, type(exc).__name__, str(exc))
        except Exception:  # noqa: BLE001 - the original error matters more than recording it
            pass
        raise
    timings["total_s"] = time.perf_counter() - started
    timings["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    summary["timings"] = {k: round(v, 3) for k, v in timings.items()}
    store.set_timings(run_id, summary["timings"])
    summary["notification"] = _notify(store, app, settings, summary, data, job_id)
    progress(STEPS, STEPS, "done")
    return summary


def _work(
    settings: Settings,
    data: ReconcileInput,
    mapping: Mapping,
    params: Params,
    described: dict[str, Any],
    run_id: str,
    hashes: tuple[str, str],
    paths: tuple[Path, Path],
    files: ReportFiles,
    timings: dict[str, float],
    progress: Progress,
) -> tuple[dict[str, Any], Any]:
    con = duck.connect(settings.recon_threads, settings.recon_memory_limit)
    try:
        tables = []
        raws = []
        for step, (side, path, label, side_map) in enumerate(
            (
                ("ledger", paths[0], data.ledger, mapping.ledger),
                ("statement", paths[1], data.statement, mapping.statement),
            ),
            1,
        ):
            progress(step, STEPS, f"reading the {side}")
            t0 = time.perf_counter()
            raw = readers.read(con, path, label, side_map)
            tables.append(
                normalize.normalize(
                    con, raw, side_map, ledger=side == "ledger", fee_pattern=settings.recon_fee_pattern
                )
            )
            raws.append((raw.format, raw.skipped))  # the raw text is no longer needed
            del raw
            timings[f"read_{side}_s"] = time.perf_counter() - t0
        ledger, statement = normalize.align_currencies(tables[0], tables[1], (data.ledger, data.statement))
        progress(3, STEPS, "matching")
        t0 = time.perf_counter()
        outcome = match(con, ledger, statement, params)
        timings["match_s"] = time.perf_counter() - t0
        timings.update({f"match_{k}": v for k, v in outcome.stats.items()})
        t0 = time.perf_counter()
        item_table = items.build(outcome, ledger, statement)
        figures = items.summarize(con, outcome, item_table, ledger, statement)
        timings["items_s"] = time.perf_counter() - t0
    finally:
        con.close()
    summary: dict[str, Any] = {
        "run_id": run_id,
        "status": RunStatus.SUCCEEDED.value,
        "reused": False,
        "ledger": {"path": data.ledger, "sha256": hashes[0], "lines": ledger.num_rows, "format": raws[0][0]},
        "statement": {
            "path": data.statement,
            "sha256": hashes[1],
            "lines": statement.num_rows,
            "format": raws[1][0],
            "skipped_entries": raws[1][1],
        },
        "parameters": described,
        **figures,
        "matched_total": figures["totals"]["matched"],
        "unexplained_difference": figures["totals"]["unexplained"],
        "report_path": str(files.report),
        "files": files.paths(),
    }
    return summary, item_table


def _report_and_store(
    store: RunStore,
    run_id: str,
    summary: dict[str, Any],
    item_table: Any,
    files: ReportFiles,
    timings: dict[str, float],
) -> None:
    """Write the report files (under temporary names) while the items go into the database:
    both are mostly native code, so on two cores they overlap."""
    failure: list[BaseException] = []

    def write() -> None:
        t0 = time.perf_counter()
        try:
            files.write(item_table, summary)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            failure.append(exc)
        timings["report_s"] = time.perf_counter() - t0

    writer = threading.Thread(target=write, name=f"recon-report-{run_id}")
    writer.start()
    t0 = time.perf_counter()
    try:
        store.finish(run_id, _fields(summary), item_table)
    finally:
        writer.join()
    timings["store_s"] = time.perf_counter() - t0
    if failure:
        raise failure[0]


def _row(
    key: str,
    job_id: str | None,
    data: ReconcileInput,
    described: dict[str, Any],
    hashes: tuple[str | None, str | None],
) -> dict[str, Any]:
    return {
        "id": key[:20],
        "key": key,
        "job_id": job_id,
        "ledger_path": data.ledger,
        "statement_path": data.statement,
        "ledger_sha256": hashes[0],
        "statement_sha256": hashes[1],
        "params": described,
        "counts": None,
        "lines": None,
        "totals": None,
        "matched_total": None,
        "unexplained_difference": None,
        "report_path": None,
        "files": None,
        "notification": None,
        "timings": None,
        "ledger_lines": None,
        "statement_lines": None,
    }


def _fields(summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "counts": summary["counts"],
        "lines": summary["lines"],
        "totals": summary["totals"],
        "matched_total": summary["matched_total"],
        "unexplained_difference": summary["unexplained_difference"],
        "report_path": summary["report_path"],
        "files": summary["files"],
        "ledger_lines": summary["ledger"]["lines"],
        "statement_lines": summary["statement"]["lines"],
    }


def _notify(
    store: RunStore,
    app: Celery | None,
    settings: Settings,
    summary: dict[str, Any],
    data: ReconcileInput,
    job_id: str | None,
) -> dict[str, Any]:
    result = notify(app, settings, summary, [str(a) for a in data.notify] if data.notify else None, job_id)
    if result["status"] != "not_requested":
        store.set_notification(summary["run_id"], result)
    return result


def summary_of(run: ReconRun, *, reused: bool = False) -> dict[str, Any]:
    """A stored run as the same summary `execute` returns."""
    counts = run.counts or {}
    from tasks.reconciliation.matching.types import DISCREPANCY_TYPES, MATCH_TYPES

    return {
        "run_id": run.id,
        "status": run.status,
        "reused": reused,
        "ledger": {
            "path": run.ledger_path,
            "sha256": run.ledger_sha256,
            "lines": run.ledger_lines,
            "format": None,
        },
        "statement": {
            "path": run.statement_path,
            "sha256": run.statement_sha256,
            "lines": run.statement_lines,
            "format": None,
        },
        "parameters": run.params,
        "counts": counts,
        "lines": run.lines or {},
        "matches": sum(counts.get(t.value, 0) for t in MATCH_TYPES),
        "discrepancies": sum(counts.get(t.value, 0) for t in DISCREPANCY_TYPES),
        "totals": run.totals or {},
        "matched_total": run.matched_total or {},
        "unexplained_difference": run.unexplained_difference or {},
        "report_path": run.report_path,
        "files": run.files or {},
        "timings": run.timings or {},
        "notification": run.notification,
        "error": run.error,
        "error_type": run.error_type,
        "created_at": run.created_at.isoformat() if run.created_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
    }
