"""The matching engine: two normalized tables in, every line accounted for in one item out.

A pure function of its inputs (no files, no database): `match(con, ledger, statement, params)`
with an in-memory DuckDB connection for the joins. The rules run in the order of the issue,
each on what the earlier ones left:

0. a line repeating another of its file (same id, date, amount, currency) is a duplicate;
1. `exact` and 2. `reference` (SQL over the whole inputs, see `keyed`); a surplus line of a
   key that paired is a duplicate;
   reference clusters: groups, amount and currency mismatches (`clusters`);
3. `tolerance` for lines without a usable reference, unique candidates only (`tolerance`);
4. `grouped` by date window for statement lines without a reference (`window`);
and whatever is left is a duplicate within its file or missing from the other (`leftovers`).
"""

from __future__ import annotations

import time

import duckdb
import numpy as np
import pyarrow as pa

from tasks.reconciliation.matching import clusters, keyed, leftovers, tolerance, window
from tasks.reconciliation.matching.rows import Rows
from tasks.reconciliation.matching.types import (
    DISCREPANCY_TYPES,
    MATCH_TYPES,
    PAIRS_SCHEMA,
    Item,
    ItemType,
    Outcome,
    Params,
)


def _free(table: pa.Table, *taken: object) -> pa.Table:
    used = np.zeros(table.num_rows, dtype=bool)
    for rids in taken:
        values = np.asarray(rids if not isinstance(rids, (set, dict)) else list(rids), dtype=np.int64)
        if len(values):
            used[values] = True
    return table.filter(pa.array(~used))


def _duplicates(table: pa.Table, side: str, repeats: dict[int, int], why: str) -> list[Item]:
    kind = ItemType.DUPLICATE_IN_LEDGER if side == "ledger" else ItemType.DUPLICATE_IN_STATEMENT
    if not repeats:
        return []
    ids = table["id"]
    out = []
    for rid, of in sorted(repeats.items()):
        reason = f"repeats {side} line {ids[of].as_py()}: {why}"
        ledger_rids, statement_rids = ((rid,), ()) if side == "ledger" else ((), (rid,))
        out.append(Item(kind, ledger_rids, statement_rids, reason))
    return out


def match(con: duckdb.DuckDBPyConnection, ledger: pa.Table, statement: pa.Table, params: Params) -> Outcome:
    """Reconcile two normalized tables (see `normalize.SCHEMA`)."""
    stats: dict[str, float] = {}
    t0 = time.perf_counter()
    id_l, id_s = keyed.repeated_ids(con, ledger), keyed.repeated_ids(con, statement)
    items = _duplicates(ledger, "ledger", id_l, "same id, date, amount and currency") + _duplicates(
        statement, "statement", id_s, "same id, date, amount and currency"
    )
    exact_pairs, dup_l, dup_s = keyed.exact(con, ledger, statement, set(id_l), set(id_s))
    items += _duplicates(
        ledger, "ledger", dup_l, "same reference, amount and currency, and that line is matched"
    ) + _duplicates(
        statement, "statement", dup_s, "same reference, amount and currency, and that line is matched"
    )
    stats["exact_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    l_rest = keyed.with_keys(con, _free(ledger, exact_pairs["l_rid"].to_numpy(), id_l, dup_l))
    s_rest = keyed.with_keys(con, _free(statement, exact_pairs["s_rid"].to_numpy(), id_s, dup_s))
    ref_pairs = keyed.reference(con, l_rest, s_rest, params)
    L, S = Rows(l_rest, "ledger"), Rows(s_rest, "statement")
    L.take(ref_pairs["l_rid"].to_pylist())
    S.take(ref_pairs["s_rid"].to_pylist())
    stats["reference_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    items += clusters.resolve(L, S, params)
    stats["clusters_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    items += tolerance.resolve(con, L, S, params)
    stats["tolerance_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    items += window.resolve(L, S, params)
    items += leftovers.remaining(L, params)
    items += leftovers.remaining(S, params)
    stats["residual_s"] = time.perf_counter() - t0
    pairs = pa.concat_tables([exact_pairs, ref_pairs]).cast(PAIRS_SCHEMA)
    outcome = Outcome(pairs, items, stats)
    check_complete(outcome, ledger.num_rows, statement.num_rows)
    return outcome


def check_complete(outcome: Outcome, n_ledger: int, n_statement: int) -> None:
    """Every line in exactly one item: the engine's invariant, checked on every run."""
    for side, n, bulk in (
        ("ledger", n_ledger, outcome.pairs["l_rid"]),
        ("statement", n_statement, outcome.pairs["s_rid"]),
    ):
        seen = np.bincount(bulk.to_numpy(), minlength=n) if len(bulk) else np.zeros(n, dtype=np.int64)
        extra = [r for item in outcome.items for r in (item.ledger if side == "ledger" else item.statement)]
        if extra:
            seen = seen + np.bincount(np.asarray(extra, dtype=np.int64), minlength=n)
        if len(seen) != n or not (seen == 1).all():
            bad = np.flatnonzero(seen != 1)[:5].tolist()
            raise AssertionError(f"matching lost or repeated {side} rows {bad}; this is a bug")


__all__ = ["DISCREPANCY_TYPES", "MATCH_TYPES", "Item", "ItemType", "Outcome", "Params", "match"]
