"""Lines that share a reference but did not pair one to one: groups, amount and currency mismatches.

A cluster is every free statement line with one normalized reference, and every free ledger
line that carries it, in its reference column or in its payout/batch column. What the
cluster then is follows from its sums:

- one currency, equal sums: a `grouped` match (a payout settling several ledger lines, or
  an invoice paid in parts); a single pair linked through the payout column is a
  `reference` match;
- one currency, a statement payout short of its ledger lines by exactly one free fee line
  (a negative ledger line whose text matches the fee pattern, in the date window): `grouped`,
  net of that fee;
- otherwise an `amount_mismatch` (both totals and the difference), or a `currency_mismatch`.

A single pair with equal amounts whose references agree only once normalized, but whose
dates are further apart than the tolerance, is not matched (rule 2 needs the dates): both
lines are reported missing, each naming the other.
"""

from __future__ import annotations

from collections import defaultdict

from tasks.reconciliation.matching.rows import Rows, money
from tasks.reconciliation.matching.types import Item, ItemType, Params


def _keys(L: Rows, S: Rows) -> tuple[dict[str, list[int]], dict[str, list[int]], set[int]]:
    s_by_key: dict[str, list[int]] = defaultdict(list)
    for rid in S.free_sorted():
        key = S.ref_norm[rid]
        if key:
            s_by_key[key].append(rid)
    l_by_key: dict[str, list[int]] = defaultdict(list)
    linked_by_batch: set[int] = set()
    for rid in L.free_sorted():
        ref, batch = L.ref_norm[rid], L.batch_norm[rid]
        if ref and ref in s_by_key:
            l_by_key[ref].append(rid)
        elif batch and batch in s_by_key:
            l_by_key[batch].append(rid)
            linked_by_batch.add(rid)
    return l_by_key, s_by_key, linked_by_batch


class FeeLines:
    """Free ledger fee lines outside every cluster, by (currency, amount)."""

    def __init__(self, L: Rows, exclude: set[int]) -> None:
        self.L = L
        self.by_amount: dict[tuple[str, int], list[int]] = defaultdict(list)
        for rid in L.free_sorted():
            if L.is_fee[rid] and rid not in exclude:
                self.by_amount[(L.currency[rid], L.amount[rid])].append(rid)

    def find(self, currency: str, amount: int, near: object, days: int) -> tuple[int | None, list[int]]:
        """The one free fee line of `amount` nearest to `near` within `days`; (None, ties) if
        several are equally near, (None, []) if there is none."""
        L = self.L
        found = [
            r
            for r in self.by_amount.get((currency, amount), ())
            if r in L.free and abs((L.date[r] - near).days) <= days
        ]  # type: ignore[operator]
        if not found:
            return None, []
        found.sort(key=lambda r: (abs((L.date[r] - near).days), r))  # type: ignore[operator]
        best = abs((L.date[found[0]] - near).days)  # type: ignore[operator]
        ties = [r for r in found if abs((L.date[r] - near).days) == best]  # type: ignore[operator]
        return (found[0], []) if len(ties) == 1 else (None, ties)


def resolve(L: Rows, S: Rows, params: Params) -> list[Item]:
    """Turn every reference cluster into items, taking its lines out of the free pool."""
    l_by_key, s_by_key, by_batch = _keys(L, S)
    keys = [k for k in s_by_key if k in l_by_key]
    keys.sort(key=lambda k: (min(S.date[r] for r in s_by_key[k]), min(s_by_key[k])))
    members = {r for k in keys for r in l_by_key[k]}
    fees = FeeLines(L, members)
    items: list[Item] = []
    for key in keys:
        ls, ss = l_by_key[key], s_by_key[key]
        items.extend(_cluster(L, S, ls, ss, key, by_batch, fees, params))
        L.take(ls)
        S.take(ss)
    return items


def _cluster(
    L: Rows,
    S: Rows,
    ls: list[int],
    ss: list[int],
    key: str,
    by_batch: set[int],
    fees: FeeLines,
    params: Params,
) -> list[Item]:
    label = f"reference {S.ref[ss[0]] or key!r}"
    currencies = {L.currency[r] for r in ls} | {S.currency[r] for r in ss}
    if len(currencies) > 1:
        left = ", ".join(sorted({L.currency[r] for r in ls}))
        right = ", ".join(sorted({S.currency[r] for r in ss}))
        return [
            Item(
                ItemType.CURRENCY_MISMATCH,
                tuple(ls),
                tuple(ss),
                f"{label}: the ledger says {left}, the statement {right}",
            )
        ]
    currency = currencies.pop()
    l_total, s_total = L.total(ls), S.total(ss)
    days = params.date_tolerance_days
    if l_total == s_total:
        if len(ls) == 1 and len(ss) == 1:
            return _single(L, S, ls[0], ss[0], label, by_batch, days)
        fee_note = [r for r in ls if L.amount[r] < 0 and L.is_fee[r]]
        note = f", including fee line {L.ids(fee_note)}" if fee_note else ""
        return [
            Item(
                ItemType.GROUPED,
                tuple(ls),
                tuple(ss),
                f"{label}: {len(ls)} ledger line(s) and {len(ss)} statement line(s) "
                f"both total {money(s_total, currency)}{note}",
            )
        ]
    if len(ss) == 1 and (len(ls) > 1 or ls[0] in by_batch):
        fee, ties = fees.find(currency, s_total - l_total, S.date[ss[0]], days)
        if fee is not None:
            L.take([fee])
            return [
                Item(
                    ItemType.GROUPED,
                    (*ls, fee),
                    tuple(ss),
                    f"{label}: {len(ls)} ledger line(s) total {money(l_total, currency)}; net of fee "
                    f"line {L.id[fee]} ({money(L.amount[fee], currency)}) they settle "
                    f"{money(s_total, currency)}",
                )
            ]
        if ties:
            L.take(ties)
            return [
                Item(
                    ItemType.AMBIGUOUS,
                    (*ls, *ties),
                    tuple(ss),
                    f"{label}: {len(ls)} ledger line(s) total {money(l_total, currency)}; "
                    f"{len(ties)} fee lines of {money(s_total - l_total, currency)} could net them "
                    f"to {money(s_total, currency)}; not guessed",
                )
            ]
    return [
        Item(
            ItemType.AMOUNT_MISMATCH,
            tuple(ls),
            tuple(ss),
            f"{label}: ledger {money(l_total, currency)} ({len(ls)} line(s)), statement "
            f"{money(s_total, currency)} ({len(ss)} line(s)), difference "
            f"{money(s_total - l_total, currency)}",
        )
    ]


def _single(L: Rows, S: Rows, lr: int, s: int, label: str, by_batch: set[int], days: int) -> list[Item]:
    gap = abs((L.date[lr] - S.date[s]).days)
    if gap <= days:
        how = (
            f"the statement reference equals the ledger line's payout/batch id {L.batch[lr]!r}"
            if lr in by_batch
            else "references agree once normalized"
        )
        return [
            Item(
                ItemType.REFERENCE,
                (lr,),
                (s,),
                f"{label}: {how}; same amount and currency; "
                + ("same day" if gap == 0 else f"{gap} day(s) apart"),
            )
        ]
    why = f"{gap} days apart, more than the {days}-day tolerance"
    return [
        Item(
            ItemType.MISSING_IN_STATEMENT,
            (lr,),
            (),
            f"{label} and amount agree with statement line {S.id[s]}, but {why}",
        ),
        Item(
            ItemType.MISSING_IN_LEDGER,
            (),
            (s,),
            f"{label} and amount agree with ledger line {L.id[lr]}, but {why}",
        ),
    ]
