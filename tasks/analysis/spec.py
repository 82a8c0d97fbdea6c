"""The payloads of the analysis tasks, checked as far as they can be without the data.

These models run wherever a payload is validated, `Client.enqueue` included, so a malformed
filter, an unknown metric, a bucket without a column or a path with `..` is refused before
anything is published. What needs the data (does the column exist, does `sum` fit it) is
checked by `tasks.analysis.api.check` before publishing and again by the task itself.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field, field_validator, model_validator

from tasks.analysis.datasets import TYPE_PATTERN
from tasks.analysis.filters import Filter

MetricFunc = Literal["count", "sum", "mean", "min", "max", "median", "p95", "distinct"]
METRICS: tuple[str, ...] = MetricFunc.__args__  # type: ignore[attr-defined]
BucketUnit = Literal["hour", "day", "week", "month"]
UNITS: tuple[str, ...] = BucketUnit.__args__  # type: ignore[attr-defined]
QUANTILES = {"median": 0.5, "p95": 0.95}


class Metric(BaseModel):
    """`func` over `column`: "sum:amount", "p95:amount", "count" (rows), "count:email" (non-null)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    func: MetricFunc
    column: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data: Any) -> Any:
        if isinstance(data, str):
            func, _, column = data.partition(":")
            func = func.strip().lower()
            if func not in METRICS:
                raise ValueError(f"unknown metric {func!r} in {data!r}; one of {', '.join(METRICS)}")
            return {"func": func, "column": column.strip() or None}
        return data

    @model_validator(mode="after")
    def _needs_column(self) -> Metric:
        if self.column is None and self.func != "count":
            raise ValueError(f"metric {self.func} needs a column, like {self.func}:amount")
        return self

    @property
    def name(self) -> str:
        return self.func if self.column is None else f"{self.func}_{self.column}"

    def __str__(self) -> str:
        return self.func if self.column is None else f"{self.func}:{self.column}"


