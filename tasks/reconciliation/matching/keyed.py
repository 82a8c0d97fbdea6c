"""The bulk rules in SQL: repeated lines, `exact` pairs and `reference` pairs.

These run over the whole inputs (a million lines each), so they are hash joins and hash
aggregates in DuckDB, never sorts of everything; what they leave (a few percent) goes to the
careful rules in Python.
"""

from __future__ import annotations

from collections import defaultdict

import duckdb
import pyarrow as pa

from tasks.reconciliation.matching.types import PAIRS_SCHEMA, ItemType, Params
from tasks.reconciliation.normalize import ref_norm_sql

EXACT_REASON = "same reference, amount and currency"


def _rids(values: list[int] | set[int]) -> pa.Table:
    return pa.table({"rid": pa.array(sorted(values), pa.int32())})


def repeated_ids(con: duckdb.DuckDBPyConnection, table: pa.Table) -> dict[int, int]:
    """Lines that repeat an earlier line of the same file: the same id, date, amount and
    currency (an export that lists one transaction twice). {repeat rid: first rid}."""
    con.register("side_all", table)
    found = con.sql("""
        SELECT rid, min(rid) OVER (PARTITION BY id, date, amount, currency) AS first
        FROM side_all SEMI JOIN (
            SELECT id, date, amount, currency FROM side_all GROUP BY ALL HAVING count(*) > 1
        ) USING (id, date, amount, currency)
    """).fetchall()
    con.unregister("side_all")
    return {int(rid): int(first) for rid, first in found if rid != first}


def exact(
    con: duckdb.DuckDBPyConnection, ledger: pa.Table, statement: pa.Table, skip_l: set[int], skip_s: set[int]
) -> tuple[pa.Table, dict[int, int], dict[int, int]]:
    """Rule 1: the same reference (trimmed, case-insensitive), amount and currency.

    Keys held by one line on each side pair at once. Keys held by several lines pair in date
    order (then file order), so two identical payments on one day both match; a surplus line
    of a key that did pair repeats a matched line and is returned as a duplicate
    ({rid: the matched rid it repeats}), per side."""
    con.register("l_all", ledger)
    con.register("s_all", statement)
    con.register("l_skip", _rids(skip_l))
    con.register("s_skip", _rids(skip_s))
    try:
        for side in ("l", "s"):
            con.sql(f"""
                CREATE OR REPLACE TEMP TABLE {side}k AS
                SELECT rid, date, ref_exact, amount, currency FROM {side}_all
                ANTI JOIN {side}_skip USING (rid) WHERE ref_exact IS NOT NULL
            """)
        con.sql("""
            CREATE OR REPLACE TEMP TABLE mk AS
            SELECT ref_exact, amount, currency FROM lk GROUP BY ALL HAVING count(*) > 1
            UNION SELECT ref_exact, amount, currency FROM sk GROUP BY ALL HAVING count(*) > 1
        """)
        single = con.sql("""
            SELECT l.rid AS l_rid, s.rid AS s_rid FROM lk l JOIN sk s USING (ref_exact, amount, currency)
            ANTI JOIN mk USING (ref_exact, amount, currency)
        """).to_arrow_table()
        multi = con.sql("""
            SELECT 'l' AS side, rid, date, ref_exact, amount, currency
            FROM lk SEMI JOIN mk USING (ref_exact, amount, currency)
            UNION ALL
            SELECT 's', rid, date, ref_exact, amount, currency
            FROM sk SEMI JOIN mk USING (ref_exact, amount, currency)
        """).fetchall()
        con.sql("DROP TABLE lk; DROP TABLE sk; DROP TABLE mk")
    finally:
        for name in ("l_all", "s_all", "l_skip", "s_skip"):
            con.unregister(name)
    pairs_l, pairs_s, dup_l, dup_s = _pair_multi(multi)
    n = single.num_rows + len(pairs_l)
    pairs = pa.table(
        {
            "type": pa.repeat(pa.scalar(ItemType.EXACT.value), n),
            "l_rid": pa.concat_arrays(
                [single["l_rid"].combine_chunks().cast(pa.int32()), pa.array(pairs_l, pa.int32())]
            ),
            "s_rid": pa.concat_arrays(
                [single["s_rid"].combine_chunks().cast(pa.int32()), pa.array(pairs_s, pa.int32())]
            ),
            "reason": pa.repeat(pa.scalar(EXACT_REASON), n),
        },
        schema=PAIRS_SCHEMA,
    )
    return pairs, dup_l, dup_s


