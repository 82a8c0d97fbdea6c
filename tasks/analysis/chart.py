"""The report's chart: one PNG, drawn with matplotlib's object API on the Agg canvas.

No pyplot: it keeps global state and picks a GUI backend when it can; a worker wants neither.
What is drawn, in order of preference: the anomalies series (value, expected band, flagged
points), a time-bucketed aggregate (one line per group), a plain aggregate (bars), the
profile's rows per day, or the profile's null share per column.
"""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import Any

MAX_LINES = 8
MAX_BARS = 20


def _when(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return datetime.fromisoformat(v)
        except ValueError:
            return v
    return v


def draw(path: Path, title: str, *, anomalies: list[dict[str, Any]] | None = None,
         metric: str | None = None, rows: list[dict[str, Any]] | None = None,
         keys: list[str] | None = None, bucket: str | None = None,
         profile: dict[str, Any] | None = None) -> Path:
    """Draw the most telling chart the report's sections allow, and save it as `path`."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.8), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title)
    if anomalies:
        _anomalies(ax, anomalies, metric or "value")
    elif rows and keys is not None and bucket:
        _lines(ax, rows, keys, bucket, metric or "")
    elif rows and keys:
        _bars(ax, rows, keys[0], metric or "")
    elif profile:
        _profile(ax, profile)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    ax.grid(True, alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _label(group: dict[str, Any]) -> str:
    return ", ".join(f"{v}" for v in group.values()) or "all"


def _anomalies(ax: Any, found: list[dict[str, Any]], metric: str) -> None:
    for s in found[:MAX_LINES]:
        pts = s["points"]
        xs = [p.bucket for p in pts]
        line = ax.plot(xs, [p.value for p in pts], label=_label(s["group"]), linewidth=1.2)[0]
        band = [(p.bucket, p.low, p.high) for p in pts if p.low is not None]
        if band:
            ax.fill_between([b[0] for b in band], [b[1] for b in band], [b[2] for b in band],
                            color=line.get_color(), alpha=0.12)
        hits = [p for p in pts if p.anomaly]
        if hits:
            ax.scatter([p.bucket for p in hits], [p.value for p in hits], color="red", zorder=3, s=28)
    ax.set_ylabel(metric)
    if len(found) > 1:
        ax.legend(fontsize="small")


def _lines(ax: Any, rows: list[dict[str, Any]], keys: list[str], bucket: str, metric: str) -> None:
    groups: dict[tuple[Any, ...], list[tuple[Any, Any]]] = {}
    group_keys = [k for k in keys if k != bucket]
    for r in rows:
        groups.setdefault(tuple(r[k] for k in group_keys), []).append((_when(r[bucket]), r[metric]))
    ranked = sorted(groups.items(), key=lambda kv: -sum(float(v or 0) for _, v in kv[1]))
    for key, pts in ranked[:MAX_LINES]:
        pts = sorted((p for p in pts if p[0] is not None), key=lambda p: p[0])
        ax.plot([p[0] for p in pts], [float(p[1]) if p[1] is not None else None for p in pts],
                label=", ".join(map(str, key)) or "all", linewidth=1.2)
    ax.set_ylabel(metric)
    if len(ranked) > 1:
        ax.legend(fontsize="small")


def _bars(ax: Any, rows: list[dict[str, Any]], key: str, metric: str) -> None:
    top = sorted(rows, key=lambda r: -float(r[metric] or 0))[:MAX_BARS]
    ax.bar([str(r[key]) for r in top], [float(r[metric] or 0) for r in top])
    ax.set_ylabel(metric)
    ax.tick_params(axis="x", labelrotation=45)


def _profile(ax: Any, profile: dict[str, Any]) -> None:
    temporal = [c for c in profile["columns"] if c.get("per_day")]
    if temporal:
        col = temporal[0]
        days = [date.fromisoformat(d["day"]) for d in col["per_day"]]
        ax.plot(days, [d["rows"] for d in col["per_day"]], linewidth=1.2)
        ax.set_ylabel(f"rows per day ({col['name']})")
        return
    rows = max(profile["rows"], 1)
    cols = profile["columns"][:MAX_BARS]
    ax.bar([c["name"] for c in cols], [100 * c["nulls"] / rows for c in cols])
    ax.set_ylabel("% null")
    ax.tick_params(axis="x", labelrotation=45)
