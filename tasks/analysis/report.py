"""Reports: the sections' results as a chart (PNG), an HTML page and, if asked, an email.

The email is another job: `email.send` is enqueued (source "workflow") with the summary and
the chart attached, so its delivery is retried and recorded like any job. If no `email.send`
task is registered the report fails with a clear message (and `api.check` says so before the
report is even published).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.analysis.chart import draw
from tasks.analysis.errors import EmailUnavailable
from tasks.analysis.kinds import score, table_result
from tasks.analysis.runner import Context
from tasks.analysis.spec import ReportInput

if TYPE_CHECKING:
    import duckdb
    from celery import Celery

    from worker.base import ConveyorTask

HTML_ROWS = 50
EMAIL_TASK = "email.send"


def fmt(value: Any) -> str:
    """Numbers for people: thousands separators, at most 4 significant decimals."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) >= 100 else f"{value:,.4g}"
    return str(value)


def build(con: duckdb.DuckDBPyConnection, ctx: Context, data: ReportInput, outputs: dict[str, Any],
          task: ConveyorTask | None) -> dict[str, Any]:
    out = ctx.out_dir
    generated = datetime.now(UTC).replace(microsecond=0).isoformat()
    summary: list[str] = []
    prof = outputs.get("profile")
    aggs = []
    for i, spec in enumerate(data.aggregates):
        res = table_result(con, ctx, outputs[f"aggregate-{i + 1}"], f"aggregate-{i + 1}", HTML_ROWS)
        title = ", ".join(str(m) for m in spec.metrics)
        if spec.key_names:
            title += f" by {', '.join(spec.key_names)}"
        aggs.append({"title": title, **res, "spec": spec})
        summary.append(f"{title}: {res['row_count']:,} rows")
    found, anomalies = None, None
    if data.anomalies:
        found, anomalies = score(con, ctx, data.anomalies, outputs["series"], "anomalies")
        summary.insert(0, _anomaly_line(anomalies))
    if prof:
        summary.insert(0, _profile_line(prof))

    chart = _chart(out / "chart.png", data, found, aggs, prof)
    html = _html(out / "report.html", data.title, ctx.dataset.describe(), generated, summary,
                 chart.name, anomalies, aggs, prof)
    result: dict[str, Any] = {
        "dataset": ctx.dataset.describe(), "title": data.title, "generated_at": generated,
        "summary": summary, "files": {"html": str(html), "chart": str(chart)},
        "aggregates": [{"title": a["title"], "row_count": a["row_count"], "files": a["files"]} for a in aggs],
    }
    if anomalies:
        result["anomalies"] = {k: v for k, v in anomalies.items() if k != "anomalies"} | {
            "top": anomalies["anomalies"][:10]}
    if prof:
        result["profile"] = {"rows": prof["rows"], "columns": len(prof["columns"])}
    if data.email:
        if task is None:
            raise EmailUnavailable("the report asks for an email but runs without a task to enqueue it")
        result["email_job"] = send(task.app, data, ctx.dataset.path, summary, generated, chart)
    return result


def _profile_line(prof: dict[str, Any]) -> str:
    parts = [f"{prof['rows']:,} rows, {len(prof['columns'])} columns"]
    for c in prof["columns"]:
        if c.get("per_day") is not None and c["min"] is not None:
            parts.append(f"{c['name']} from {c['min']} to {c['max']}")
            break
    return "; ".join(parts)


def _anomaly_line(a: dict[str, Any]) -> str:
    line = (f"{a['anomaly_count']} anomal{'y' if a['anomaly_count'] == 1 else 'ies'} in {a['metric']} "
            f"per {a['bucket']} ({a['method']}, threshold {a['threshold']:g})")
    top = a["anomalies"][:3]
    if top:
        line += ": " + "; ".join(f"{t['bucket']} {fmt(t['value'])} (expected {fmt(t['expected'][0])} to "
                                 f"{fmt(t['expected'][1])})" for t in top)
    return line


def _chart(path: Path, data: ReportInput, found: list[dict[str, Any]] | None,
           aggs: list[dict[str, Any]], prof: dict[str, Any] | None) -> Path:
    if found:
        assert data.anomalies is not None
        return draw(path, f"{data.anomalies.metric} per {data.anomalies.bucket.unit}", anomalies=found,
                    metric=str(data.anomalies.metric))
    if aggs:
        spec = aggs[0]["spec"]
        metric = spec.metrics[0].name
        return draw(path, aggs[0]["title"], rows=aggs[0]["rows"], keys=spec.key_names,
                    bucket=spec.bucket_name, metric=metric)
    return draw(path, data.title, profile=prof)


def _html(path: Path, title: str, dataset: dict[str, Any], generated: str, summary: list[str],
          chart: str, anomalies: dict[str, Any] | None, aggs: list[dict[str, Any]],
          prof: dict[str, Any] | None) -> Path:
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("tasks.analysis", "templates"),
                      autoescape=select_autoescape(["html", "j2"]))
    page = env.get_template("report.html.j2").render(
        title=title, dataset=dataset, generated_at=generated, summary=summary, chart=chart,
        anomalies=anomalies, aggregates=aggs, profile=prof, fmt=fmt)
    path.write_text(page, encoding="utf-8")
    return path


def email_registered(app: Celery) -> None:
    """Raise `EmailUnavailable` unless this app can enqueue `email.send`."""
    from jobs.client import Client
    from jobs.errors import UnknownTask

    try:
        Client(app).spec(EMAIL_TASK)
    except UnknownTask:
        raise EmailUnavailable(
            f"the report asks for an email, but no {EMAIL_TASK!r} task is registered on this "
            "Conveyor; drop the email addresses or install the email family") from None


def send(app: Celery, data: ReportInput, dataset: str, summary: list[str], generated: str,
         chart: Path) -> str:
    """Enqueue `email.send` with the report's summary and chart; returns the email job's id."""
    from jobs.client import Client
    from jobs.errors import InvalidInput

    email_registered(app)
    payload = {
        "to": list(data.email),
        "subject": data.subject or f"{data.title} ({generated[:10]})",
        "template": "analysis_report",
        "context": {"title": data.title, "summary": summary, "dataset": dataset, "generated_at": generated},
        "attachments": [str(chart)],
    }
    try:
        job = Client(app).enqueue(EMAIL_TASK, payload, source="workflow")
    except InvalidInput as exc:
        raise EmailUnavailable(f"{EMAIL_TASK} refused the report's email: {exc}") from None
    return job.id
