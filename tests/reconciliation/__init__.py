"""Helpers shared by the reconciliation tests: build small inputs, run the engine on them."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa

from tasks.reconciliation import duck, items, normalize
from tasks.reconciliation.mapping import resolve
from tasks.reconciliation.matching import Outcome, Params, match
from tasks.reconciliation.money import Tolerance
from tasks.reconciliation.readers import RawInput

LEDGER_COLUMNS = ("id", "date", "amount", "currency", "reference", "text", "batch")
STATEMENT_COLUMNS = ("id", "date", "amount", "currency", "reference", "text")


def raw(rows: list[dict[str, Any]], columns: tuple[str, ...], label: str = "test.csv") -> RawInput:
    """Rows as the raw table a CSV reader would give (canonical names, text, `_line`)."""
    table = pa.table({c: pa.array([r.get(c) for r in rows], pa.string()) for c in columns})
    table = table.append_column("_line", pa.array(range(2, 2 + len(rows)), pa.int64()))
    return RawInput(Path(label), label, "csv", table, "line")


def L(
    id: str,
    date: str,
    amount: str,
    reference: str | None = None,
    currency: str = "EUR",
    text: str | None = None,
    batch: str | None = None,
) -> dict[str, Any]:
    return {
        "id": id,
        "date": date,
        "amount": amount,
        "currency": currency,
        "reference": reference,
        "text": text,
        "batch": batch,
    }


def S(
    id: str,
    date: str,
    amount: str,
    reference: str | None = None,
    currency: str = "EUR",
    text: str | None = None,
) -> dict[str, Any]:
    return {
        "id": id,
        "date": date,
        "amount": amount,
        "currency": currency,
        "reference": reference,
        "text": text,
    }


class Result:
    """The engine's answer on small inputs, easy to assert on."""

    def __init__(self, outcome: Outcome, table: pa.Table, summary: dict[str, Any]) -> None:
        self.outcome = outcome
        self.table = table
        self.rows = table.to_pylist()
        self.summary = summary
        self.counts = Counter(r["type"] for r in self.rows)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["type"] == kind]

    def pairs(self, kind: str) -> set[tuple[tuple[str, ...], tuple[str, ...]]]:
        return {(tuple(sorted(r["ledger_ids"])), tuple(sorted(r["statement_ids"]))) for r in self.of(kind)}

    def only(self, **expected: int) -> None:
        assert dict(self.counts) == expected, self.describe()

    def describe(self) -> str:
        return "\n".join(
            f"{r['type']}: {r['ledger_ids']} / {r['statement_ids']}: {r['reason']}" for r in self.rows
        )


def reconcile(
    ledger: list[dict[str, Any]],
    statement: list[dict[str, Any]],
    *,
    days: int = 3,
    amount_tolerance: str = "0",
    group_max_candidates: int = 12,
    fee_pattern: str = r"(?i)\bfees?\b",
) -> Result:
    """Run the matching engine (no files, no database) on rows built with `L` and `S`."""
    mapping = resolve("default")
    con = duck.connect(threads=1, memory_limit="256MB")
    try:
        lt = normalize.normalize(
            con,
            raw(ledger, LEDGER_COLUMNS, "ledger.csv"),
            mapping.ledger,
            ledger=True,
            fee_pattern=fee_pattern,
        )
        st = normalize.normalize(
            con, raw(statement, STATEMENT_COLUMNS, "statement.csv"), mapping.statement, ledger=False
        )
        lt, st = normalize.align_currencies(lt, st, ("ledger.csv", "statement.csv"))
        params = Params(days, Tolerance.parse(amount_tolerance), group_max_candidates)
        outcome = match(con, lt, st, params)
        table = items.build(outcome, lt, st)
        summary = items.summarize(con, outcome, table, lt, st)
    finally:
        con.close()
    return Result(outcome, table, summary)
