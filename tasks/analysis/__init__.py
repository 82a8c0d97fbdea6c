"""Analysis jobs: profiles, aggregates, anomalies and reports over CSV/Parquet/JSON-lines data.

Importing the package registers the tasks (`analysis.profile`, `analysis.aggregate`,
`analysis.anomalies`, `analysis.report` and the internal `analysis.partition_run` and
`analysis.partition_merge`). DuckDB is imported only inside the functions that run queries,
so a worker's main process never loads it before forking its pool. See docs/analysis.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from tasks.analysis import tasks as _tasks  # noqa: F401 - registers the tasks
from tasks.analysis.api import check, submit

if TYPE_CHECKING:
    from config import Settings

#: Rows of the demo's sample data set (it is regenerated if missing).
SAMPLE_ROWS = 50_000


def demo_setup(settings: Settings) -> Callable[[], None] | None:
    """Put the sample orders data set under the data directory for the examples (`make demo`)."""
    from tasks.analysis.sample import generate
    from tasks.analysis.tasks import SAMPLE

    target = settings.data_dir / SAMPLE
    if not (target / "orders.csv").exists() or not any((target / "orders").glob("*.parquet")):
        generate(target, SAMPLE_ROWS)
    return None


__all__ = ["check", "demo_setup", "submit"]
