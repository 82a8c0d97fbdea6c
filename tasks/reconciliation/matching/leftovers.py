"""What no rule matched: duplicates within one file, and lines missing from the other side."""

from __future__ import annotations

from tasks.reconciliation.matching.rows import Rows, money
from tasks.reconciliation.matching.types import Item, ItemType, Params

_DUPLICATE = {"ledger": ItemType.DUPLICATE_IN_LEDGER, "statement": ItemType.DUPLICATE_IN_STATEMENT}
_MISSING = {"ledger": ItemType.MISSING_IN_STATEMENT, "statement": ItemType.MISSING_IN_LEDGER}
_OTHER = {"ledger": "statement", "statement": "ledger"}


def _item(rows: Rows, kind: ItemType, rid: int, reason: str) -> Item:
    if rows.side == "ledger":
        return Item(kind, (rid,), (), reason)
    return Item(kind, (), (rid,), reason)


def remaining(rows: Rows, params: Params) -> list[Item]:
    """Every line still free: a duplicate of an earlier free line of the same file, or missing."""
    first: dict[tuple[object, ...], int] = {}
    items = []
    for rid in rows.free_sorted():
        keys = [("id", rows.id[rid], rows.amount[rid], rows.currency[rid], rows.date[rid])]
        if rows.ref_exact[rid]:
            keys.append(("ref", rows.ref_exact[rid], rows.amount[rid], rows.currency[rid]))
        earlier = next((first[k] for k in keys if k in first), None)
        if earlier is not None:
            same = "id, date" if keys[0] in first else "reference"
            items.append(
                _item(
                    rows,
                    _DUPLICATE[rows.side],
                    rid,
                    f"repeats {rows.side} line {rows.id[earlier]}, which no rule matched either: "
                    f"same {same}, amount and currency",
                )
            )
            continue
        for k in keys:
            first.setdefault(k, rid)
        items.append(_item(rows, _MISSING[rows.side], rid, _missing_reason(rows, rid, params)))
    rows.take(rows.free_sorted())
    return items


def _missing_reason(rows: Rows, rid: int, params: Params) -> str:
    other = _OTHER[rows.side]
    what = money(rows.amount[rid], rows.currency[rid])
    if rows.ref[rid]:
        return (
            f"no {other} line with reference {rows.ref[rid]!r}, nor one of {what} within "
            f"{params.date_tolerance_days} days"
        )
    return f"no reference, and no {other} line of {what} within {params.date_tolerance_days} days"
