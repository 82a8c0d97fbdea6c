"""From the engine's outcome to the run's items table and its summary figures.

The items table has one row per match or discrepancy, amounts as exact decimal strings, in
report order: discrepancies first (by type), then matches, each by date. It is built with
Arrow kernels (the bulk 1:1 matches are a million rows; only the residual items are Python).
The summary counts items and lines per type and totals each side per currency; the
`unexplained` difference is what the discrepancies leave open: statement minus ledger over
the lines of discrepancy items.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.reconciliation.matching.types import DISCREPANCY_TYPES, MATCH_TYPES, Item, ItemType, Outcome
from tasks.reconciliation.money import format_units, units_to_text

ORDER = [*DISCREPANCY_TYPES, *MATCH_TYPES]
TYPE_INDEX = {t.value: i for i, t in enumerate(ORDER)}
_MATCHES = pa.array([t.value for t in MATCH_TYPES])

ITEM_SCHEMA = pa.schema(
    [
        ("seq", pa.int32()),
        ("type", pa.string()),
        ("kind", pa.string()),
        ("currency", pa.string()),
        ("ledger_ids", pa.list_(pa.string())),
        ("statement_ids", pa.list_(pa.string())),
        ("ledger_lines", pa.list_(pa.int64())),
        ("statement_lines", pa.list_(pa.int64())),
        ("ledger_date", pa.date32()),
        ("statement_date", pa.date32()),
        ("ledger_amount", pa.string()),
        ("statement_amount", pa.string()),
        ("difference", pa.string()),
        ("reference", pa.string()),
        ("reason", pa.string()),
    ]
)

#: The items before ordering: amounts still integer units, plus the sort keys.
_RAW_SCHEMA = pa.schema(
    [
        ("type", pa.string()),
        ("currency", pa.string()),
        ("ledger_ids", pa.list_(pa.string())),
        ("statement_ids", pa.list_(pa.string())),
        ("ledger_lines", pa.list_(pa.int64())),
        ("statement_lines", pa.list_(pa.int64())),
        ("ledger_date", pa.date32()),
        ("statement_date", pa.date32()),
        ("ledger_amount", pa.int64()),
        ("statement_amount", pa.int64()),
        ("difference", pa.int64()),
        ("reference", pa.string()),
        ("reason", pa.string()),
        ("order", pa.int8()),
        ("first_s", pa.int64()),
        ("first_l", pa.int64()),
    ]
)


def _lists(values: pa.Array, valid: np.ndarray) -> pa.ListArray:
    """One-element lists where `valid`, empty lists elsewhere."""
    offsets = np.zeros(len(valid) + 1, dtype=np.int32)
    np.cumsum(valid, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), values.filter(pa.array(valid)))


def _simple(
    types: pa.Array,
    l_rid: pa.Array,
    s_rid: pa.Array,
    reasons: pa.Array,
    ledger: pa.Table,
    statement: pa.Table,
) -> pa.Table:
    """Items of at most one line per side (the 1:1 matches, missing lines, duplicates) as item
    rows, all with Arrow kernels: there are a million of them in a big month."""
    cols = ["id", "line", "date", "amount", "currency", "ref"]
    L = ledger.select(cols).take(l_rid).combine_chunks()
    S = statement.select(cols).take(s_rid).combine_chunks()
    has_l = l_rid.is_valid().to_numpy(zero_copy_only=False)
    has_s = s_rid.is_valid().to_numpy(zero_copy_only=False)
    encoded = types.dictionary_encode()
    codes = np.array([TYPE_INDEX[t] for t in encoded.dictionary.to_pylist()], dtype=np.int8)
    order = codes[encoded.indices.to_numpy()] if len(types) else np.zeros(0, dtype=np.int8)

    def col(table: pa.Table, name: str) -> pa.Array:
        return table[name].combine_chunks()

    l_cur, s_cur = col(L, "currency"), col(S, "currency")
    differ = pc.fill_null(pc.not_equal(l_cur, s_cur), False)  # a 1:1 currency mismatch
    difference = pc.subtract(pc.fill_null(col(S, "amount"), 0), pc.fill_null(col(L, "amount"), 0))
    return pa.table(
        {
            "type": types,
            "currency": pc.if_else(
                differ, pc.binary_join_element_wise(l_cur, s_cur, "/"), pc.coalesce(l_cur, s_cur)
            ),
            "ledger_ids": _lists(col(L, "id"), has_l),
            "statement_ids": _lists(col(S, "id"), has_s),
            "ledger_lines": _lists(col(L, "line"), has_l),
            "statement_lines": _lists(col(S, "line"), has_s),
            "ledger_date": col(L, "date"),
            "statement_date": col(S, "date"),
            "ledger_amount": col(L, "amount"),
            "statement_amount": col(S, "amount"),
            "difference": pc.if_else(differ, pa.scalar(None, pa.int64()), difference),
            "reference": pc.coalesce(col(L, "ref"), col(S, "ref")),
            "reason": reasons,
            "order": pa.array(order, pa.int8()),
            "first_s": pc.cast(s_rid, pa.int64()),
            "first_l": pc.cast(l_rid, pa.int64()),
        },
        schema=_RAW_SCHEMA,
    )


def _bulk(outcome: Outcome, ledger: pa.Table, statement: pa.Table, simple: list[Item]) -> pa.Table:
    pairs = outcome.pairs.combine_chunks()
    extra = pa.table(
        {
            "type": pa.array([i.type.value for i in simple], pa.string()),
            "l_rid": pa.array([i.ledger[0] if i.ledger else None for i in simple], pa.int32()),
            "s_rid": pa.array([i.statement[0] if i.statement else None for i in simple], pa.int32()),
            "reason": pa.array([i.reason for i in simple], pa.string()),
        }
    )
    both = pa.concat_tables([pairs, extra.cast(pairs.schema)]).combine_chunks()
    return _simple(
        both["type"].chunk(0) if both.num_rows else pa.array([], pa.string()),
        both["l_rid"].chunk(0) if both.num_rows else pa.array([], pa.int32()),
        both["s_rid"].chunk(0) if both.num_rows else pa.array([], pa.int32()),
        both["reason"].chunk(0) if both.num_rows else pa.array([], pa.string()),
        ledger,
        statement,
    )


def _per_item(multi: list[Item], table: pa.Table, side: str) -> dict[str, list[Any]]:
    """Per item of `multi`: its lines' ids, line numbers, earliest date, total, currencies and
    first reference on one side, aggregated by Arrow (one exploded table, one group-by)."""
    rids = [r for item in multi for r in (item.ledger if side == "ledger" else item.statement)]
    owner = [k for k, item in enumerate(multi) for _ in (item.ledger if side == "ledger" else item.statement)]
    n = len(multi)
    out: dict[str, list[Any]] = {
        "ids": [[] for _ in range(n)],
        "lines": [[] for _ in range(n)],
        "date": [None] * n,
        "amount": [None] * n,
        "currencies": [[] for _ in range(n)],
        "ref": [None] * n,
    }
    if not rids:
        return out
    part = table.select(["id", "line", "date", "amount", "currency", "ref"]).take(pa.array(rids, pa.int64()))
    part = part.append_column("item", pa.array(owner, pa.int32()))
    grouped = (
        part.group_by("item", use_threads=False)
        .aggregate(
            [
                ("id", "list"),
                ("line", "list"),
                ("date", "min"),
                ("amount", "sum"),
                ("currency", "distinct"),
                ("ref", "first"),
            ]
        )
        .to_pydict()
    )
    for k, ids, lines, date, amount, currencies, ref in zip(
        grouped["item"],
        grouped["id_list"],
        grouped["line_list"],
        grouped["date_min"],
        grouped["amount_sum"],
        grouped["currency_distinct"],
        grouped["ref_first"],
        strict=False,
    ):
        out["ids"][k], out["lines"][k], out["date"][k] = ids, lines, date
        out["amount"][k], out["currencies"][k], out["ref"][k] = amount, sorted(currencies), ref
    return out


def _residual(multi: list[Item], ledger: pa.Table, statement: pa.Table) -> pa.Table:
    """Items of several lines on a side (groups, mismatches, ambiguities) as item rows."""
    lv, sv = _per_item(multi, ledger, "ledger"), _per_item(multi, statement, "statement")
    cols: dict[str, list[Any]] = defaultdict(list)
    for k, item in enumerate(multi):
        lcur, scur = lv["currencies"][k], sv["currencies"][k]
        l_amount, s_amount = lv["amount"][k], sv["amount"][k]
        single = len(set(lcur) | set(scur)) <= 1
        cols["currency"].append((lcur or scur or [""])[0] if single else f"{'+'.join(lcur)}/{'+'.join(scur)}")
        cols["difference"].append((s_amount or 0) - (l_amount or 0) if single else None)
        refs = (sv["ref"][k], lv["ref"][k]) if item.type is ItemType.GROUPED else (lv["ref"][k], sv["ref"][k])
        cols["reference"].append(refs[0] or refs[1])
        cols["first_s"].append(min(item.statement) if item.statement else None)
        cols["first_l"].append(min(item.ledger) if item.ledger else None)
    return pa.table(
        {
            "type": pa.array([i.type.value for i in multi], pa.string()),
            "currency": pa.array(cols["currency"], pa.string()),
            "ledger_ids": pa.array(lv["ids"], pa.list_(pa.string())),
            "statement_ids": pa.array(sv["ids"], pa.list_(pa.string())),
            "ledger_lines": pa.array(lv["lines"], pa.list_(pa.int64())),
            "statement_lines": pa.array(sv["lines"], pa.list_(pa.int64())),
            "ledger_date": pa.array(lv["date"], pa.date32()),
            "statement_date": pa.array(sv["date"], pa.date32()),
            "ledger_amount": pa.array(lv["amount"], pa.int64()),
            "statement_amount": pa.array(sv["amount"], pa.int64()),
            "difference": pa.array(cols["difference"], pa.int64()),
            "reference": pa.array(cols["reference"], pa.string()),
            "reason": pa.array([i.reason for i in multi], pa.string()),
            "order": pa.array([TYPE_INDEX[i.type.value] for i in multi], pa.int8()),
            "first_s": pa.array(cols["first_s"], pa.int64()),
            "first_l": pa.array(cols["first_l"], pa.int64()),
        },
        schema=_RAW_SCHEMA,
    )


def build(outcome: Outcome, ledger: pa.Table, statement: pa.Table) -> pa.Table:
    """The run's items, in report order, numbered from 1."""
    simple = [i for i in outcome.items if len(i.ledger) <= 1 and len(i.statement) <= 1]
    multi = [i for i in outcome.items if len(i.ledger) > 1 or len(i.statement) > 1]
    raw = pa.concat_tables([_bulk(outcome, ledger, statement, simple), _residual(multi, ledger, statement)])
    raw = raw.append_column("when", pc.coalesce(raw["statement_date"], raw["ledger_date"]))
    order = pc.sort_indices(
        raw, sort_keys=[(key, "ascending", "at_end") for key in ("order", "when", "first_s", "first_l")]
    )
    raw = raw.take(order)
    n = raw.num_rows
    return pa.table(
        {
            "seq": pa.array(np.arange(1, n + 1, dtype=np.int32)),
            "type": raw["type"],
            "kind": pc.if_else(pc.is_in(raw["type"], value_set=_MATCHES), "match", "discrepancy"),
            "currency": raw["currency"],
            "ledger_ids": raw["ledger_ids"],
            "statement_ids": raw["statement_ids"],
            "ledger_lines": raw["ledger_lines"],
            "statement_lines": raw["statement_lines"],
            "ledger_date": raw["ledger_date"],
            "statement_date": raw["statement_date"],
            "ledger_amount": units_to_text(raw["ledger_amount"]),
            "statement_amount": units_to_text(raw["statement_amount"]),
            "difference": units_to_text(raw["difference"]),
            "reference": raw["reference"],
            "reason": raw["reason"],
        },
        schema=ITEM_SCHEMA,
    )


