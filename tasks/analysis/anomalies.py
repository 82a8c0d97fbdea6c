"""Anomalies: buckets of a metric far from their rolling baseline.

The metric is aggregated per time bucket (and per group) by the aggregate machinery, so a
split data set is handled the same way. Then, per series, each bucket is compared with the
`window` buckets before it (never itself, so a spike does not hide in its own baseline):
- robust_z: z = 0.6745 (x - median) / MAD; flagged when |z| > threshold (3.5 by default,
  Iglewicz and Hoaglin). The expected range is median +- threshold MAD / 0.6745. When MAD is
  0 (a flat baseline) the mean absolute deviation times 1.2533 stands in for MAD / 0.6745.
- iqr: Tukey's fences, flagged outside [Q1 - k IQR, Q3 + k IQR] (k = threshold, 1.5).
Missing buckets of a count, sum or distinct count are zeros (no orders that day is news);
for other metrics they are gaps, skipped. A bucket needs `min_periods` buckets of history.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from tasks.analysis.engine import to_json
from tasks.analysis.spec import AnomalySpec

ZERO_FILLED = {"count", "sum", "distinct"}
MAX_BUCKETS_PER_SERIES = 100_000


@dataclass
class Point:
    bucket: Any
    value: float | None
    baseline: float | None = None
    low: float | None = None
    high: float | None = None
    score: float | None = None
    anomaly: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"bucket": to_json(self.bucket), "value": self.value, "baseline": self.baseline,
                "expected": [self.low, self.high] if self.low is not None else None,
                "score": self.score, "anomaly": self.anomaly}


def _quartiles(values: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def detect(values: list[float | None], method: str, threshold: float, window: int,
           min_periods: int) -> list[Point]:
    """Score each value against the (non-missing) values of the `window` buckets before it."""
    points = []
    for idx, x in enumerate(values):
        p = Point(bucket=None, value=x)
        history = [v for v in values[max(0, idx - window): idx] if v is not None]
        if x is not None and len(history) >= min_periods:
            med = statistics.median(history)
            if method == "iqr":
                q1, q3 = _quartiles(history)
                spread = q3 - q1
                p.baseline, p.low, p.high = med, q1 - threshold * spread, q3 + threshold * spread
                if spread > 0:
                    p.score = (x - q3) / spread if x > q3 else (x - q1) / spread if x < q1 else 0.0
                p.anomaly = x < p.low or x > p.high
            else:
                mad = statistics.median(abs(v - med) for v in history)
                scale = mad / 0.6745 if mad > 0 else 1.2533 * statistics.fmean(abs(v - med) for v in history)
                p.baseline = med
                p.low, p.high = med - threshold * scale, med + threshold * scale
                if scale > 0:
                    p.score = (x - med) / scale
                    p.anomaly = abs(p.score) > threshold
                else:
                    p.anomaly = x != med
        points.append(p)
    return points


def _step(unit: str, t: Any) -> Any:
    if unit == "hour":
        return t + timedelta(hours=1)
    if unit == "day":
        return t + timedelta(days=1)
    if unit == "week":
        return t + timedelta(days=7)
    year, month = (t.year + 1, 1) if t.month == 12 else (t.year, t.month + 1)
    return t.replace(year=year, month=month)


def fill(rows: list[tuple[Any, float | None]], unit: str, zero: bool) -> list[tuple[Any, float | None]]:
    """The series with every bucket between its first and last, missing ones 0 or None."""
    if not rows:
        return []
    have = dict(rows)
    out: list[tuple[Any, float | None]] = []
    t, end = rows[0][0], rows[-1][0]
    while t <= end and len(out) < MAX_BUCKETS_PER_SERIES:
        out.append((t, have.get(t, 0 if zero else None)))
        t = _step(unit, t)
    return out


def series(raw: list[tuple[Any, ...]], spec: AnomalySpec) -> list[dict[str, Any]]:
    """Scored series, one per group, from the aggregate's typed rows (groups, bucket, value)."""
    groups: dict[tuple[Any, ...], list[tuple[Any, float | None]]] = {}
    ng = len(spec.group_by)
    for r in raw:
        key, bucket, value = tuple(r[:ng]), r[ng], r[ng + 1]
        if bucket is None:
            continue
        groups.setdefault(key, []).append((bucket, None if value is None else float(value)))
    out = []
    zero = spec.metric.func in ZERO_FILLED
    for key, pts in groups.items():
        pts.sort(key=lambda kv: kv[0])
        filled = fill(pts, spec.bucket.unit, zero)
        scored = detect([v for _, v in filled], spec.method, spec.effective_threshold, spec.window,
                        spec.effective_min_periods)
        for p, (b, _) in zip(scored, filled, strict=False):
            p.bucket = b
        out.append({"group": {g: to_json(k) for g, k in zip(spec.group_by, key, strict=False)},
                    "points": scored})
    return out


def flagged(found: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Every anomalous bucket, largest deviation first."""
    out = []
    for s in found:
        for p in s["points"]:
            if p.anomaly:
                high = p.value is not None and p.high is not None and p.value > p.high
                direction = "high" if high else "low"
                out.append({"group": s["group"], "metric": metric, **p.to_json(), "direction": direction})
    out.sort(key=lambda a: (a["score"] is None, -abs(a["score"] or 0.0)))
    return out
