"""Rule 4 without a reference: a statement line settled by a set of ledger lines in its date window.

Sets are tried in order of how natural they are, and a set is only taken when it is the
only one that adds up exactly:

1. natural sets of free ledger lines (two or more, one currency): all lines of one
   counterparty on one day, all lines of one day, all lines of one counterparty (spanning no
   more than the window) — a card terminal's daily settlement, a day's batch deposit;
2. failing those, any subset of the free ledger lines in the window, searched only when there
   are at most `group_max_candidates` of them (an exhaustive, meet-in-the-middle search).

Two different sets that fit, or two statement lines wanting the same ledger lines, make the
lines `ambiguous` instead.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from datetime import date, timedelta
from itertools import combinations

from tasks.reconciliation.matching.rows import Rows, money
from tasks.reconciliation.matching.types import Item, ItemType, Params

Proposal = tuple[frozenset[int], str]


def _natural_sets(L: Rows, span: int) -> dict[tuple[str, int], list[Proposal]]:
    by_party_day: dict[tuple[str, date, str], list[int]] = defaultdict(list)
    by_day: dict[tuple[str, date], list[int]] = defaultdict(list)
    by_party: dict[tuple[str, str], list[int]] = defaultdict(list)
    for rid in L.free_sorted():
        cur, day, party = L.currency[rid], L.date[rid], L.text[rid]
        by_day[(cur, day)].append(rid)
        if party:
            by_party_day[(cur, day, party)].append(rid)
            by_party[(cur, party)].append(rid)
    index: dict[tuple[str, int], list[Proposal]] = defaultdict(list)

    def add(cur: str, rids: list[int], why: str) -> None:
        if len(rids) >= 2:
            index[(cur, L.total(rids))].append((frozenset(rids), why))

    for (cur, day, party), rids in by_party_day.items():
        add(cur, rids, f"all {len(rids)} free ledger lines of {party!r} on {day}")
    for (cur, day), rids in by_day.items():
        add(cur, rids, f"all {len(rids)} free ledger lines of {day}")
    for (cur, party), rids in by_party.items():
        days = [L.date[r] for r in rids]
        if (max(days) - min(days)).days <= span:
            add(cur, rids, f"all {len(rids)} free ledger lines of {party!r}")
    return index


def _subsets(amounts: list[int], target: int, limit: int = 2) -> list[tuple[int, ...]]:
    """Index sets (two or more members) of `amounts` summing to `target`; at most `limit`."""
    n = len(amounts)
    half = n // 2
    left, right = list(range(half)), list(range(half, n))
    sums: dict[int, list[tuple[int, ...]]] = defaultdict(list)
    for k in range(len(left) + 1):
        for combo in combinations(left, k):
            sums[sum(amounts[i] for i in combo)].append(combo)
    found: list[tuple[int, ...]] = []
    for k in range(len(right) + 1):
        for combo in combinations(right, k):
            for other in sums.get(target - sum(amounts[i] for i in combo), ()):
                chosen = other + combo
                if len(chosen) >= 2:
                    found.append(chosen)
                    if len(found) >= limit:
                        return found
    return found


def resolve(L: Rows, S: Rows, params: Params) -> list[Item]:
    days = params.date_tolerance_days
    index = _natural_sets(L, 2 * days)
    by_currency: dict[str, list[tuple[date, int]]] = defaultdict(list)
    for rid in L.free_sorted():
        by_currency[L.currency[rid]].append((L.date[rid], rid))
    for dates in by_currency.values():
        dates.sort()

    wanted: dict[int, list[Proposal]] = {}
    for s in sorted(S.free, key=lambda r: (S.date[r], r)):
        cur, amount, day = S.currency[s], S.amount[s], S.date[s]
        lo, hi = day - timedelta(days=days), day + timedelta(days=days)
        found = {
            members: why
            for members, why in index.get((cur, amount), ())
            if all(lo <= L.date[r] <= hi for r in members)
        }
        if not found and params.group_max_candidates >= 2:
            dated = by_currency.get(cur, [])
            start = bisect.bisect_left(dated, (lo, -1))
            stop = bisect.bisect_right(dated, (hi, 1 << 62))
            if 2 <= stop - start <= params.group_max_candidates:
                pool = [rid for _, rid in dated[start:stop]]
                for combo in _subsets([L.amount[r] for r in pool], amount):
                    members = frozenset(pool[i] for i in combo)
                    found[members] = f"the only set of free ledger lines within {days} days adding up"
        if found:
            wanted[s] = list(found.items())
    return _settle(L, S, wanted)


def _settle(L: Rows, S: Rows, wanted: dict[int, list[Proposal]]) -> list[Item]:
    """Accept each statement line's single proposal unless another line wants the same ledger lines."""
    claims: dict[int, set[int]] = defaultdict(set)
    for s, proposals in wanted.items():
        for members, _ in proposals:
            for r in members:
                claims[r].add(s)
    items: list[Item] = []
    done: set[int] = set()
    for s in sorted(wanted, key=lambda r: (S.date[r], r)):
        if s in done:
            continue
        proposals = wanted[s]
        rivals = {o for members, _ in proposals for r in members for o in claims[r]}
        cur = S.currency[s]
        if len(proposals) == 1 and rivals == {s}:
            members, why = proposals[0]
            ls = tuple(sorted(members))
            items.append(
                Item(ItemType.GROUPED, ls, (s,), f"no reference; {why} to {money(S.amount[s], cur)}")
            )
            L.take(ls)
            S.take([s])
            done.add(s)
            continue
        ss = sorted(rivals - done)
        ls = sorted({r for o in ss for members, _ in wanted[o] for r in members} & L.free)
        items.append(
            Item(
                ItemType.AMBIGUOUS,
                tuple(ls),
                tuple(ss),
                f"no reference; {sum(len(wanted[o]) for o in ss)} different sets of ledger "
                f"lines could settle {len(ss)} statement line(s) of "
                f"{', '.join(money(S.amount[o], cur) for o in ss[:3])}: not guessed",
            )
        )
        L.take(ls)
        S.take(ss)
        done.update(ss)
    return items
