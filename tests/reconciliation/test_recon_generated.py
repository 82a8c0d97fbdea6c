"""A generated month with known ground truth, checked count by count."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from samples.reconciliation import generate as gen
from tasks.reconciliation import duck, items, normalize, readers
from tasks.reconciliation.mapping import resolve
from tasks.reconciliation.matching import Params, match

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "reconciliation"


def reconcile_files(ledger: Path, statement: Path) -> dict:
    mapping = resolve("default")
    con = duck.connect(threads=2, memory_limit="512MB")
    lt = normalize.normalize(
        con,
        readers.read(con, ledger, ledger.name, mapping.ledger),
        mapping.ledger,
        ledger=True,
        fee_pattern=r"(?i)\bfees?\b",
    )
    st = normalize.normalize(
        con, readers.read(con, statement, statement.name, mapping.statement), mapping.statement, ledger=False
    )
    outcome = match(con, lt, st, Params())
    return items.summarize(con, outcome, items.build(outcome, lt, st), lt, st)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_generated_month_matches_its_ground_truth(tmp_path, fmt):
    month = gen.generate(units=3000, seed=11)
    paths = gen.write(month, tmp_path, fmt, camt=False)
    summary = reconcile_files(paths["ledger"], paths["statement"])
    truth = json.loads(paths["truth"].read_text())
    assert {k: v for k, v in summary["counts"].items() if v} == truth["counts"]
    assert sum(summary["lines"]["ledger"].values()) == truth["ledger_lines"]
    assert sum(summary["lines"]["statement"].values()) == truth["statement_lines"]
    # the money adds up: what matched plus what is unexplained is the whole difference
    for currency, diff in summary["totals"]["difference"].items():
        assert diff == summary["totals"]["unexplained"][currency]  # tolerance 0: matches differ by nothing


def test_the_sample_month_is_what_the_generator_makes():
    """The committed sample is reproducible (`python samples/reconciliation/generate.py`) and
    holds every kind of match and discrepancy."""
    month = gen.generate()
    with open(SAMPLES / "ledger.csv", newline="") as fh:
        assert [tuple(r) for r in csv.reader(fh)][1:] == [tuple(r) for r in month.ledger]
    with open(SAMPLES / "statement.csv", newline="") as fh:
        assert [tuple(r) for r in csv.reader(fh)][1:] == [tuple(r) for r in month.statement]
    truth = json.loads((SAMPLES / "truth.json").read_text())["counts"]
    assert set(truth) == {
        "exact",
        "reference",
        "tolerance",
        "grouped",
        "missing_in_statement",
        "missing_in_ledger",
        "amount_mismatch",
        "currency_mismatch",
        "duplicate_in_ledger",
        "duplicate_in_statement",
        "ambiguous",
    }
    summary = reconcile_files(SAMPLES / "ledger.csv", SAMPLES / "statement.csv")
    assert {k: v for k, v in summary["counts"].items() if v} == truth
