"""The analysis tasks. Each body: resolve the data set, check the request, then run it inline
(one file) or split across workers (several files; see split.py)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from tasks.analysis import split
from tasks.analysis.datasets import resolve
from tasks.analysis.engine import connect, engine_errors
from tasks.analysis.kinds import KINDS
from tasks.analysis.runner import Context
from tasks.analysis.spec import (
    AggregateInput,
    AnomaliesInput,
    DatasetInput,
    ProfileInput,
    ReportInput,
)
from tasks.registry import job
from worker.base import ConveyorTask

SAMPLE = "analysis-sample"


def run(task: ConveyorTask, name: str, data: DatasetInput) -> dict[str, Any]:
    """Run analysis task `name` on `data`: inline, or launch the split (which defers the result)."""
    settings = task.settings
    kind = KINDS[name]
    job_id = task.request.id or str(uuid.uuid4())
    with connect(settings) as con:
        with engine_errors(f"reading the schema of {data.path!r}"):
            dataset = resolve(con, settings.data_dir, data.path, format=data.format,
                              delimiter=data.delimiter, header=data.header, types=data.types)
        ctx = Context(settings, dataset, job_id)
        analyses = kind.analyses(data)
        for a in analyses:
            a.check(ctx)  # type: ignore[attr-defined]
        if (data.split and len(dataset.files) >= settings.analysis_split_min_files
                and not task.request.called_directly):
            split.launch(task, name, data.model_dump(mode="json"), dataset)
        with engine_errors(f"{name} of {data.path!r}"):
            outputs = {}
            for i, a in enumerate(analyses):
                task.progress(i, len(analyses), f"{a.name}")
                outputs[a.name] = a.inline(con, ctx)
            result = kind.finish(con, ctx, data, outputs, task)
    task.progress(len(analyses), len(analyses), "finished")
    return {**result, "split": None}


@job("analysis.profile", input=ProfileInput, base=split.SplitParentTask,
     example={"path": f"{SAMPLE}/orders.csv"})
def profile(task: ConveyorTask, data: ProfileInput) -> dict[str, Any]:
    """Profile each column of a CSV, Parquet or JSON-lines data set: types, nulls, ranges, quantiles."""
    return run(task, "analysis.profile", data)


@job("analysis.aggregate", input=AggregateInput, base=split.SplitParentTask, example={
    "path": f"{SAMPLE}/orders", "group_by": ["region"], "bucket": "week:created_at",
    "metrics": ["count", "sum:amount", "mean:amount", "p95:amount"], "where": ["status = paid"]})
def aggregate(task: ConveyorTask, data: AggregateInput) -> dict[str, Any]:
    """Group a data set by columns and/or a time bucket and compute metrics; rows to CSV and Parquet."""
    return run(task, "analysis.aggregate", data)


@job("analysis.anomalies", input=AnomaliesInput, base=split.SplitParentTask, example={
    "path": f"{SAMPLE}/orders", "metric": "sum:amount", "bucket": "day:created_at",
    "where": ["status = paid"]})
def anomalies(task: ConveyorTask, data: AnomaliesInput) -> dict[str, Any]:
    """Flag time buckets of a metric far from their rolling baseline (robust z-score or IQR)."""
    return run(task, "analysis.anomalies", data)


@job("analysis.report", input=ReportInput, base=split.SplitParentTask, example={
    "path": f"{SAMPLE}/orders", "title": "Daily sales",
    "aggregates": [{"group_by": ["region"], "bucket": "day:created_at", "metrics": ["sum:amount", "count"]}],
    "anomalies": {"metric": "sum:amount", "bucket": "day:created_at"}})
def report(task: ConveyorTask, data: ReportInput) -> dict[str, Any]:
    """Run profile, aggregates and anomalies; render a chart and an HTML page; optionally email them."""
    return run(task, "analysis.report", data)


# --- the split: internal tasks ------------------------------------------------------------------
@job("analysis.partition_run", input=split.PartitionInput, ignore_result=False)
def partition_run(task: ConveyorTask, data: split.PartitionInput) -> dict[str, Any]:
    """Compute one partition's partial results (internal: part of a split analysis)."""
    plan = data.plan
    if split.parent_finished(task, plan):
        return {"index": data.index, "skipped": "the parent job is already finished"}
    kind = KINDS[plan.task]
    payload = kind.input.model_validate(plan.payload)
    ctx = Context(task.settings, plan.dataset, plan.job_id)
    where = f"partition {data.index + 1} of {plan.partitions}"
    reading = f"reading {Path(data.files[0]).name}"
    if len(data.files) > 1:
        reading += f" and {len(data.files) - 1} more"
    try:
        with connect(task.settings) as con, engine_errors(reading):
            for a in kind.analyses(payload):
                a.write_partial(con, ctx, data.files, Path(plan.scratch) / a.name / str(data.index))
    except Exception as exc:
        if split.final(task, exc):
            split.fail(task, plan, exc, where)
        raise
    split.progress(task, plan, data.index)
    return {"index": data.index, "files": len(data.files)}


@job("analysis.partition_merge", input=split.MergeInput)
def partition_merge(task: ConveyorTask, data: split.MergeInput) -> dict[str, Any]:
    """Merge the partitions' partial results and finish the parent job (internal)."""
    plan = data.plan
    scratch = Path(plan.scratch)
    if split.parent_finished(task, plan):
        _remove(scratch)
        return {"parent": plan.job_id, "skipped": "the parent job is already finished"}
    kind = KINDS[plan.task]
    payload = kind.input.model_validate(plan.payload)
    ctx = Context(task.settings, plan.dataset, plan.job_id)
    where = f"merging {plan.partitions} partitions"
    try:
        with connect(task.settings) as con, engine_errors("the merge"):
            analyses = kind.analyses(payload)
            outputs = {a.name: a.merge(con, ctx, plan.part_dirs(a.name)) for a in analyses}
            result = kind.finish(con, ctx, payload, outputs, task)
    except Exception as exc:
        if split.final(task, exc):
            split.fail(task, plan, exc, where)
            _remove(scratch)
        raise
    split.complete(task, plan, {**result, "split": {"partitions": plan.partitions}})
    _remove(scratch)
    return {"parent": plan.job_id, "partitions": plan.partitions}


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
