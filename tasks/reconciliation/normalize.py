"""Raw text columns -> the normalized table matching works on, or a `BadValue` naming the cell.

Normalized columns (one row per input line, `rid` 0..n-1 in file order):

| column | meaning |
|---|---|
| rid, line | row number (0-based) and where in the file (line, row or entry number) |
| id | the line's id; `line N` when the file has none |
| date | DATE |
| amount | BIGINT units of 1/10,000 (see `money`), signed: negative for refunds and fees |
| currency | three letters, or NULL when the file does not say (settled by `align_currencies`) |
| ref, ref_exact | the reference as written (trimmed), and trimmed + lower-case (rule 1's key) |
| batch | payout or batch id (ledger) |
| text | counterparty (ledger) or description (statement) |
| is_fee | a negative ledger line whose text matches the fee pattern |

Everything is one DuckDB pass over the raw table; the fully normalized reference keys of
rule 2 (`reference_key`) are computed later, by the matching engine, for the few lines rule 1
leaves over.
"""

from __future__ import annotations

import re

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.reconciliation.errors import BadValue, MixedCurrencies
from tasks.reconciliation.mapping import SideMapping
from tasks.reconciliation.readers import RawInput

SCHEMA = pa.schema(
    [
        ("rid", pa.int32()),
        ("id", pa.string()),
        ("line", pa.int64()),
        ("date", pa.date32()),
        ("amount", pa.int64()),
        ("currency", pa.string()),
        ("ref", pa.string()),
        ("ref_exact", pa.string()),
        ("batch", pa.string()),
        ("text", pa.string()),
        ("is_fee", pa.bool_()),
    ]
)

#: A decimal of at most 14 integer digits and 4 significant decimals (more decimals only if zero).
AMOUNT_PATTERN = r"[+-]?([0-9]{1,14}(\.[0-9]{0,4}0*)?|\.[0-9]{1,4}0*)"

_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]+")
_DIGITS = re.compile(r"[0-9]+")


def reference_key(text: str | None) -> str | None:
    """The fully normalized reference of rule 2: only ASCII letters and digits count, letters
    are lower-cased and leading zeros of every number dropped (`INV-00042` -> `inv42`)."""
    if text is None:
        return None
    tokens = _NOT_ALNUM.sub(" ", text).lower().split(" ")
    key = "".join(_DIGITS.sub(lambda m: m.group().lstrip("0") or "0", t) for t in tokens)
    return key or None


def exact_key(text: str | None) -> str | None:
    """Rule 1's key: the reference trimmed and lower-cased, nothing more."""
    if text is None:
        return None
    key = text.strip(" ").lower()
    return key or None


def ref_norm_sql(expr: str) -> str:
    """`reference_key` as a DuckDB expression (a test checks that both agree)."""
    return (
        "nullif(replace(regexp_replace(lower(regexp_replace(" + expr + ", '[^A-Za-z0-9]+', ' ', 'g')), "
        "'(^|[^0-9])0+([0-9])', '\\1\\2', 'g'), ' ', ''), '')"
    )


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _clean_amount(column: str, side: SideMapping) -> str:
    cleaned = f"trim({column})"
    if side.thousands_separator:
        cleaned = f"replace({cleaned}, {_sql_text(side.thousands_separator)}, '')"
    if side.decimal_separator == ",":
        cleaned = f"replace({cleaned}, ',', '.')"
    return cleaned


def _units(clean: str) -> str:
    """Units of a cleaned amount (NULL unless valid); `(12.30)` is -12.30."""
    inner = f"CASE WHEN {clean} LIKE '(%)' THEN '-' || {clean}[2:-2] ELSE {clean} END"
    return (
        f"CASE WHEN regexp_full_match({inner}, '{AMOUNT_PATTERN}') "
        f"THEN (CAST({inner} AS DECIMAL(18,4)) * 10000)::BIGINT END"
    )


def _date(column: str, side: SideMapping) -> str:
    t = f"trim({column})"
    if side.date_format:
        return f"CAST(try_strptime({t}, {_sql_text(side.date_format)}) AS DATE)"
    return (
        f"CASE WHEN length({t}) = 10 THEN try_cast({t} AS DATE) "
        f"WHEN length({t}) > 10 AND substr({t}, 11, 1) IN ('T', ' ') THEN try_cast(left({t}, 10) AS DATE) END"
    )


