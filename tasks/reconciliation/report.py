"""The run's report files under the results directory, safe to open in a spreadsheet.

`results/reconciliation/<run id>/`:
- `report.csv`: every item (matches and discrepancies), one per row, in report order;
- `discrepancies.csv`: the discrepancy rows only (what a notification attaches);
- `summary.csv` and `summary.json`: inputs, parameters, counts and totals.

A cell a spreadsheet would run as a formula (starting with `=`, `+`, `-`, `@`, tab or carriage
return) is prefixed with a single quote. Plain numbers such as `-12.30` are left alone: a
spreadsheet reads them as numbers, never as formulas, and quoting them would turn every
refund into text. Files are written under temporary names and renamed into place only once
the run is stored (`ReportFiles.commit`), so a failed run leaves no report behind.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from tasks.reconciliation.models import ITEM_COLUMNS

FORMULA_START = r"^[=+\-@\t\r]"
PLAIN_NUMBER = r"^[+-]?[0-9]+(\.[0-9]+)?$"

#: The report has every item column but the run id (one report is one run).
REPORT_COLUMNS = tuple(c for c in ITEM_COLUMNS if c != "run_id")


def escape_cell(value: str | None) -> str | None:
    """One cell made safe for a spreadsheet (the rule `escape_column` applies to a column)."""
    import re

    if value is None or not re.match(FORMULA_START, value) or re.match(PLAIN_NUMBER, value):
        return value
    return "'" + value


def escape_column(column: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    risky = pc.and_(
        pc.match_substring_regex(column, FORMULA_START),
        pc.invert(pc.match_substring_regex(column, PLAIN_NUMBER)),
    )
    return pc.if_else(risky, pc.binary_join_element_wise("'", column, ""), column)


def report_table(items: pa.Table) -> pa.Table:
    """The items as flat, escaped text columns."""
    out: dict[str, Any] = {}
    for name in REPORT_COLUMNS:
        column = items[name]
        if pa.types.is_list(column.type):
            column = pc.binary_join(column.cast(pa.list_(pa.string())), "; ")
        elif not pa.types.is_string(column.type):
            column = column.cast(pa.string())
        out[name] = escape_column(column)
    return pa.table(out)


@dataclass
class ReportFiles:
    """The report of one run, written under temporary names until `commit`."""

    directory: Path
    pending: list[tuple[Path, Path]] = field(default_factory=list)

    @property
    def report(self) -> Path:
        return self.directory / "report.csv"

    @property
    def discrepancies(self) -> Path:
        return self.directory / "discrepancies.csv"

    @property
    def summary_csv(self) -> Path:
        return self.directory / "summary.csv"

    @property
    def summary_json(self) -> Path:
        return self.directory / "summary.json"

    def paths(self) -> dict[str, str]:
        return {
            "report": str(self.report),
            "discrepancies": str(self.discrepancies),
            "summary_csv": str(self.summary_csv),
            "summary_json": str(self.summary_json),
        }

    def _tmp(self, final: Path) -> Path:
        tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        self.pending.append((tmp, final))
        return tmp

    def write(self, items: pa.Table, summary: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        table = report_table(items)
        options = pacsv.WriteOptions(quoting_style="needed")
        pacsv.write_csv(table, self._tmp(self.report), options)
        disc = table.filter(pc.equal(items["kind"], "discrepancy"))
        pacsv.write_csv(disc, self._tmp(self.discrepancies), options)
        with open(self._tmp(self.summary_csv), "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["section", "name", "value"])
            for row in summary_rows(summary):
                writer.writerow([escape_cell(str(v)) for v in row])
        with open(self._tmp(self.summary_json), "w", encoding="utf-8") as fh:
            json.dump(summary, fh, indent=2, default=str)

    def commit(self) -> None:
        for tmp, final in self.pending:
            os.replace(tmp, final)
        self.pending.clear()

    def discard(self) -> None:
        for tmp, _ in self.pending:
            tmp.unlink(missing_ok=True)
        self.pending.clear()


def summary_rows(summary: dict[str, Any]) -> list[tuple[str, str, Any]]:
    rows: list[tuple[str, str, Any]] = [("run", "id", summary.get("run_id"))]
    for side in ("ledger", "statement"):
        info = summary.get(side) or {}
        for key in ("path", "sha256", "lines", "format"):
            rows.append((side, key, info.get(key)))
    for key, value in (summary.get("parameters") or {}).items():
        rows.append(("parameters", key, json.dumps(value) if isinstance(value, dict) else value))
    for key, value in (summary.get("counts") or {}).items():
        rows.append(("items", key, value))
    for side, per_type in (summary.get("lines") or {}).items():
        for key, value in per_type.items():
            if value:
                rows.append((f"{side} lines", key, value))
    for key, per_currency in (summary.get("totals") or {}).items():
        for currency, value in per_currency.items():
            rows.append(("totals", f"{key} {currency}".strip(), value))
    return rows
