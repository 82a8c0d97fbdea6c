"""DuckDB, set up for untrusted requests over big files: one connection per analysis.

Why DuckDB: it streams Parquet and CSV, holds to a memory limit by spilling to disk, runs in
the worker's process with its own threads, and survives Celery's prefork pool (PERFORMANCE.md).
It is imported inside functions only, so a worker's main process never loads it before it forks.

Each connection is sandboxed: it may read only the data directory and write only the results
directory and its spill directory, and its configuration is locked. Requests never reach SQL
as text: column names are checked against the data set and quoted (`ident`), values are bound.
"""

from __future__ import annotations

import base64
import contextlib
import math
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

from jobs.errors import RetryableError
from tasks.analysis.errors import AnalysisFailed, UnreadableDataset

if TYPE_CHECKING:
    import duckdb

    from config import Settings


def ident(name: str) -> str:
    """`name` as a quoted SQL identifier. Only for names checked against the data set."""
    return '"' + name.replace('"', '""') + '"'


def literal(path: str | Path) -> str:
    """A path Conveyor generated, as a SQL string literal (COPY TO cannot take a parameter)."""
    return "'" + str(path).replace("'", "''") + "'"


@dataclass
class Sql:
    """SQL text with its named parameters, built up piece by piece."""

    text: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    def bind(self, value: Any, prefix: str = "p") -> str:
        """A placeholder for `value`, remembered with the query."""
        name = f"{prefix}{len(self.params)}"
        self.params[name] = value
        return f"${name}"


# --- types ------------------------------------------------------------------------------------
INTEGER_TYPES = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
                 "UINTEGER", "UBIGINT", "UHUGEINT"}
FLOAT_TYPES = {"FLOAT", "DOUBLE", "REAL"}
TIMESTAMP_TYPES = {"TIMESTAMP", "TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP_NS", "TIMESTAMP WITH TIME ZONE"}


def kind_of(duck_type: str) -> str:
    """The family of a DuckDB type: integer, decimal, float, boolean, date, timestamp, string, other."""
    t = duck_type.upper()
    if t in INTEGER_TYPES:
        return "integer"
    if t.startswith("DECIMAL"):
        return "decimal"
    if t in FLOAT_TYPES:
        return "float"
    if t == "BOOLEAN":
        return "boolean"
    if t == "DATE":
        return "date"
    if t in TIMESTAMP_TYPES:
        return "timestamp"
    if t == "VARCHAR":
        return "string"
    return "other"


NUMERIC = frozenset({"integer", "decimal", "float"})
TEMPORAL = frozenset({"date", "timestamp"})
ORDERED = NUMERIC | TEMPORAL | {"string", "boolean"}


# --- values -----------------------------------------------------------------------------------
def to_json(value: Any) -> Any:
    """A DuckDB value as JSON: exact decimals as strings (whole numbers as ints), times as ISO."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Decimal):
        if value.as_tuple().exponent == 0:
            return int(value)
        return str(value)
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, Sequence):
        return [to_json(v) for v in value]
    return str(value)


def from_json(kind: str, value: Any) -> Any:
    """Undo `to_json` for a value of `kind`, so values compare in their own order."""
    if value is None:
        return None
    if kind == "decimal":
        return Decimal(str(value))
    if kind == "date":
        return date.fromisoformat(value)
    if kind == "timestamp":
        return datetime.fromisoformat(value)
    return value


# --- connections --------------------------------------------------------------------------------
@contextlib.contextmanager
def connect(settings: Settings) -> Iterator[duckdb.DuckDBPyConnection]:
    """A sandboxed in-memory DuckDB with the configured memory limit, threads and spill dir."""
    import duckdb

    spill_root = settings.analysis_spill_dir or Path(tempfile.gettempdir()) / "conveyor-duckdb"
    spill: Path | None = None
    config: dict[str, Any] = {
        "memory_limit": settings.analysis_memory_limit,
        "threads": settings.analysis_threads,
        "preserve_insertion_order": False,  # lets big aggregates stream in less memory
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
    }
    if settings.analysis_spill:
        spill_root.mkdir(parents=True, exist_ok=True)
        spill = Path(tempfile.mkdtemp(prefix="spill-", dir=spill_root)).resolve()
        config["temp_directory"] = str(spill)
        config["max_temp_directory_size"] = settings.analysis_max_spill
    else:
        config["temp_directory"] = ""
    try:
        con = duckdb.connect(":memory:", config=config)
    except duckdb.Error as exc:
        raise AnalysisFailed(f"cannot start the analysis engine: {exc}") from None
    try:
        con.execute("SET TimeZone = $tz", {"tz": settings.timezone})
        allowed = [settings.data_dir, settings.results_dir, *([spill] if spill else [])]
        con.execute("SET allowed_directories = $dirs", {"dirs": [f"{Path(d).resolve()}/" for d in allowed]})
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        yield con
    finally:
        con.close()
        if spill is not None:
            shutil.rmtree(spill, ignore_errors=True)


def translate(exc: Exception, what: str) -> Exception:
    """A DuckDB error as Conveyor's: retry what may pass (I/O), fail at once on the rest."""
    import duckdb

    text = str(exc).strip()
    # DuckDB's first paragraph says what and where; the rest is generic advice and settings.
    first = "; ".join(line.strip() for line in text.split("\n\n")[0].splitlines() if line.strip())
    first = first or type(exc).__name__
    if isinstance(exc, duckdb.OutOfMemoryException):
        return AnalysisFailed(
            f"{what} needs more memory than the analysis memory limit allows ({first}); "
            "raise CONVEYOR_ANALYSIS_MEMORY_LIMIT or let it spill (CONVEYOR_ANALYSIS_SPILL=true)")
    if isinstance(exc, (duckdb.InvalidInputException, duckdb.ConversionException)):
        hint = " (declare the column's type: types={column: type}, --type on the CLI)" \
            if "Could not convert" in first else ""
        return UnreadableDataset(f"{what} failed: {first}{hint}")
    if isinstance(exc, duckdb.IOException):
        return RetryableError(f"{what} failed reading or writing a file: {first}")
    return AnalysisFailed(f"{what} failed: {first}")


@contextlib.contextmanager
def engine_errors(what: str) -> Iterator[None]:
    """Translate DuckDB's exceptions raised inside the block (see `translate`)."""
    import duckdb

    try:
        yield
    except duckdb.Error as exc:
        raise translate(exc, what) from exc


def rows(con: duckdb.DuckDBPyConnection, query: Sql) -> list[tuple[Any, ...]]:
    """Run `query` and fetch every row."""
    return con.execute(query.text, query.params).fetchall()