class Bucket(BaseModel):
    """A time bucket of a date or timestamp column: "day:created_at"."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    unit: BucketUnit
    column: str = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data: Any) -> Any:
        if isinstance(data, str):
            unit, sep, column = data.partition(":")
            if not sep or not column.strip():
                raise ValueError(f"bucket {data!r} is not unit:column, like day:created_at")
            unit = unit.strip().lower()
            if unit not in UNITS:
                raise ValueError(f"unknown bucket unit {unit!r}; one of {', '.join(UNITS)}")
            return {"unit": unit, "column": column.strip()}
        return data

    def __str__(self) -> str:
        return f"{self.unit}:{self.column}"


class DatasetInput(BaseModel):
    """Which data to read and how. Paths are relative to the data directory."""

    model_config = ConfigDict(extra="forbid")
    path: str = Field(min_length=1, max_length=4096,
                      description="file, folder or glob under the data directory")
    format: Literal["csv", "parquet", "json"] | None = Field(
        default=None, description="default: from the file names")
    delimiter: str | None = Field(default=None, min_length=1, max_length=4,
                                  description="CSV: default detected")
    header: bool | None = Field(default=None, description="CSV: default detected")
    types: dict[str, str] = Field(default_factory=dict,
                                  description='CSV: column types to use, e.g. {"amount": "DECIMAL(12,2)"}')
    where: list[Filter] = Field(default_factory=list, max_length=50,
                                description='filters, e.g. ["status = paid", "amount >= 10"]')
    split: bool = Field(default=True, description="one subtask per file for multi-file data sets")

    @field_validator("path")
    @classmethod
    def _no_parent(cls, value: str) -> str:
        if "\x00" in value or ".." in PurePath(value).parts:
            raise ValueError("the path must stay inside the data directory (no '..')")
        return value

    @field_validator("types")
    @classmethod
    def _known_types(cls, value: dict[str, str]) -> dict[str, str]:
        for name, typ in value.items():
            if not TYPE_PATTERN.match(typ.strip()):
                raise ValueError(f"type {typ!r} of {name!r} is not BOOLEAN, BIGINT, DOUBLE, "
                                 "DECIMAL(p,s), VARCHAR, DATE, TIMESTAMP or TIMESTAMPTZ")
        return value

    @model_validator(mode="after")
    def _csv_options(self) -> DatasetInput:
        if self.format in ("parquet", "json") and (self.delimiter or self.header is not None or self.types):
            raise ValueError("delimiter, header and types apply to CSV only")
        return self


class ProfileSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    columns: list[str] = Field(default_factory=list, max_length=500,
                               description="columns to profile (default: all)")
    top: int = Field(default=10, ge=0, le=100, description="most frequent values listed per column")


class AggregateSpec(BaseModel):
    """Group by columns and/or a time bucket; compute metrics; sort; limit."""

    model_config = ConfigDict(extra="forbid")
    group_by: list[str] = Field(default_factory=list, max_length=10)
    bucket: Bucket | None = Field(default=None, description='time bucket, e.g. "day:created_at"')
    metrics: list[Metric] = Field(default_factory=lambda: [Metric(func="count")], min_length=1,
                                  max_length=50, description='e.g. ["count", "sum:amount", "p95:amount"]')
    where: list[Filter] = Field(default_factory=list, max_length=50)
    order_by: list[str] = Field(default_factory=list, max_length=10,
                                description='output columns; "-name" or "name desc" sorts descending')
    limit: int | None = Field(default=None, ge=1, description="keep only this many rows")

    @property
    def bucket_name(self) -> str | None:
        if self.bucket is None:
            return None
        unit = self.bucket.unit
        return f"{self.bucket.column}_{unit}" if unit in self.group_by else unit

    @property
    def key_names(self) -> list[str]:
        return [*self.group_by, *([self.bucket_name] if self.bucket_name else [])]

    @property
    def output_names(self) -> list[str]:
        return [*self.key_names, *(m.name for m in self.metrics)]

    def sort_keys(self) -> list[tuple[str, bool]]:
        """(output column, descending) pairs."""
        out = []
        for item in self.order_by:
            text = item.strip()
            desc = text.startswith("-") or text.lower().endswith(" desc")
            name = text.lstrip("-").strip()
            for suffix in (" desc", " asc"):
                if name.lower().endswith(suffix):
                    name = name[: -len(suffix)].strip()
            out.append((name, desc))
        return out

    @model_validator(mode="after")
    def _consistent(self) -> AggregateSpec:
        names = self.output_names
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"output columns appear twice: {', '.join(dupes)}")
        for name, _ in self.sort_keys():
            if name not in names:
                raise ValueError(f"cannot sort by {name!r}; the output columns are {', '.join(names)}")
        return self


class AnomalySpec(BaseModel):
    """A metric per time bucket (per group), compared with its rolling baseline."""

    model_config = ConfigDict(extra="forbid")
    metric: Metric = Field(default_factory=lambda: Metric(func="count"), description='e.g. "sum:amount"')
    bucket: Bucket = Field(description='e.g. "day:created_at"')
    group_by: list[str] = Field(default_factory=list, max_length=5, description="one series per group")
    where: list[Filter] = Field(default_factory=list, max_length=50)
    method: Literal["robust_z", "iqr"] = "robust_z"
    threshold: float | None = Field(default=None, gt=0,
                                    description="robust_z: |z| above it (3.5); iqr: Tukey's k (1.5)")
    window: int = Field(default=14, ge=3, le=1000, description="buckets in the rolling baseline")
    min_periods: int | None = Field(default=None, ge=3, description="buckets of history needed (window/2)")

    @property
    def effective_threshold(self) -> float:
        return self.threshold if self.threshold is not None else (3.5 if self.method == "robust_z" else 1.5)

    @property
    def effective_min_periods(self) -> int:
        return min(self.min_periods or max(3, self.window // 2), self.window)

    def aggregate(self) -> AggregateSpec:
        return AggregateSpec(group_by=self.group_by, bucket=self.bucket, metrics=[self.metric],
                             where=self.where)


class ProfileInput(DatasetInput, ProfileSpec):
    """Profile every column of a data set."""


class AggregateInput(DatasetInput, AggregateSpec):
    """Aggregate a data set."""


class AnomaliesInput(DatasetInput, AnomalySpec):
    """Find anomalous buckets of a metric over time."""


class ReportInput(DatasetInput):
    """A set of analyses rendered as a chart and an HTML page, optionally emailed."""

    title: str = Field(default="Analysis report", min_length=1, max_length=200)
    profile: bool = Field(default=True, description="include a profile of every column")
    aggregates: list[AggregateSpec] = Field(default_factory=list, max_length=10)
    anomalies: AnomalySpec | None = None
    email: list[EmailStr] = Field(default_factory=list, max_length=50, description="send it to these")
    subject: str | None = Field(default=None, max_length=300)

    @model_validator(mode="after")
    def _has_sections(self) -> ReportInput:
        if not (self.profile or self.aggregates or self.anomalies):
            raise ValueError("a report needs a profile, an aggregate or an anomalies section")
        return self
