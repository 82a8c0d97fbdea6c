"""Reading and normalizing inputs: formats, mappings, and clear errors for bad input."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.reconciliation import duck, normalize, readers
from tasks.reconciliation.errors import (
    BadValue,
    InputPathError,
    InvalidMapping,
    MissingColumn,
    MixedCurrencies,
    UnreadableFile,
)
from tasks.reconciliation.mapping import resolve
from tasks.reconciliation.money import Tolerance, format_units, to_units, units_to_text
from tasks.reconciliation.report import escape_cell, escape_column

LEDGER_HEADER = "id,date,amount,currency,reference,counterparty\n"


def load(path: Path, mapping: str | dict = "default", side: str = "ledger") -> pa.Table:
    layout = getattr(resolve(mapping), side)
    con = duck.connect(threads=1, memory_limit="256MB")
    raw = readers.read(con, path, path.name, layout)
    return normalize.normalize(con, raw, layout, ledger=side == "ledger", fee_pattern=r"(?i)\bfees?\b")


def write(tmp_path: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding=encoding)
    return path


# --- reference keys: the SQL and the Python rule agree ----------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet="AaBbZz0019 -_./#:é", max_size=12), min_size=1, max_size=20))
def test_reference_key_in_sql_and_python_agree(texts):
    con = duckdb.connect()
    got = con.sql(
        f"SELECT {normalize.ref_norm_sql('t')} FROM unnest($v) WITH ORDINALITY u(t, i) ORDER BY i",
        params={"v": texts},
    ).fetchall()
    assert [g[0] for g in got] == [normalize.reference_key(t) for t in texts]


def test_reference_key_examples():
    assert normalize.reference_key("INV-00042") == normalize.reference_key("inv 42") == "inv42"
    assert normalize.reference_key("  A/B 007 ") == "ab7"
    assert normalize.reference_key("INV-100") != normalize.reference_key("INV-10")
    assert normalize.reference_key("0000") == "0" and normalize.reference_key(" - ") is None


# --- money ----------------------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=-(10**15), max_value=10**15) | st.none(), max_size=50))
def test_amount_text_is_the_same_one_by_one_and_vectorized(values):
    assert units_to_text(pa.array(values, pa.int64())).to_pylist() == [format_units(v) for v in values]


def test_units_are_exact():
    assert to_units("0.1") + to_units("0.2") == to_units("0.3")
    assert format_units(to_units("-12.3")) == "-12.30" and format_units(to_units("0.125")) == "0.125"
    with pytest.raises(ValueError):
        to_units(0.1)  # floats are refused outright
    with pytest.raises(ValueError):
        to_units("1.00001")
    assert Tolerance.parse("0.5%").allows(to_units("1000"), to_units("995"))
    assert not Tolerance.parse("0.5%").allows(to_units("1000"), to_units("994.99"))


def test_amount_formats(tmp_path):
    path = write(
        tmp_path,
        "l.csv",
        LEDGER_HEADER + '1,2026-10-01,"1,234.50",eur,A,x\n2,2026-10-01,(12.30),EUR,B,y\n'
        "3,2026-10-01,+7,EUR,C,z\n4,2026-10-01,.5,EUR,D,w\n5,2026-10-01,2.50000,EUR,E,v\n",
    )
    t = load(path, {"ledger": {"thousands_separator": ","}})
    assert t["amount"].to_pylist() == [12345000, -123000, 70000, 5000, 25000]
    assert t["currency"].to_pylist() == ["EUR"] * 5
    assert t["line"].to_pylist() == [2, 3, 4, 5, 6]


# --- formats and presets -----------------------------------------------------------------------------
def test_debit_credit_preset(tmp_path):
    path = write(
        tmp_path,
        "s.csv",
        "Transaction ID,Booking Date,Debit,Credit,Currency,Reference,Description\n"
        'T1,05/10/2026,,"1,000.00",EUR,INV-1,in\nT2,06/10/2026,12.50,,EUR,,bank fee\n',
    )
    t = load(path, "bank_debit_credit", "statement")
    assert t["amount"].to_pylist() == [10000000, -125000]
    assert [d.isoformat() for d in t["date"].to_pylist()] == ["2026-10-05", "2026-10-06"]


def test_semicolon_decimal_comma_preset_without_currency_column(tmp_path):
    path = write(
        tmp_path,
        "s.csv",
        "Transaktions-ID;Buchungstag;Betrag;Referenz;Verwendungszweck\nA1;01.10.2026;-1.234,56;RE-1;Miete\n",
        encoding="utf-8",
    )
    t = load(path, "bank_eu_semicolon", "statement")
    assert t["amount"].to_pylist() == [-12345600] and t["currency"].to_pylist() == ["EUR"]


def test_parquet_with_decimal_amounts_and_no_id_column(tmp_path):
    table = pa.table(
        {
            "date": pa.array(["2026-10-01"]),
            "amount": pa.array([Decimal("12.34")], pa.decimal128(18, 2)),
            "currency": ["EUR"],
            "reference": ["X"],
        }
    )
    pq.write_table(table, tmp_path / "l.parquet")
    t = load(tmp_path / "l.parquet", {"ledger": {"columns": {"id": None}}})
    assert t["amount"].to_pylist() == [123400] and t["id"].to_pylist() == ["row 1"]


def test_parquet_float_amounts_are_refused(tmp_path):
    pq.write_table(
        pa.table(
            {"id": ["1"], "date": ["2026-10-01"], "amount": [0.1], "currency": ["EUR"], "reference": ["x"]}
        ),
        tmp_path / "l.parquet",
    )
    with pytest.raises(UnreadableFile, match="floating-point"):
        load(tmp_path / "l.parquet")


# --- bad input: clear, typed errors naming the file, the line and the value ----------------------------
def test_missing_column(tmp_path):
    path = write(tmp_path, "l.csv", "id,date,amount,reference\n1,2026-10-01,1.00,x\n")
    with pytest.raises(
        MissingColumn, match=r"l.csv has no column 'currency' \(its columns: id, date, amount, reference\)"
    ):
        load(path)


def test_unparseable_amount_names_file_line_and_value(tmp_path):
    path = write(tmp_path, "l.csv", LEDGER_HEADER + "1,2026-10-01,1.00,EUR,a,x\n2,2026-10-01,12,5O,EUR,b,y\n")
    with pytest.raises(UnreadableFile, match="line 3"):
        load(path)  # one column too many: the CSV reader says which line
    path = write(
        tmp_path,
        "l.csv",
        LEDGER_HEADER + "1,2026-10-01,1.00,EUR,a,x\n2,2026-10-01,12.5O,EUR,b,y\n3,2026-10-01,1e3,EUR,c,z\n",
    )
    with pytest.raises(BadValue) as err:
        load(path)
    assert str(err.value) == (
        "l.csv line 3: amount '12.5O' is not a decimal amount (at most 4 decimal places, "
        "no exponent) (and 1 more like it)"
    )
    assert (err.value.where, err.value.value) == ("line 3", "12.5O")


def test_unparseable_date(tmp_path):
    path = write(tmp_path, "l.csv", LEDGER_HEADER + "1,2026-02-30,1.00,EUR,a,x\n")
    with pytest.raises(BadValue, match=r"l.csv line 2: date '2026-02-30' is not an ISO date"):
        load(path)
    path = write(tmp_path, "l.csv", LEDGER_HEADER + "1,2026-10-01,1.00,EUR,a,x\n")
    with pytest.raises(BadValue, match=r"is not a date in the format %d/%m/%Y"):
        load(path, {"ledger": {"date_format": "%d/%m/%Y"}})


def test_bad_currency_and_empty_amount(tmp_path):
    path = write(tmp_path, "l.csv", LEDGER_HEADER + "1,2026-10-01,1.00,€,a,x\n")
    with pytest.raises(BadValue, match="is not a three-letter currency code"):
        load(path)
    path = write(tmp_path, "l.csv", LEDGER_HEADER + "1,2026-10-01,,EUR,a,x\n")
    with pytest.raises(BadValue, match="amount \\(empty\\) is empty"):
        load(path)


def test_mixed_currencies_without_a_currency_column():
    ledger = pa.table({"currency": pa.array([None, None], pa.string())})
    statement = pa.table({"currency": ["EUR", "USD"]})
    with pytest.raises(
        MixedCurrencies, match="l.csv has no currency column but s.csv holds several currencies"
    ):
        normalize.align_currencies(ledger, statement, ("l.csv", "s.csv"))
    one = pa.table({"currency": ["USD"]})
    filled, _ = normalize.align_currencies(ledger, one, ("l.csv", "s.csv"))
    assert filled["currency"].to_pylist() == ["USD", "USD"]


def test_empty_and_unreadable_files(tmp_path):
    with pytest.raises(UnreadableFile, match="empty"):
        load(write(tmp_path, "l.csv", ""))
    with pytest.raises(UnreadableFile, match="not utf-8"):
        load(write(tmp_path, "l.csv", LEDGER_HEADER + "1,2026-10-01,1.00,EUR,Müller,x\n", encoding="utf-16"))
    assert load(write(tmp_path, "l.csv", LEDGER_HEADER)).num_rows == 0


def test_paths_must_stay_in_the_data_directory(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "secret.csv").write_text(LEDGER_HEADER)
    (data / "link.csv").symlink_to(tmp_path / "secret.csv")
    for bad in ("../secret.csv", str(tmp_path / "secret.csv"), "link.csv"):
        with pytest.raises(InputPathError, match="outside the data directory"):
            readers.resolve_path(data, bad)
    with pytest.raises(InputPathError, match="does not exist"):
        readers.resolve_path(data, "nope.csv")


def test_mappings_are_validated():
    with pytest.raises(InvalidMapping, match="unknown mapping preset 'nope'"):
        resolve("nope")
    with pytest.raises(InvalidMapping, match="either an amount column or debit and credit"):
        resolve({"statement": {"columns": {"amount": None}}})
    with pytest.raises(InvalidMapping, match="not a three-letter currency"):
        resolve({"ledger": {"currency": "euro"}})
    assert (
        resolve({"ledger": {"columns": {"reference": "invoice_no"}}}).ledger.columns["reference"]
        == "invoice_no"
    )


# --- spreadsheet safety -----------------------------------------------------------------------------
def test_formula_cells_are_escaped_but_numbers_are_not():
    cells = ["=1+1", "+SUM(A1)", "-2+3", "@cmd", "\tx", "-12.30", "+5", "INV-1", None, "12.30"]
    expected = ["'=1+1", "'+SUM(A1)", "'-2+3", "'@cmd", "'\tx", "-12.30", "+5", "INV-1", None, "12.30"]
    assert [escape_cell(c) for c in cells] == expected
    assert escape_column(pa.array(cells)).to_pylist() == expected
