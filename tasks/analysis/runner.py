"""The analyses a job is made of, each runnable three ways with the same answer.

- `inline`: one process reads every file (the single-process path);
- `write_partial`: a partition task reads its own files and writes a partial to scratch;
- `merge`: the merge task combines the partitions' partials into the answer.
A job (profile, aggregate, anomalies, report) is a list of analyses plus a `finish` step that
turns their outputs into the job's result and files (see tasks.analysis.kinds).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tasks.analysis import aggregate, profile
from tasks.analysis.datasets import Dataset, source
from tasks.analysis.filters import Filter
from tasks.analysis.sketch import QuantileSketch
from tasks.analysis.spec import AggregateSpec, ProfileSpec

if TYPE_CHECKING:
    import duckdb

    from config import Settings


@dataclass
class Context:
    """What every analysis of one job shares."""

    settings: Settings
    dataset: Dataset
    job_id: str

    @property
    def sketch(self) -> QuantileSketch:
        return QuantileSketch(self.settings.analysis_quantile_accuracy)

    @property
    def out_dir(self) -> Path:
        """Where the job's files go: <results_dir>/analysis/<job id>/."""
        return self.settings.results_dir / "analysis" / self.job_id


class Analysis(Protocol):
    name: str

    def inline(self, con: duckdb.DuckDBPyConnection, ctx: Context) -> Any: ...

    def write_partial(self, con: duckdb.DuckDBPyConnection, ctx: Context, files: list[str],
                      out: Path) -> None: ...

    def merge(self, con: duckdb.DuckDBPyConnection, ctx: Context, parts: list[Path]) -> Any: ...


@dataclass
class ProfileAnalysis:
    """Output: the profile as JSON (see profile.finish)."""

    name: str
    spec: ProfileSpec
    where: list[Filter]

    def _needed(self, ctx: Context) -> list[str]:
        return sorted({*(self.spec.columns or ctx.dataset.names), *(f.column for f in self.where)})

    def _partial(self, con: duckdb.DuckDBPyConnection, ctx: Context,
                 files: list[str] | None) -> dict[str, Any]:
        src = source(con, ctx.dataset, files, needed=self._needed(ctx))
        return profile.partial(con, src, ctx.dataset, self.spec.columns, self.where,
                               ctx.settings.analysis_exact_distinct_limit, ctx.sketch)

    def check(self, ctx: Context) -> None:
        profile.columns_of(ctx.dataset, self.spec.columns)
        from tasks.analysis.engine import Sql
        from tasks.analysis.filters import to_sql

        to_sql(self.where, {c.name: c.kind for c in ctx.dataset.columns}, Sql())

    def inline(self, con: duckdb.DuckDBPyConnection, ctx: Context) -> dict[str, Any]:
        return profile.finish(self._partial(con, ctx, None), self.spec.top, ctx.sketch)

    def write_partial(self, con: duckdb.DuckDBPyConnection, ctx: Context, files: list[str],
                      out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "profile.json").write_text(json.dumps(self._partial(con, ctx, files)))

    def merge(self, con: duckdb.DuckDBPyConnection, ctx: Context, parts: list[Path]) -> dict[str, Any]:
        partials = [json.loads((p / "profile.json").read_text()) for p in parts]
        merged = profile.merge(partials, ctx.settings.analysis_exact_distinct_limit)
        return profile.finish(merged, self.spec.top, ctx.sketch)


@dataclass
class AggregateAnalysis:
    """Output: an `aggregate.Table` held by the connection."""

    name: str
    spec: AggregateSpec
    where: list[Filter]

    def plan(self, ctx: Context) -> aggregate.AggPlan:
        return aggregate.plan(self.spec, ctx.dataset, self.where)

    def check(self, ctx: Context) -> None:
        self.plan(ctx)

    def inline(self, con: duckdb.DuckDBPyConnection, ctx: Context) -> aggregate.Table:
        p = self.plan(ctx)
        src = source(con, ctx.dataset, needed=p.needed)
        return aggregate.materialize(con, aggregate.final_sql(p, ctx.sketch, src=src), self.name)

    def write_partial(self, con: duckdb.DuckDBPyConnection, ctx: Context, files: list[str],
                      out: Path) -> None:
        p = self.plan(ctx)
        src = source(con, ctx.dataset, files, needed=p.needed)
        aggregate.write_partials(con, p, src, ctx.sketch, out)

    def merge(self, con: duckdb.DuckDBPyConnection, ctx: Context, parts: list[Path]) -> aggregate.Table:
        p = self.plan(ctx)
        files = {t: [str(d / f"{t}.parquet") for d in parts] for t in p.tables}
        return aggregate.materialize(con, aggregate.final_sql(p, ctx.sketch, parts=files), self.name)
