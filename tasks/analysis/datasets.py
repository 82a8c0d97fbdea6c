"""Data sets: a file, a folder or a glob of partition files under the data directory.

`resolve()` confines the path to the data directory (no `..`, no symlink leading out), finds
the files and reads their schema once: for CSV the dialect (delimiter, quoting, header) and
the column types, sniffed from each file and unified. Every reader of the data set, the
single-process one and each partition's, then reads with those exact options, so a partition
can never see a column with another type than its neighbours.
"""

from __future__ import annotations

import glob as globlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from tasks.analysis.engine import Sql, engine_errors, ident, kind_of
from tasks.analysis.errors import (
    AnalysisInputError,
    DatasetNotFound,
    PathOutsideDataDir,
    UnknownColumn,
    UnreadableDataset,
)

if TYPE_CHECKING:
    import duckdb

Format = Literal["csv", "parquet", "json"]

SUFFIXES: dict[str, Format] = {
    ".csv": "csv", ".tsv": "csv", ".txt": "csv",
    ".parquet": "parquet", ".pq": "parquet",
    ".jsonl": "json", ".ndjson": "json", ".json": "json",
}
COMPRESSED = (".gz", ".zst")
#: Types a caller may force on a CSV column (checked: they are pasted into a CAST).
TYPE_PATTERN = re.compile(
    r"^(BOOLEAN|TINYINT|SMALLINT|INTEGER|BIGINT|HUGEINT|DOUBLE|FLOAT|VARCHAR|DATE|TIMESTAMP|"
    r"TIMESTAMPTZ|TIMESTAMP WITH TIME ZONE|DECIMAL\(\s*\d{1,2}\s*,\s*\d{1,2}\s*\))$", re.IGNORECASE)


