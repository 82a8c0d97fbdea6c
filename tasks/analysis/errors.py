"""The analysis family's errors.

A bad input is an `InvalidInput` for whoever checks it before publishing (the CLI, `submit()`)
and a `PermanentError` for the worker that finds it at run time: the same mistake never gets
better by retrying, so the job fails at once with the same message the caller would have seen.
"""

from __future__ import annotations

from collections.abc import Iterable

from jobs.errors import InvalidInput, PermanentError


class AnalysisInputError(InvalidInput, PermanentError):
    """The analysis request does not fit the data set."""


class DatasetNotFound(AnalysisInputError):
    """No data file matches the path under the data directory."""


class PathOutsideDataDir(AnalysisInputError):
    """The path leads outside the data directory."""


class UnreadableDataset(AnalysisInputError):
    """The data set cannot be read as the format it claims to be."""


class UnknownColumn(AnalysisInputError):
    """The data set has no such column."""

    def __init__(self, message: str | None = None, *, column: str | None = None,
                 available: Iterable[str] = ()) -> None:
        self.column = column
        self.available = list(available)
        if message is None:
            message = f"unknown column {column!r}; the data set has: {', '.join(self.available)}"
        super().__init__(message)


class MetricTypeMismatch(AnalysisInputError):
    """The metric or bucket does not fit the column's type."""


class MalformedFilter(AnalysisInputError):
    """The filter is not `column op value`, or its value does not fit the column."""


class InvalidSpec(AnalysisInputError):
    """The analysis request contradicts itself (duplicate outputs, unknown sort column...)."""


class EmailUnavailable(AnalysisInputError):
    """The report asks for an email but no `email.send` task is registered."""


class AnalysisFailed(PermanentError):
    """The engine could not complete the analysis (out of memory, corrupt file...)."""