def _line_types(
    n: int, bulk: pa.ChunkedArray, bulk_types: pa.ChunkedArray, outcome: Outcome, side: str
) -> np.ndarray:
    """The type index of the item each line of one side landed in."""
    kinds = np.full(n, -1, dtype=np.int16)
    if len(bulk):
        encoded = bulk_types.combine_chunks().dictionary_encode()
        codes = np.array([TYPE_INDEX[t] for t in encoded.dictionary.to_pylist()], dtype=np.int16)
        kinds[bulk.to_numpy()] = codes[encoded.indices.to_numpy()]
    for item in outcome.items:
        rids = item.ledger if side == "ledger" else item.statement
        if rids:
            kinds[list(rids)] = TYPE_INDEX[item.type.value]
    return kinds


def summarize(
    con: duckdb.DuckDBPyConnection, outcome: Outcome, items: pa.Table, ledger: pa.Table, statement: pa.Table
) -> dict[str, Any]:
    """Counts per type (items and lines) and totals per currency, all exact."""
    counts = {t.value: 0 for t in ItemType}
    for entry in pc.value_counts(items["type"]).to_pylist():
        counts[entry["values"]] = int(entry["counts"])
    lines: dict[str, dict[str, int]] = {}
    sums: dict[str, dict[str, int]] = {
        k: defaultdict(int) for k in ("ledger", "statement", "matched", "unexplained")
    }
    disc_codes = [TYPE_INDEX[t.value] for t in DISCREPANCY_TYPES]
    for side, table, column in (("ledger", ledger, "l_rid"), ("statement", statement, "s_rid")):
        kinds = _line_types(table.num_rows, outcome.pairs[column], outcome.pairs["type"], outcome, side)
        per_type = np.bincount(kinds[kinds >= 0], minlength=len(ORDER))
        lines[side] = {t.value: int(per_type[TYPE_INDEX[t.value]]) for t in ItemType}
        con.register(
            "side_lines",
            table.select(["amount", "currency"]).append_column("disc", pa.array(np.isin(kinds, disc_codes))),
        )
        for currency, total, disc in con.sql(
            "SELECT currency, sum(amount)::HUGEINT, sum(CASE WHEN disc THEN amount ELSE 0 END)::HUGEINT "
            "FROM side_lines GROUP BY currency ORDER BY currency"
        ).fetchall():
            sums[side][currency] += int(total)
            sign = 1 if side == "statement" else -1
            sums["unexplained"][currency] += sign * int(disc)
            if side == "statement":
                sums["matched"][currency] += int(total) - int(disc)
        con.unregister("side_lines")
    currencies = sorted(set(sums["ledger"]) | set(sums["statement"]))
    totals = {
        key: {c: format_units(sums[key].get(c, 0)) for c in currencies}
        for key in ("ledger", "statement", "matched", "unexplained")
    }
    totals["difference"] = {
        c: format_units(sums["statement"].get(c, 0) - sums["ledger"].get(c, 0)) for c in currencies
    }
    return {
        "counts": counts,
        "lines": lines,
        "matches": sum(counts[t.value] for t in MATCH_TYPES),
        "discrepancies": sum(counts[t.value] for t in DISCREPANCY_TYPES),
        "totals": totals,
    }


def describe(amounts: dict[str, str]) -> str:
    """`{"EUR": "1.00", "USD": "-2.00"}` -> `1.00 EUR, -2.00 USD` (`0.00` when there is nothing)."""
    return ", ".join(f"{v} {c}".strip() for c, v in sorted(amounts.items())) or "0.00"
