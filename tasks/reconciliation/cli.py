"""`conveyor reconcile LEDGER STATEMENT` and `conveyor recon show|list|presets`. Thin: parse,
check, enqueue or read, print."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from cli import Context, coloured, handle_errors, pass_ctx, print_json, print_table, wait_for, when

_MATCH_TYPES = ("exact", "reference", "tolerance", "grouped")
_DISCREPANCY_TYPES = (
    "missing_in_statement",
    "missing_in_ledger",
    "amount_mismatch",
    "currency_mismatch",
    "duplicate_in_ledger",
    "duplicate_in_statement",
    "ambiguous",
)


def _amounts(values: dict[str, str] | None) -> str:
    return ", ".join(f"{v} {c}".strip() for c, v in sorted((values or {}).items())) or "0.00"


def show_summary(summary: dict[str, Any]) -> None:
    """The summary as tables: what matched and what did not, then the money."""
    lines = summary.get("lines") or {}
    rows = []
    for name in (*_MATCH_TYPES, *_DISCREPANCY_TYPES):
        count = (summary.get("counts") or {}).get(name, 0)
        style = "green" if name in _MATCH_TYPES else ("red" if count else "white")
        rows.append(
            (
                f"[{style}]{name}[/]",
                count,
                (lines.get("ledger") or {}).get(name, 0),
                (lines.get("statement") or {}).get(name, 0),
            )
        )
    title = (
        f"Reconciliation {summary['run_id']}: {summary['ledger']['path']} vs "
        f"{summary['statement']['path']}" + (" (stored run reused)" if summary.get("reused") else "")
    )
    print_table(title, ["type", "items", "ledger lines", "statement lines"], rows)
    totals = summary.get("totals") or {}
    currencies = sorted(set(totals.get("ledger", {})) | set(totals.get("statement", {})))
    print_table(
        "Totals",
        ["currency", "ledger", "statement", "matched", "difference", "unexplained"],
        [
            (
                c or "-",
                totals.get("ledger", {}).get(c),
                totals.get("statement", {}).get(c),
                totals.get("matched", {}).get(c),
                totals.get("difference", {}).get(c),
                totals.get("unexplained", {}).get(c),
            )
            for c in currencies
        ],
    )
    click.echo(f"{summary.get('discrepancies', 0)} discrepancies; report: {summary.get('report_path')}")
    note = summary.get("notification") or {}
    if note.get("status") not in (None, "not_requested"):
        click.echo(
            f"notification: {note.get('status')}"
            + (f" ({note['reason']})" if note.get("reason") else "")
            + (f", job {note['job_id']}" if note.get("job_id") else "")
        )


def _script_summary(summary: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "run_id",
        "status",
        "reused",
        "counts",
        "lines",
        "matches",
        "discrepancies",
        "totals",
        "matched_total",
        "unexplained_difference",
        "report_path",
        "files",
        "notification",
        "ledger",
        "statement",
        "timings",
    )
    return {k: summary.get(k) for k in keys}


@click.command()
@click.argument("ledger")
@click.argument("statement")
@click.option(
    "--mapping",
    metavar="PRESET|JSON|@FILE",
    help="Column mapping: a preset name (see `conveyor recon presets`), a JSON object, or @mapping.json.",
)
@click.option(
    "--date-tolerance",
    type=click.IntRange(0, 366),
    default=None,
    metavar="DAYS",
    help="Days two dates may differ (default CONVEYOR_RECON_DATE_TOLERANCE_DAYS, 3).",
)
@click.option(
    "--amount-tolerance",
    default="0",
    show_default=True,
    metavar="AMOUNT|PCT%",
    help="How far amounts may differ for a match without reference: 0.05 or 0.5%.",
)
@click.option(
    "--notify",
    multiple=True,
    metavar="EMAIL",
    help="Mail the summary and the discrepancies here when there are enough (repeatable).",
)
@click.option("--force", is_flag=True, help="Match again even if the same inputs were reconciled before.")
@click.option("--wait", is_flag=True, help="Wait, with a progress bar, and print the summary.")
@click.option("--timeout", type=float, default=None, help="With --wait: give up after this many seconds.")
@click.option("--json", "as_json", is_flag=True, help="Wait and print the summary as one JSON object.")
@pass_ctx
@handle_errors
def reconcile(
    ctx: Context,
    ledger: str,
    statement: str,
    mapping: str | None,
    date_tolerance: int | None,
    amount_tolerance: str,
    notify: tuple[str, ...],
    force: bool,
    wait: bool,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Reconcile a LEDGER against a bank or processor STATEMENT and report every discrepancy.

    Both files live under the data directory (CONVEYOR_DATA_DIR): CSV or Parquet, and for the
    statement also ISO 20022 camt.053 XML. Lines are matched by reference, then by
    normalized reference, then by amount and date, then as groups (a payout settling
    several ledger lines); everything else is reported: missing on either side, amount or
    currency mismatches, duplicates, ambiguous candidates. The same inputs give the same run.

    \b
    Examples:
      conveyor reconcile ledger.csv statement.csv --wait
      conveyor reconcile ledger.csv camt/2026-10.xml --date-tolerance 5 --wait
      conveyor reconcile books.parquet bank.csv --mapping bank_debit_credit --json
      conveyor reconcile ledger.csv stmt.csv --mapping '{"ledger": {"columns": {"reference": "invoice"}}}'
      conveyor reconcile ledger.csv stmt.csv --amount-tolerance 0.5% --notify finance@example.com --wait
    """
    from tasks.reconciliation.submit import TASK, prepare

    payload = prepare(
        ctx.settings,
        ledger,
        statement,
        mapping=mapping,
        date_tolerance_days=date_tolerance,
        amount_tolerance=amount_tolerance,
        notify=list(notify) or None,
        force=force,
    )
    job = ctx.client.enqueue(TASK, payload, source="cli")
    if not (wait or as_json):
        click.echo(f"enqueued {TASK} as job {job.id}; follow it with: conveyor recon show {job.id}")
        return
    final = wait_for(job, timeout, as_json)
    if final.status != "succeeded":
        if as_json:
            print_json(
                {
                    "job_id": final.id,
                    "status": final.status,
                    "error_type": final.error_type,
                    "error": final.error_message,
                }
            )
        else:
            click.secho(f"reconciliation failed: {final.error_message}", fg="red", err=True)
        sys.exit(1)
    if as_json:
        print_json(_script_summary(final.result))
    else:
        show_summary(final.result)