def _pair_multi(rows: list[tuple]) -> tuple[list[int], list[int], dict[int, int], dict[int, int]]:
    groups: dict[tuple, dict[str, list[tuple]]] = defaultdict(lambda: {"l": [], "s": []})
    for side, rid, date, ref, amount, currency in rows:
        groups[(ref, amount, currency)][side].append((date, rid))
    pairs_l: list[int] = []
    pairs_s: list[int] = []
    dup_l: dict[int, int] = {}
    dup_s: dict[int, int] = {}
    for key in sorted(groups, key=repr):
        ls, ss = sorted(groups[key]["l"]), sorted(groups[key]["s"])
        k = min(len(ls), len(ss))
        pairs_l += [rid for _, rid in ls[:k]]
        pairs_s += [rid for _, rid in ss[:k]]
        if k:
            dup_l.update({rid: ls[0][1] for _, rid in ls[k:]})
            dup_s.update({rid: ss[0][1] for _, rid in ss[k:]})
    return pairs_l, pairs_s, dup_l, dup_s


def with_keys(con: duckdb.DuckDBPyConnection, table: pa.Table) -> pa.Table:
    """`table` plus `ref_norm` and `batch_norm`, the fully normalized references of rule 2."""
    con.register("side_rest", table)
    out = con.sql(f"""
        SELECT *, {ref_norm_sql("ref")} AS ref_norm, {ref_norm_sql("batch")} AS batch_norm FROM side_rest
    """).to_arrow_table()
    con.unregister("side_rest")
    return out


def reference(
    con: duckdb.DuckDBPyConnection, ledger: pa.Table, statement: pa.Table, params: Params
) -> pa.Table:
    """Rule 2: references equal after full normalization, same amount and currency, dates
    within the tolerance. A line with several such candidates takes the nearest date first
    (the candidates agree on reference, amount and currency, so only dates tell them apart)."""
    con.register("l_free", ledger)
    con.register("s_free", statement)
    cand = con.sql(f"""
        SELECT l.rid AS l_rid, s.rid AS s_rid, abs(datediff('day', l.date, s.date)) AS gap,
               l.ref AS l_ref, s.ref AS s_ref
        FROM l_free l JOIN s_free s
          ON l.ref_norm = s.ref_norm AND l.amount = s.amount AND l.currency = s.currency
        WHERE abs(datediff('day', l.date, s.date)) <= {int(params.date_tolerance_days)}
        ORDER BY gap, l.rid, s.rid
    """).fetchall()
    con.unregister("l_free")
    con.unregister("s_free")
    taken_l: set[int] = set()
    taken_s: set[int] = set()
    rows: dict[str, list[object]] = {"type": [], "l_rid": [], "s_rid": [], "reason": []}
    for l_rid, s_rid, gap, l_ref, s_ref in cand:
        if l_rid in taken_l or s_rid in taken_s:
            continue
        taken_l.add(l_rid)
        taken_s.add(s_rid)
        rows["type"].append(ItemType.REFERENCE.value)
        rows["l_rid"].append(l_rid)
        rows["s_rid"].append(s_rid)
        when = "same day" if gap == 0 else f"{gap} day(s) apart"
        rows["reason"].append(
            f"references {l_ref!r} and {s_ref!r} agree once normalized; same amount and currency; {when}"
        )
    return pa.table(rows, schema=PAIRS_SCHEMA)
