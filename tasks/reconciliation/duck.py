"""One DuckDB connection per reconciliation run, bounded in memory and threads."""

from __future__ import annotations

import duckdb


def connect(threads: int = 2, memory_limit: str = "1GB") -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the run's limits.

    Insertion order is preserved (DuckDB's default, set explicitly because line numbers and
    the pairing of identical lines rely on reading files in order)."""
    return duckdb.connect(
        config={"threads": threads, "memory_limit": memory_limit, "preserve_insertion_order": True}
    )
