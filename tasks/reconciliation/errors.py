"""The reconciliation family's errors, placed in Conveyor's one error tree.

Bad input is `InvalidInput` (the CLI exits 2 on it) and, when a worker finds it, also
`PermanentError`: reading the same file again cannot fix it, so the job fails at once.
"""

from __future__ import annotations

from jobs.errors import InvalidInput, PermanentError


class ReconciliationInputError(InvalidInput, PermanentError):
    """The reconciliation's input is invalid."""


class InputPathError(ReconciliationInputError):
    """An input path is missing, unreadable or outside the data directory."""


class InvalidMapping(ReconciliationInputError):
    """The column mapping is unknown or inconsistent."""


class MissingColumn(ReconciliationInputError):
    """An input file lacks a column the mapping needs."""


class BadValue(ReconciliationInputError):
    """A cell cannot be read as what its column holds (an amount, a date, ...)."""

    def __init__(self, file: str, where: str, column: str, value: object, why: str, more: int = 0) -> None:
        self.file = file
        self.where = where  # "line 17", "row 17" (Parquet) or "entry 17" (camt.053)
        self.column = column
        self.value = value
        extra = f" (and {more} more like it)" if more else ""
        shown = "(empty)" if value is None else repr(value)
        super().__init__(f"{file} {where}: {column} {shown} {why}{extra}")


class MixedCurrencies(ReconciliationInputError):
    """Currencies cannot be told apart because a side has no currency column."""


class UnreadableFile(ReconciliationInputError):
    """An input file is not valid CSV, Parquet or camt.053."""


class RunNotFound(InvalidInput, LookupError):
    """No reconciliation run has that id."""


__all__ = [
    "BadValue",
    "InputPathError",
    "InvalidMapping",
    "MissingColumn",
    "MixedCurrencies",
    "ReconciliationInputError",
    "RunNotFound",
    "UnreadableFile",
]