def normalize(
    con: duckdb.DuckDBPyConnection,
    raw: RawInput,
    side: SideMapping,
    *,
    ledger: bool,
    fee_pattern: str | None = None,
) -> pa.Table:
    """The normalized table of one input, or `BadValue` for its earliest bad cell."""
    cols = set(raw.table.column_names)
    sign = "-1" if side.negate else "1"
    if "amount" in cols:
        amount = f"{_units(_clean_amount('amount', side))} * {sign}"
        amount_given = "nullif(trim(amount), '') IS NOT NULL"
    else:
        debit = _units(_clean_amount("debit", side))
        credit = _units(_clean_amount("credit", side))
        amount = f"(coalesce(abs({credit}), 0) - coalesce(abs({debit}), 0)) * {sign}"
        amount_given = (
            "(nullif(trim(debit), '') IS NOT NULL OR nullif(trim(credit), '') IS NOT NULL) AND "
            f"(nullif(trim(debit), '') IS NULL OR {debit} IS NOT NULL) AND "
            f"(nullif(trim(credit), '') IS NULL OR {credit} IS NOT NULL)"
        )
    default_currency = _sql_text(side.currency) if side.currency else "NULL"
    currency = (
        f"coalesce(upper(nullif(trim(currency), '')), {default_currency})"
        if "currency" in cols
        else f"{default_currency}::VARCHAR"
    )

    def text(field: str) -> str:
        return f"nullif(trim({field}), '')" if field in cols else "NULL::VARCHAR"

    fee = "false"
    if ledger and fee_pattern:
        matches = f"coalesce(regexp_matches(text, {_sql_text(fee_pattern)}), false)"
        fee = f"CASE WHEN amount < 0 THEN {matches} ELSE false END"
    n = raw.table.num_rows
    table = raw.table.append_column("_rid", pa.array(np.arange(n, dtype=np.int32)))
    con.register("raw_input", table)
    try:
        out = con.sql(f"""
            WITH parsed AS (
                SELECT _rid AS rid, coalesce({text("id")}, '{raw.where} ' || _line) AS id, _line AS line,
                       {_date("date", side)} AS date,
                       {amount} AS amount, {amount_given} AS amount_given,
                       {currency} AS currency,
                       {text("reference")} AS ref, {text("batch")} AS batch, {text("text")} AS text
                FROM raw_input)
            SELECT rid, id, line, date,
                   CASE WHEN amount_given THEN amount END AS amount, currency, ref,
                   lower(ref) AS ref_exact, batch, text, {fee} AS is_fee
            FROM parsed
        """).to_arrow_table()
        _check(con, raw, out, side, cols)
    finally:
        con.unregister("raw_input")
    return out.cast(SCHEMA)


def _check(
    con: duckdb.DuckDBPyConnection, raw: RawInput, out: pa.Table, side: SideMapping, cols: set[str]
) -> None:
    """Raise `BadValue` for the earliest line with a bad date, amount or currency."""
    bad_currency = pc.invert(pc.match_substring_regex(pc.fill_null(out["currency"], "XXX"), "^[A-Z]{3}$"))
    if "currency" in cols:
        bad_currency = pc.or_(bad_currency, pc.is_null(out["currency"]))
    bad = pc.or_(pc.or_(pc.is_null(out["date"]), pc.is_null(out["amount"])), bad_currency)
    if not pc.any(bad).as_py():
        return
    where = pc.indices_nonzero(bad)
    first = where[0].as_py()
    count_of = lambda mask: pc.sum(pc.cast(mask, pa.int64())).as_py()  # noqa: E731
    source = {f: (side.columns.get(f, f) if raw.format != "camt053" else f) for f in cols}
    line = raw.table["_line"][first].as_py()
    here = f"{raw.where} {line}"
    if out["date"][first].as_py() is None:
        how = (
            f"is not a date in the format {side.date_format}"
            if side.date_format
            else "is not an ISO date (YYYY-MM-DD)"
        )
        raise BadValue(
            raw.label,
            here,
            source["date"],
            raw.table["date"][first].as_py(),
            how,
            count_of(pc.is_null(out["date"])) - 1,
        )
    if out["amount"][first].as_py() is None:
        more = count_of(pc.is_null(out["amount"])) - 1
        if "amount" in cols:
            value = raw.table["amount"][first].as_py()
            why = (
                "is empty"
                if not (value or "").strip()
                else "is not a decimal amount (at most 4 decimal places, no exponent)"
            )
            raise BadValue(raw.label, here, source["amount"], value, why, more)
        value = f"{raw.table['debit'][first].as_py()}/{raw.table['credit'][first].as_py()}"
        raise BadValue(
            raw.label,
            here,
            f"{source['debit']}/{source['credit']}",
            value,
            "is not one decimal amount (both empty, or not a number)",
            more,
        )
    value = raw.table["currency"][first].as_py() if "currency" in cols else None
    raise BadValue(
        raw.label,
        here,
        source.get("currency", "currency"),
        value,
        "is not a three-letter currency code",
        count_of(bad_currency) - 1,
    )


def align_currencies(
    ledger: pa.Table, statement: pa.Table, labels: tuple[str, str]
) -> tuple[pa.Table, pa.Table]:
    """Give a side without currencies the other side's one currency; refuse when that is ambiguous."""

    def known(table: pa.Table) -> list[str]:
        return sorted(c for c in pc.unique(table["currency"]).to_pylist() if c is not None)

    def fill(table: pa.Table, currency: str) -> pa.Table:
        column = pc.fill_null(table["currency"], currency)
        return table.set_column(table.schema.get_field_index("currency"), "currency", column)

    lc, sc = known(ledger), known(statement)
    l_missing = ledger["currency"].null_count > 0
    s_missing = statement["currency"].null_count > 0
    if not l_missing and not s_missing:
        return ledger, statement
    if l_missing and s_missing:
        if lc or sc:
            raise MixedCurrencies(f"{labels[0]} and {labels[1]} name currencies on some lines only")
        return fill(ledger, ""), fill(statement, "")
    lacking, other, other_cur = (0, 1, sc) if l_missing else (1, 0, lc)
    if lc if l_missing else sc:
        raise MixedCurrencies(f"{labels[lacking]} names a currency on some lines only")
    if len(other_cur) > 1:
        raise MixedCurrencies(
            f"{labels[lacking]} has no currency column but {labels[other]} holds several currencies "
            f"({', '.join(other_cur)}): add a currency column, or set the mapping's currency"
        )
    currency = other_cur[0] if other_cur else ""
    if l_missing:
        return fill(ledger, currency), statement
    return ledger, fill(statement, currency)
