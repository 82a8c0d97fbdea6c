"""Rule 3, `tolerance`: lines with no usable reference, paired by currency, amount (within the
amount tolerance) and date (within the date tolerance) — but only when each has exactly one
candidate. Lines with several candidates are reported as `ambiguous`, one item per connected
group of candidates, never paired by guess.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import duckdb
import pyarrow as pa

from tasks.reconciliation.matching.rows import Rows, money
from tasks.reconciliation.matching.types import Item, ItemType, Params


def _table(rows: Rows) -> pa.Table:
    rids = rows.free_sorted()
    return pa.table(
        {
            "rid": pa.array(rids, pa.int32()),
            "date": pa.array([rows.date[r] for r in rids], pa.date32()),
            "amount": pa.array([rows.amount[r] for r in rids], pa.int64()),
            "currency": pa.array([rows.currency[r] for r in rids], pa.string()),
        }
    )


def candidates(con: duckdb.DuckDBPyConnection, L: Rows, S: Rows, params: Params) -> list[tuple[int, int]]:
    """Every (ledger rid, statement rid) that rule 3 would accept, ignoring uniqueness."""
    if not L.free or not S.free:
        return []
    con.register("l_tol", _table(L))
    con.register("s_tol", _table(S))
    days = int(params.date_tolerance_days)
    tol = params.amount_tolerance
    if tol.exact:
        on = "l.amount = s.amount"
    else:
        if tol.percent is not None:
            num, den = tol.percent.as_integer_ratio()
            delta = f"((abs(l.amount)::HUGEINT * {num} + {100 * den - 1}) // {100 * den})"
        else:
            delta = str(tol.units)
        on = (
            f"s.amount BETWEEN l.amount - {delta} AND l.amount + {delta} "
            f"AND {tol.sql('l.amount', 's.amount')}"
        )
    pairs = con.sql(f"""
        SELECT l.rid, s.rid FROM l_tol l JOIN s_tol s
          ON l.currency = s.currency AND {on}
         AND s.date BETWEEN l.date - INTERVAL {days} DAY AND l.date + INTERVAL {days} DAY
        ORDER BY l.rid, s.rid
    """).fetchall()
    con.unregister("l_tol")
    con.unregister("s_tol")
    return [(int(a), int(b)) for a, b in pairs]


def resolve(con: duckdb.DuckDBPyConnection, L: Rows, S: Rows, params: Params) -> list[Item]:
    """Pair the unique candidates; report the rest as ambiguous groups."""
    pairs = candidates(con, L, S, params)
    l_deg = Counter(a for a, _ in pairs)
    s_deg = Counter(b for _, b in pairs)
    items: list[Item] = []
    contested: list[tuple[int, int]] = []
    for lr, s in pairs:
        if l_deg[lr] == 1 and s_deg[s] == 1:
            items.append(Item(ItemType.TOLERANCE, (lr,), (s,), _reason(L, S, lr, s)))
            L.take([lr])
            S.take([s])
        else:
            contested.append((lr, s))
    items.extend(_ambiguous(L, S, contested, params))
    return items


def _reason(L: Rows, S: Rows, lr: int, s: int) -> str:
    gap = abs((L.date[lr] - S.date[s]).days)
    diff = S.amount[s] - L.amount[lr]
    parts = ["the only candidate on both sides"]
    parts.append("same amount" if diff == 0 else f"amounts differ by {money(diff, L.currency[lr])}")
    parts.append("same day" if gap == 0 else f"{gap} day(s) apart")
    if L.ref[lr] or S.ref[s]:
        parts.append(f"references {L.ref[lr] or '(none)'!r} / {S.ref[s] or '(none)'!r} match nothing")
    return "; ".join(parts)


def _ambiguous(L: Rows, S: Rows, edges: list[tuple[int, int]], params: Params) -> list[Item]:
    """One `ambiguous` item per connected component of the contested candidate pairs."""
    parent: dict[tuple[str, int], tuple[str, int]] = {}

    def find(x: tuple[str, int]) -> tuple[str, int]:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for lr, s in edges:
        a, b = find(("l", lr)), find(("s", s))
        if a != b:
            parent[max(a, b)] = min(a, b)
    groups: dict[tuple[str, int], list[tuple[str, int]]] = defaultdict(list)
    for node in list(parent):
        groups[find(node)].append(node)
    items = []
    for nodes in sorted(groups.values(), key=lambda g: sorted(g)):
        ls = sorted(r for side, r in nodes if side == "l")
        ss = sorted(r for side, r in nodes if side == "s")
        currency = L.currency[ls[0]]
        amounts = sorted(
            {money(L.amount[r], currency) for r in ls} | {money(S.amount[r], currency) for r in ss}
        )
        items.append(
            Item(
                ItemType.AMBIGUOUS,
                tuple(ls),
                tuple(ss),
                f"{len(ls)} ledger and {len(ss)} statement line(s) without a usable reference could pair "
                f"({', '.join(amounts[:4])}, within {params.date_tolerance_days} days): more than one "
                "candidate, not guessed",
            )
        )
        L.take(ls)
        S.take(ss)
    return items
