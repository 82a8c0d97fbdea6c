"""What each analysis task is made of: its input, its analyses, and how it finishes.

The runner computes the analyses (inline or split); `finish` turns their outputs into the
job's result and files. Finishing always happens in one process with the merged outputs,
so a split job and a single-process job finish identically.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.analysis.anomalies import flagged, series
from tasks.analysis.engine import ident
from tasks.analysis.runner import AggregateAnalysis, Analysis, Context, ProfileAnalysis
from tasks.analysis.spec import (
    AggregateInput,
    AggregateSpec,
    AnomaliesInput,
    AnomalySpec,
    DatasetInput,
    ProfileInput,
    ProfileSpec,
    ReportInput,
)

if TYPE_CHECKING:
    import duckdb

    from tasks.analysis.aggregate import Table
    from worker.base import ConveyorTask

Finish = Callable[["duckdb.DuckDBPyConnection", Context, Any, dict[str, Any], "ConveyorTask | None"], Any]


@dataclass(frozen=True)
class Kind:
    task: str
    input: type[DatasetInput]
    analyses: Callable[[Any], list[Analysis]]
    finish: Finish


# --- profile ------------------------------------------------------------------------------------------
def _profile_analyses(data: ProfileInput) -> list[Analysis]:
    return [ProfileAnalysis("profile", ProfileSpec(columns=data.columns, top=data.top), data.where)]


def _profile_finish(con: duckdb.DuckDBPyConnection, ctx: Context, data: ProfileInput,
                    outputs: dict[str, Any], task: ConveyorTask | None) -> dict[str, Any]:
    return {"dataset": ctx.dataset.describe(), **outputs["profile"]}


# --- aggregate ----------------------------------------------------------------------------------------
def aggregate_spec(data: AggregateInput) -> AggregateSpec:
    return AggregateSpec.model_validate(data.model_dump(include=set(AggregateSpec.model_fields)))


def _aggregate_analyses(data: AggregateInput) -> list[Analysis]:
    return [AggregateAnalysis("aggregate", aggregate_spec(data), [])]


def table_result(con: duckdb.DuckDBPyConnection, ctx: Context, table: Table, stem: str,
                 keep: int) -> dict[str, Any]:
    """An aggregate's result: the first `keep` rows with the job, all of them in files."""
    files = table.write(con, ctx.out_dir, stem)
    rows = table.head(con, keep)
    return {"columns": table.columns, "row_count": table.total, "rows": rows,
            "truncated": table.total > len(rows), "files": files}


def _aggregate_finish(con: duckdb.DuckDBPyConnection, ctx: Context, data: AggregateInput,
                      outputs: dict[str, Any], task: ConveyorTask | None) -> dict[str, Any]:
    table = outputs["aggregate"]
    return {"dataset": ctx.dataset.describe(),
            **table_result(con, ctx, table, "aggregate", ctx.settings.analysis_max_result_rows)}


# --- anomalies ----------------------------------------------------------------------------------------
def anomaly_spec(data: AnomaliesInput) -> AnomalySpec:
    return AnomalySpec.model_validate(data.model_dump(include=set(AnomalySpec.model_fields)))


def _anomalies_analyses(data: AnomaliesInput) -> list[Analysis]:
    return [AggregateAnalysis("series", anomaly_spec(data).aggregate(), [])]


def score(con: duckdb.DuckDBPyConnection, ctx: Context, spec: AnomalySpec, table: Table,
          stem: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The scored series of an anomalies analysis, its points written to files, and a summary."""
    raw = con.execute(f"SELECT * FROM {ident(table.name)}").fetchall()
    found = series(raw, spec)
    hits = flagged(found, str(spec.metric))
    files = _write_points(found, spec, ctx.out_dir, stem)
    keep = ctx.settings.analysis_max_result_rows
    summary = {
        "metric": str(spec.metric), "bucket": str(spec.bucket), "group_by": spec.group_by,
        "method": spec.method, "threshold": spec.effective_threshold, "window": spec.window,
        "series": len(found), "buckets": sum(len(s["points"]) for s in found),
        "anomaly_count": len(hits), "anomalies": hits[:keep], "truncated": len(hits) > keep,
        "files": files,
    }
    return found, summary


def _write_points(found: list[dict[str, Any]], spec: AnomalySpec, out: Path, stem: str) -> dict[str, str]:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    bucket = spec.aggregate().bucket_name or spec.bucket.unit
    records = []
    for s in found:
        for p in s["points"]:
            records.append({**s["group"], bucket: p.bucket, "value": p.value,
                            "baseline": p.baseline, "expected_low": p.low, "expected_high": p.high,
                            "score": p.score, "anomaly": p.anomaly})
    names = [*spec.group_by, bucket, "value", "baseline", "expected_low", "expected_high",
             "score", "anomaly"]
    empty = {n: pa.array([], pa.null()) for n in names}
    table = pa.Table.from_pylist(records) if records else pa.table(empty)
    out.mkdir(parents=True, exist_ok=True)
    files = {"csv": out / f"{stem}.csv", "parquet": out / f"{stem}.parquet"}
    pacsv.write_csv(table, files["csv"])
    pq.write_table(table, files["parquet"])
    return {k: str(v) for k, v in files.items()}


def _anomalies_finish(con: duckdb.DuckDBPyConnection, ctx: Context, data: AnomaliesInput,
                      outputs: dict[str, Any], task: ConveyorTask | None) -> dict[str, Any]:
    _, summary = score(con, ctx, anomaly_spec(data), outputs["series"], "anomalies")
    return {"dataset": ctx.dataset.describe(), **summary}


# --- report -------------------------------------------------------------------------------------------
def _report_analyses(data: ReportInput) -> list[Analysis]:
    out: list[Analysis] = []
    if data.profile:
        out.append(ProfileAnalysis("profile", ProfileSpec(), data.where))
    out += [AggregateAnalysis(f"aggregate-{i + 1}", spec, data.where)
            for i, spec in enumerate(data.aggregates)]
    if data.anomalies:
        out.append(AggregateAnalysis("series", data.anomalies.aggregate(), data.where))
    return out


def _report_finish(con: duckdb.DuckDBPyConnection, ctx: Context, data: ReportInput,
                   outputs: dict[str, Any], task: ConveyorTask | None) -> dict[str, Any]:
    from tasks.analysis.report import build

    return build(con, ctx, data, outputs, task)


KINDS: dict[str, Kind] = {
    "analysis.profile": Kind("analysis.profile", ProfileInput, _profile_analyses, _profile_finish),
    "analysis.aggregate": Kind("analysis.aggregate", AggregateInput, _aggregate_analyses, _aggregate_finish),
    "analysis.anomalies": Kind("analysis.anomalies", AnomaliesInput, _anomalies_analyses, _anomalies_finish),
    "analysis.report": Kind("analysis.report", ReportInput, _report_analyses, _report_finish),
}
