"""Runs end to end in-process on SQLite and PostgreSQL: the run row, its items, the report, re-runs,
failures that leave nothing half-written, the notification record, the migration."""

from __future__ import annotations

import csv
import json
import shutil
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from tasks.reconciliation.errors import BadValue, InputPathError, MissingColumn
from tasks.reconciliation.inputs import ReconcileInput
from tasks.reconciliation.models import ReconItem, ReconRun
from tasks.reconciliation.run import execute
from tasks.reconciliation.store import RunStore

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "reconciliation"
TRUTH = json.loads((SAMPLES / "truth.json").read_text())


@pytest.fixture
def recon_settings(make_settings, database_url):
    settings = make_settings(database_url=database_url)
    target = settings.data_dir / "reconciliation"
    target.mkdir(parents=True, exist_ok=True)
    for name in ("ledger.csv", "statement.csv", "statement.camt053.xml"):
        shutil.copyfile(SAMPLES / name, target / name)
    return settings


def payload(**over):
    return ReconcileInput(
        **{"ledger": "reconciliation/ledger.csv", "statement": "reconciliation/statement.csv", **over}
    )


def test_a_run_stores_its_summary_items_and_report(recon_settings):
    summary = execute(recon_settings, payload())
    assert {k: v for k, v in summary["counts"].items() if v} == TRUTH["counts"]
    store = RunStore(recon_settings.database_url)
    run = store.get(summary["run_id"])
    assert run.status == "succeeded" and run.counts == summary["counts"]
    assert run.ledger_sha256 and run.statement_sha256 and run.ledger_lines == TRUTH["ledger_lines"]
    assert run.params["date_tolerance_days"] == 3 and run.params["mapping"]["ledger"]["columns"]["id"] == "id"
    assert run.totals == summary["totals"] and run.timings["total_s"] > 0
    n_items = sum(TRUTH["counts"].values())
    assert store.count_items(run.id) == n_items
    disc = store.items(run.id, discrepancies=True)
    assert len(disc) == summary["discrepancies"] and all(i.kind == "discrepancy" for i in disc)
    mismatch = next(i for i in disc if i.type == "amount_mismatch")
    assert isinstance(mismatch.difference, Decimal)
    assert mismatch.difference == mismatch.statement_amount - mismatch.ledger_amount != 0
    grouped = store.items(run.id, limit=n_items)
    group = next(i for i in grouped if i.type == "grouped")
    assert len(group.ledger_ids) >= 2 and len(group.ledger_lines) == len(group.ledger_ids)

    # the report: every item, spreadsheet-safe; the discrepancies alone; the summary
    with open(summary["report_path"], newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == n_items and rows[0]["seq"] == "1"
    assert {r["reference"] for r in rows} >= {
        '\'=HYPERLINK("http://example.invalid","click")',
        "'@SUM(A1:A9)",
        "'+1+1",
        "'-2+3",
    }
    assert not any(v.startswith(("=", "+", "@")) for r in rows for v in r.values() if v)
    assert any(r["difference"].startswith("-") for r in rows)  # plain negative numbers stay numbers
    with open(summary["files"]["discrepancies"], newline="") as fh:
        assert len(list(csv.DictReader(fh))) == summary["discrepancies"]
    assert json.loads(Path(summary["files"]["summary_json"]).read_text())["run_id"] == run.id
    # the unexplained difference is exactly what the discrepancy items leave open
    for currency, value in summary["unexplained_difference"].items():
        open_items = sum(
            (
                Decimal(r["difference"])
                for r in rows
                if r["kind"] == "discrepancy" and r["currency"] == currency
            ),
            Decimal(0),
        )
        mixed = [r for r in rows if "/" in r["currency"]]  # currency mismatches count on both sides
        adjust = sum(
            (Decimal(r["statement_amount"]) for r in mixed if r["currency"].endswith(currency)), Decimal(0)
        ) - sum(
            (Decimal(r["ledger_amount"]) for r in mixed if r["currency"].startswith(currency)), Decimal(0)
        )
        assert Decimal(value) == open_items + adjust


def test_the_same_inputs_give_the_same_run(recon_settings):
    first = execute(recon_settings, payload())
    again = execute(recon_settings, payload())
    assert again["run_id"] == first["run_id"] and again["reused"] and again["counts"] == first["counts"]
    store = RunStore(recon_settings.database_url)
    before = [
        (i.seq, i.type, i.ledger_ids, i.statement_ids, i.difference, i.reason)
        for i in store.items(first["run_id"], limit=10_000)
    ]
    forced = execute(recon_settings, payload(force=True))
    assert forced["run_id"] == first["run_id"] and not forced["reused"]
    after = [
        (i.seq, i.type, i.ledger_ids, i.statement_ids, i.difference, i.reason)
        for i in store.items(first["run_id"], limit=10_000)
    ]
    assert after == before  # recomputed, identical, not doubled
    assert len(store.list()) == 1
    other = execute(recon_settings, payload(date_tolerance_days=5))
    assert other["run_id"] != first["run_id"] and len(store.list()) == 2


def test_camt053_statement_gives_the_same_counts(recon_settings):
    summary = execute(recon_settings, payload(statement="reconciliation/statement.camt053.xml"))
    assert {k: v for k, v in summary["counts"].items() if v} == TRUTH["counts"]
    assert summary["statement"]["format"] == "camt053" and summary["statement"]["skipped_entries"] == 1


@pytest.mark.parametrize(
    "content, error, message",
    [
        (
            "id,date,amount,currency,reference,counterparty\nA,2026-10-01,12.3x,EUR,R,x\n",
            BadValue,
            "reconciliation/bad.csv line 2: amount '12.3x' is not a decimal amount",
        ),
        ("id,date,amount,reference\nA,2026-10-01,1.00,R\n", MissingColumn, "has no column 'currency'"),
    ],
)
def test_bad_input_fails_the_run_and_writes_nothing(recon_settings, content, error, message):
    (recon_settings.data_dir / "reconciliation" / "bad.csv").write_text(content)
    with pytest.raises(error, match=message):
        execute(recon_settings, payload(ledger="reconciliation/bad.csv"))
    store = RunStore(recon_settings.database_url)
    [run] = store.list()
    assert (
        run.status == "failed" and message.split(": ")[-1] in run.error and run.error_type == error.__name__
    )
    assert store.count_items(run.id) == 0
    assert not list((recon_settings.results_dir).rglob("*.csv"))  # no report, not even a temporary one


def test_a_path_outside_the_data_directory_is_a_failed_run(recon_settings, tmp_path):
    (tmp_path / "outside.csv").write_text("id,date,amount,currency,reference\n")
    (recon_settings.data_dir / "escape.csv").symlink_to(tmp_path / "outside.csv")
    with pytest.raises(InputPathError, match="outside the data directory"):
        execute(recon_settings, payload(ledger="escape.csv"))
    [run] = RunStore(recon_settings.database_url).list()
    assert run.status == "failed" and "outside the data directory" in run.error
    with pytest.raises(ValueError, match="relative to it"):
        payload(ledger="../etc/passwd")  # the payload itself refuses it, before any enqueue


def test_the_notification_is_recorded_and_never_fails_the_run(recon_settings):
    from worker.factory import create_app

    app = create_app(recon_settings)
    app.tasks.pop("email.send", None)  # as if the email family were not installed
    summary = execute(recon_settings, payload(notify=["finance@example.com"]), app=app)
    assert summary["notification"] == {
        "status": "skipped",
        "reason": "the email.send task is not registered",
        "to": ["finance@example.com"],
    }
    assert (
        RunStore(recon_settings.database_url).get(summary["run_id"]).notification == summary["notification"]
    )
    quiet = execute(
        recon_settings.model_copy(update={"recon_notify_threshold": 1000}),
        payload(notify=["finance@example.com"], force=True),
        app=app,
    )
    assert quiet["notification"]["status"] == "below_threshold"


@pytest.fixture
def empty_database(database_url, tmp_path):
    """A database with no tables at all, of the same kind as `database_url`."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    from tests.conftest import empty_pg_database

    yield from empty_pg_database("recon_mig")


def test_migration_matches_the_models_and_downgrades(empty_database):
    """Alembic alone makes these tables (checked against the models), and takes them away."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from jobs.db import Base, get_engine
    from jobs.migrate import downgrade, upgrade

    url, ours = empty_database, {"recon_runs", "recon_items"}
    upgrade(url, "0003_reconciliation")
    engine = get_engine(url)
    assert ours <= set(sa.inspect(engine).get_table_names())
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert [d for d in diff if any(t in repr(d) for t in ours)] == []
    downgrade(url, "0003_reconciliation-1")
    assert not ours & set(sa.inspect(engine).get_table_names())
    upgrade(url, "0003_reconciliation")
    assert {ReconRun.__tablename__, ReconItem.__tablename__} <= set(sa.inspect(engine).get_table_names())


def test_make_demo_example_reconciles_the_sample_month(make_settings, sqlite_url):
    """`make demo` calls `demo_setup` and then runs the task's `example` payload."""
    from tasks.reconciliation import demo_setup
    from tasks.reconciliation.task import EXAMPLE
    from tasks.registry import REGISTRY

    settings = make_settings(database_url=sqlite_url)
    assert demo_setup(settings) is None
    assert REGISTRY["reconciliation.reconcile"].example == EXAMPLE
    summary = execute(settings, ReconcileInput(**EXAMPLE))
    assert {k: v for k, v in summary["counts"].items() if v} == TRUTH["counts"]
