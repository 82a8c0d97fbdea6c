"""The residual lines of one side as Python values, looked up by row id (`rid`).

Only lines the bulk rules left over are loaded here (a few percent of a month), so the
careful rules can be plain Python without costing the big inputs anything.
"""

from __future__ import annotations

from datetime import date

import pyarrow as pa

from tasks.reconciliation.money import format_units


class Rows:
    """Column dictionaries keyed by rid, and the set of rids still free."""

    def __init__(self, table: pa.Table, side: str) -> None:
        self.side = side  # "ledger" or "statement"
        data = table.to_pydict()
        rids: list[int] = data["rid"]
        self.order = rids
        self.id: dict[int, str] = dict(zip(rids, data["id"], strict=False))
        self.date: dict[int, date] = dict(zip(rids, data["date"], strict=False))
        self.amount: dict[int, int] = dict(zip(rids, data["amount"], strict=False))
        self.currency: dict[int, str] = dict(zip(rids, data["currency"], strict=False))
        self.ref: dict[int, str | None] = dict(zip(rids, data["ref"], strict=False))
        self.ref_exact: dict[int, str | None] = dict(zip(rids, data["ref_exact"], strict=False))
        self.ref_norm: dict[int, str | None] = dict(zip(rids, data["ref_norm"], strict=False))
        self.batch: dict[int, str | None] = dict(zip(rids, data["batch"], strict=False))
        self.batch_norm: dict[int, str | None] = dict(zip(rids, data["batch_norm"], strict=False))
        self.text: dict[int, str | None] = dict(zip(rids, data["text"], strict=False))
        self.is_fee: dict[int, bool] = dict(zip(rids, data["is_fee"], strict=False))
        self.free: set[int] = set(rids)

    def take(self, rids: list[int] | tuple[int, ...]) -> None:
        self.free.difference_update(rids)

    def free_sorted(self) -> list[int]:
        return sorted(self.free)

    def money(self, rid: int) -> str:
        return f"{format_units(self.amount[rid], self.currency[rid])} {self.currency[rid]}".rstrip()

    def total(self, rids: list[int] | tuple[int, ...]) -> int:
        return sum(self.amount[r] for r in rids)

    def ids(self, rids: list[int] | tuple[int, ...], limit: int = 5) -> str:
        shown = [self.id[r] for r in rids[:limit]]
        more = f" and {len(rids) - limit} more" if len(rids) > limit else ""
        return ", ".join(shown) + more


def money(units: int, currency: str) -> str:
    return f"{format_units(units, currency)} {currency}".rstrip()
