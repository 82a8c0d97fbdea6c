"""Reading input files into raw Arrow tables: one VARCHAR column per mapped field, plus `_line`.

CSV and Parquet are read by DuckDB (fast, columnar, typed errors with line numbers); camt.053
XML by `camt053`. Nothing here interprets a value: `normalize` turns the raw text into dates,
integer amounts and reference keys, and reports bad cells with their file and line.
"""

from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from tasks.reconciliation.errors import InputPathError, MissingColumn, UnreadableFile
from tasks.reconciliation.mapping import SideMapping

_PYTHON_ENCODING = {"utf-8": "utf-8-sig", "utf-16": "utf-16", "latin-1": "latin-1"}
_DELIMITERS = (",", ";", "\t", "|")


@dataclass(frozen=True)
class RawInput:
    """One input as read: its mapped columns as text, where each row came from, and its hash."""

    path: Path
    label: str  # the path as the user gave it, relative to the data directory
    format: str
    table: pa.Table  # canonical names (only the mapped columns the file has) + `_line`
    where: str  # what `_line` counts: "line" (CSV), "row" (Parquet) or "entry" (camt.053)
    skipped: int = 0  # camt.053 entries left out because they are not booked


def resolve_path(data_dir: Path, path: str) -> Path:
    """`path` (relative to the data directory) as an absolute path that really lies inside it,
    symlinks followed, and names a readable file."""
    base = data_dir.resolve()
    candidate = Path(path)
    full = (candidate if candidate.is_absolute() else base / candidate).resolve()
    if not full.is_relative_to(base):
        raise InputPathError(f"{path} is outside the data directory {base}")
    if not full.exists():
        raise InputPathError(f"{path} does not exist in the data directory {base}")
    if not full.is_file():
        raise InputPathError(f"{path} is not a file")
    return full


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def detect_format(path: Path, side: SideMapping) -> str:
    if side.format != "auto":
        return side.format
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".xml":
        return "camt053"
    return "csv"


def _needed(side: SideMapping, available: list[str], label: str) -> dict[str, str]:
    """Canonical field -> source column for the mapped columns present; missing required ones fail."""
    present = set(available)
    chosen: dict[str, str] = {}
    missing: list[str] = []
    for field, column in side.columns.items():
        if column in present:
            chosen[field] = column
        elif field not in side.optional:
            missing.append(column)
    if missing:
        raise MissingColumn(
            f"{label} has no column {', '.join(repr(m) for m in missing)} "
            f"(its columns: {', '.join(available) or 'none'}); give a mapping that names the right ones"
        )
    return chosen


def csv_header(path: Path, side: SideMapping, label: str) -> tuple[list[str], str]:
    """The header row and the delimiter (the mapping's, or the likeliest of , ; tab |)."""
    try:
        with open(path, encoding=_PYTHON_ENCODING[side.encoding], newline="") as fh:
            first = fh.readline()
    except UnicodeDecodeError as exc:
        raise UnreadableFile(
            f"{label} is not {side.encoding} text ({exc.reason}); set the mapping's encoding"
        ) from None
    if not first.strip():
        raise UnreadableFile(f"{label} is empty: a CSV input needs at least a header line")
    delimiter = side.delimiter or max(_DELIMITERS, key=first.count)
    header = next(csv.reader([first], delimiter=delimiter))
    header = [h.strip() for h in header]
    if len(set(header)) != len(header):
        dupes = sorted({h for h in header if header.count(h) > 1})
        raise UnreadableFile(f"{label} has the column {', '.join(dupes)} more than once")
    return header, delimiter


def header(path: Path, side: SideMapping, label: str) -> list[str]:
    """The columns of a CSV or Parquet input, read cheaply (for checks before enqueueing)."""
    fmt = detect_format(path, side)
    if fmt == "csv":
        return csv_header(path, side, label)[0]
    if fmt == "parquet":
        return [name for name, _ in _parquet_schema(duckdb.connect(), path, label)]
    return []


def check_columns(path: Path, side: SideMapping, label: str) -> None:
    """Raise `MissingColumn` now if the file lacks a column the mapping needs."""
    if detect_format(path, side) != "camt053":
        _needed(side, header(path, side, label), label)


def _parquet_schema(con: duckdb.DuckDBPyConnection, path: Path, label: str) -> list[tuple[str, str]]:
    try:
        rows = con.sql("DESCRIBE SELECT * FROM read_parquet($p)", params={"p": str(path)}).fetchall()
    except duckdb.Error as exc:
        raise UnreadableFile(f"{label} is not a readable Parquet file: {_first_line(exc)}") from None
    return [(r[0], r[1]) for r in rows]


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0]


def _csv_error(exc: duckdb.Error, label: str) -> UnreadableFile:
    text = str(exc)
    line = re.search(r"CSV Error on Line: (\d+)", text)
    detail = [ln.strip() for ln in text.splitlines()[1:4] if ln.strip() and not ln.startswith("Possible")]
    if line:
        return UnreadableFile(f"{label} line {line.group(1)}: " + "; ".join(detail))
    return UnreadableFile(f"{label} is not readable CSV: {_first_line(exc)}")


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def read(con: duckdb.DuckDBPyConnection, path: Path, label: str, side: SideMapping) -> RawInput:
    """Read one CSV, Parquet or camt.053 input as raw text columns."""
    fmt = detect_format(path, side)
    if fmt == "camt053":
        from tasks.reconciliation import camt053

        table, skipped = camt053.read(path, label)
        return RawInput(path, label, fmt, table, "entry", skipped)
    if fmt == "parquet":
        schema = dict(_parquet_schema(con, path, label))
        chosen = _needed(side, list(schema), label)
        for field in ("amount", "debit", "credit"):
            if field in chosen and schema[chosen[field]].upper() in ("DOUBLE", "FLOAT", "REAL"):
                raise UnreadableFile(
                    f"{label}: column {chosen[field]!r} holds floating-point numbers "
                    f"({schema[chosen[field]]}); store amounts as DECIMAL or text so cents stay exact"
                )
        select = ", ".join(f"CAST({_quote(src)} AS VARCHAR) AS {field}" for field, src in chosen.items())
        sql = f"SELECT {select or 'NULL AS _none'} FROM read_parquet($p)"
        first_line = 1
        where = "row"
    else:
        names, delimiter = csv_header(path, side, label)
        chosen = _needed(side, names, label)
        columns = "{" + ", ".join(f"'{n.replace(chr(39), chr(39) * 2)}': 'VARCHAR'" for n in names) + "}"
        select = ", ".join(f"{_quote(src)} AS {field}" for field, src in chosen.items())
        sql = (
            f"SELECT {select or 'NULL AS _none'} FROM read_csv($p, auto_detect=false, header=true, "
            f"delim=$d, quote='\"', escape='\"', columns={columns}, strict_mode=true, "
            f"encoding=$e)"
        )
        first_line = 2
        where = "line"
    params = {"p": str(path)} if fmt == "parquet" else {"p": str(path), "d": delimiter, "e": side.encoding}
    try:
        table = con.sql(sql, params=params).to_arrow_table()
    except duckdb.Error as exc:
        raise (
            _csv_error(exc, label) if fmt == "csv" else UnreadableFile(f"{label}: {_first_line(exc)}")
        ) from None
    if "_none" in table.column_names:
        table = table.drop(["_none"])
    lines = pa.array(np.arange(first_line, first_line + table.num_rows, dtype=np.int64))
    return RawInput(path, label, fmt, table.append_column("_line", lines), where)