class Column(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str
    type: str

    @property
    def kind(self) -> str:
        return kind_of(self.type)


class CsvDialect(BaseModel):
    """What every reader of a CSV data set passes to DuckDB instead of guessing again."""

    delimiter: str
    header: bool
    quote: str | None = None
    escape: str | None = None
    skip: int = 0
    dateformat: str | None = None
    timestampformat: str | None = None


class Dataset(BaseModel):
    """A resolved data set: its files (absolute), format, columns and CSV dialect."""

    path: str
    format: Format
    files: list[str]
    columns: list[Column]
    csv: CsvDialect | None = None
    #: How many files the data set has, when `files` is left out (the split's plan does so).
    file_count: int | None = None

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for col in self.columns:
            if col.name == name:
                return col
        raise UnknownColumn(column=name, available=self.names)

    def describe(self) -> dict[str, Any]:
        files = self.file_count if self.file_count is not None else len(self.files)
        return {"path": self.path, "format": self.format, "files": files,
                "columns": [{"name": c.name, "type": c.type} for c in self.columns]}


# --- finding files --------------------------------------------------------------------------------
def data_format(path: Path) -> Format | None:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSED:
        suffixes = suffixes[:-1]
    return SUFFIXES.get(suffixes[-1]) if suffixes else None


def _confined(root: Path, candidate: Path, shown: str) -> Path:
    real = candidate.resolve()
    if not real.is_relative_to(root):
        raise PathOutsideDataDir(f"{shown!r} leads outside the data directory {root}")
    return real


def find_files(data_dir: Path, path: str) -> list[Path]:
    """The data files `path` names under `data_dir`: a file, a folder (recursively) or a glob."""
    root = data_dir.resolve()
    if not path.strip() or "\x00" in path:
        raise DatasetNotFound("give the path of a data file, folder or glob under the data directory")
    given = Path(path)
    if ".." in given.parts:
        raise PathOutsideDataDir(
            f"{path!r}: '..' is not allowed; give a path inside the data directory {root}")
    if given.is_absolute():
        if not given.is_relative_to(root):
            raise PathOutsideDataDir(f"{path!r} is outside the data directory {root}")
        given = given.relative_to(root)
    if not root.is_dir():
        raise DatasetNotFound(f"the data directory {root} does not exist")
    if globlib.has_magic(str(given)):
        found = [Path(p) for p in globlib.glob(str(root / given), recursive=True)]
        files = [f for f in found if f.is_file()]
        if not files:
            raise DatasetNotFound(f"no file matches {path!r} under the data directory {root}")
    else:
        target = root / given
        if not target.exists():
            raise DatasetNotFound(f"{path!r} does not exist under the data directory {root}")
        target = _confined(root, target, path)
        if target.is_dir():
            files = [f for f in sorted(target.rglob("*"))
                     if f.is_file() and data_format(f) and not _hidden(f.relative_to(target))]
            if not files:
                raise DatasetNotFound(
                    f"the folder {path!r} holds no CSV, Parquet or JSON-lines files")
        else:
            files = [target]
    confined = sorted({_confined(root, f, path) for f in files})
    return [f for f in confined if not _hidden(f.relative_to(root))]


def _hidden(rel: Path) -> bool:
    """Files like `_SUCCESS` or `.part-0.crc` that writers leave beside partitions."""
    return any(part.startswith((".", "_")) for part in rel.parts)


def detect_format(files: list[Path], given: str | None, path: str) -> Format:
    if given:
        return given  # type: ignore[return-value]
    formats = {data_format(f) for f in files}
    if None in formats:
        odd = next(f.name for f in files if data_format(f) is None)
        raise UnreadableDataset(f"cannot tell the format of {odd!r}; give format=csv, parquet or json")
    if len(formats) > 1:
        raise UnreadableDataset(
            f"{path!r} mixes {', '.join(sorted(str(f) for f in formats))} files; narrow it with a glob")
    return formats.pop()  # type: ignore[return-value]


# --- schemas --------------------------------------------------------------------------------------
def unify(a: str, b: str) -> str:
    """The type that holds values of both `a` and `b` (what a column spread over files gets)."""
    if a == b:
        return a
    ka, kb = kind_of(a), kind_of(b)
    if {ka, kb} <= {"integer"}:
        return "BIGINT" if "HUGEINT" not in (a, b) else "HUGEINT"
    if {ka, kb} <= {"integer", "decimal", "float"}:
        return "DOUBLE"
    if {ka, kb} <= {"date", "timestamp"}:
        return "TIMESTAMP WITH TIME ZONE" if "TIMESTAMP WITH TIME ZONE" in (a, b) else "TIMESTAMP"
    return "VARCHAR"


def _merge_columns(per_file: list[tuple[str, list[tuple[str, str]]]], by_name: bool) -> list[Column]:
    first_name, first = per_file[0]
    merged: dict[str, str] = dict(first)
    for name, cols in per_file[1:]:
        if not by_name and [c for c, _ in cols] != [c for c, _ in first]:
            raise UnreadableDataset(
                f"the files disagree on their columns: {first_name} has {[c for c, _ in first]}, "
                f"{name} has {[c for c, _ in cols]}")
        for col, typ in cols:
            merged[col] = unify(merged[col], typ) if col in merged else typ
    return [Column(name=n, type=t) for n, t in merged.items()]


def _sniff_csv(con: duckdb.DuckDBPyConnection, file: Path, delimiter: str | None,
               header: bool | None) -> tuple[CsvDialect, list[tuple[str, str]]]:
    q = Sql()
    opts = "".join([f", delim={q.bind(delimiter)}" if delimiter else "",
                    f", header={q.bind(header)}" if header is not None else ""])
    q.text = f"SELECT * FROM sniff_csv({q.bind(str(file))}{opts})"
    cur = con.execute(q.text, q.params)
    names = [d[0] for d in cur.description]
    got = dict(zip(names, cur.fetchone() or (), strict=False))
    columns = [(c["name"], c["type"]) for c in got["Columns"]]

    def opt(v: Any) -> str | None:
        return None if v in (None, "", "(empty)") else str(v)

    dialect = CsvDialect(delimiter=got["Delimiter"], header=bool(got["HasHeader"]),
                         quote=opt(got.get("Quote")), escape=opt(got.get("Escape")),
                         skip=int(got.get("SkipRows") or 0), dateformat=opt(got.get("DateFormat")),
                         timestampformat=opt(got.get("TimestampFormat")))
    return dialect, columns


def _describe(con: duckdb.DuckDBPyConnection, reader: Sql) -> list[tuple[str, str]]:
    described = con.execute(f"DESCRIBE SELECT * FROM {reader.text}", reader.params).fetchall()
    return [(r[0], r[1]) for r in described]


def resolve(con: duckdb.DuckDBPyConnection, data_dir: Path, path: str, *, format: str | None = None,
            delimiter: str | None = None, header: bool | None = None,
            types: dict[str, str] | None = None, sniff_limit: int = 64) -> Dataset:
    """Find the data set's files and read its schema (a sample of each file, not the data)."""
    files = find_files(data_dir, path)
    fmt = detect_format(files, format, path)
    sample = files if len(files) <= sniff_limit else files[:: max(1, len(files) // sniff_limit)]
    dialect: CsvDialect | None = None
    with engine_errors(f"reading the schema of {path!r}"):
        if fmt == "csv":
            sniffed = [(f.name, *_sniff_csv(con, f, delimiter, header)) for f in sample]
            dialect = sniffed[0][1]
            columns = _merge_columns([(n, cols) for n, _, cols in sniffed], by_name=False)
        else:
            per_file = [(f.name, _describe(con, raw_reader(fmt, [f]))) for f in sample]
            columns = _merge_columns(per_file, by_name=True)
    if types:
        names = [c.name for c in columns]
        for name, typ in types.items():
            if name not in names:
                raise UnknownColumn(column=name, available=names)
            if not TYPE_PATTERN.match(typ.strip()):
                raise AnalysisInputError(f"type {typ!r} for column {name!r} is not one of BOOLEAN, "
                                         "BIGINT, DOUBLE, DECIMAL(p,s), VARCHAR, DATE, TIMESTAMP...")
        columns = [Column(name=c.name, type=types[c.name].strip().upper()) if c.name in types else c
                   for c in columns]
    return Dataset(path=path, format=fmt, files=[str(f) for f in files], columns=columns, csv=dialect)


# --- reading --------------------------------------------------------------------------------------
def raw_reader(fmt: str, files: list[Path] | list[str], dialect: CsvDialect | None = None,
               columns: list[Column] | None = None, q: Sql | None = None) -> Sql:
    """The table function that reads `files`, every option bound as a parameter."""
    q = q or Sql()
    paths = q.bind([str(f) for f in files], "files")
    if fmt == "parquet":
        q.text = f"read_parquet({paths}, union_by_name = true)"
    elif fmt == "json":
        opts = f", columns = {q.bind({c.name: c.type for c in columns})}" if columns else ""
        q.text = f"read_json({paths}, format = 'newline_delimited'{opts})"
    else:
        options = []
        if dialect is not None:
            options += [f"delim = {q.bind(dialect.delimiter)}", f"header = {q.bind(dialect.header)}",
                     f"skip = {q.bind(dialect.skip)}"]
            for name in ("quote", "escape", "dateformat", "timestampformat"):
                value = getattr(dialect, name)
                if value is not None:
                    options.append(f"{name} = {q.bind(value)}")
        if columns:
            options.append(f"columns = {q.bind({c.name: c.type for c in columns})}")
        q.text = f"read_csv({paths}{''.join(', ' + o for o in options)})"
    return q


def source(con: duckdb.DuckDBPyConnection, dataset: Dataset, files: list[str] | None = None,
           needed: list[str] | None = None) -> Sql:
    """A SELECT over `files` (default: all) giving exactly the data set's columns and types.

    A Parquet or JSON partition that lacks a column gets NULLs of the right type. `needed`
    limits the columns read (the engine then skips the others where the format allows).
    """
    files = files or dataset.files
    wanted = [c for c in dataset.columns if needed is None or c.name in needed]
    q = Sql()
    reader = raw_reader(dataset.format, files, dataset.csv,
                        dataset.columns if dataset.format != "parquet" else None, q)
    present = set(dataset.names)
    if dataset.format == "parquet":
        with engine_errors(f"reading the schema of {dataset.path!r}"):
            present = {n for n, _ in _describe(con, reader)}
    cols = [f"CAST({ident(c.name)} AS {c.type}) AS {ident(c.name)}" if c.name in present
            else f"CAST(NULL AS {c.type}) AS {ident(c.name)}" for c in wanted]
    q.text = f"SELECT {', '.join(cols) or '*'} FROM {reader.text}"
    return q