@click.group()
def recon() -> None:
    """Look at reconciliation runs: their summary, their items, the mapping presets."""


@recon.command("show")
@click.argument("run")
@click.option("--discrepancies", is_flag=True, help="Only the discrepancies, not the matches.")
@click.option(
    "--limit", type=click.IntRange(1, 1_000_000), default=50, show_default=True, help="Items to show."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_ctx
@handle_errors
def recon_show(ctx: Context, run: str, discrepancies: bool, limit: int, as_json: bool) -> None:
    """Show run RUN (its id, a prefix of it, or its job's id): summary and items.

    \b
    Examples:
      conveyor recon show 3e0a471c --discrepancies
      conveyor recon show 3e0a471c --limit 1000 --json > items.json
    """
    from tasks.reconciliation.run import summary_of
    from tasks.reconciliation.store import RunStore

    store = RunStore(ctx.settings.database_url)
    found = store.get(run)
    summary = summary_of(found)
    shown = store.items(found.id, discrepancies=discrepancies, limit=limit)
    if as_json:
        print_json({**summary, "items": [_item(i) for i in shown]})
        return
    if found.status != "succeeded":
        print_table(
            f"Reconciliation {found.id}",
            ["field", "value"],
            [
                ("status", coloured("failed" if found.status == "failed" else "started")),
                ("ledger", found.ledger_path),
                ("statement", found.statement_path),
                ("job", found.job_id),
                ("created", when(found.created_at)),
                ("error", f"{found.error_type}: {found.error}" if found.error else ""),
            ],
        )
        if found.status == "failed":
            sys.exit(1)
        return
    show_summary(summary)
    total = summary["discrepancies"] if discrepancies else store.count_items(found.id)
    print_table(
        f"{'Discrepancies' if discrepancies else 'Items'} ({len(shown)} of {total})",
        [
            "#",
            "type",
            "ledger",
            "statement",
            "ledger amount",
            "statement amount",
            "difference",
            "reference",
            "reason",
        ],
        [
            (
                i.seq,
                i.type,
                "; ".join(i.ledger_ids),
                "; ".join(i.statement_ids),
                i.ledger_amount,
                i.statement_amount,
                i.difference,
                i.reference,
                i.reason,
            )
            for i in shown
        ],
    )


def _item(i: Any) -> dict[str, Any]:
    return {
        "seq": i.seq,
        "type": i.type,
        "kind": i.kind,
        "currency": i.currency,
        "ledger_ids": i.ledger_ids,
        "statement_ids": i.statement_ids,
        "ledger_lines": i.ledger_lines,
        "statement_lines": i.statement_lines,
        "ledger_date": i.ledger_date.isoformat() if i.ledger_date else None,
        "statement_date": i.statement_date.isoformat() if i.statement_date else None,
        "ledger_amount": None if i.ledger_amount is None else str(i.ledger_amount),
        "statement_amount": None if i.statement_amount is None else str(i.statement_amount),
        "difference": None if i.difference is None else str(i.difference),
        "reference": i.reference,
        "reason": i.reason,
    }


@recon.command("list")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_ctx
@handle_errors
def recon_list(ctx: Context, limit: int, as_json: bool) -> None:
    """List recent reconciliation runs, newest first."""
    from tasks.reconciliation.run import summary_of
    from tasks.reconciliation.store import RunStore

    runs = RunStore(ctx.settings.database_url).list(limit)
    if as_json:
        print_json([summary_of(r) for r in runs])
        return
    print_table(
        None,
        ["run", "status", "ledger", "statement", "discrepancies", "unexplained", "created"],
        [
            (
                r.id,
                coloured({"running": "started"}.get(r.status, r.status)),
                r.ledger_path,
                r.statement_path,
                summary_of(r)["discrepancies"] if r.counts else "",
                _amounts(r.unexplained_difference) if r.unexplained_difference else "",
                when(r.created_at),
            )
            for r in runs
        ],
    )


@recon.command("presets")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@handle_errors
def recon_presets(as_json: bool) -> None:
    """List the column-mapping presets `--mapping` accepts, with what each expects."""
    from tasks.reconciliation.presets import PRESETS

    if as_json:
        print_json(PRESETS)
        return
    rows = []
    for name, preset in sorted(PRESETS.items()):
        for side in ("ledger", "statement"):
            layout = preset[side]
            cols = layout.get("columns") or {}
            extra = {k: v for k, v in layout.items() if k not in ("columns", "optional")}
            rows.append(
                (
                    name,
                    side,
                    ", ".join(f"{v}->{k}" for k, v in cols.items()) or "(camt.053 XML)",
                    json.dumps(extra) if extra else "",
                )
            )
    print_table("Mapping presets", ["preset", "side", "columns (source->field)", "options"], rows)
