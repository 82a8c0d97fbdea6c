"""`conveyor analyze ...`: build the payload, check it against the data, enqueue, show.

The top-level `cli` module is imported inside the commands, not at import time: `cli` imports
this module while it builds its command tree (and `python -m cli` runs it as `__main__`, so a
module-level import would load it a second time, half-built).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from jobs.client import Client

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(fn: F) -> F:
    """`cli.handle_errors`, looked up when the command runs."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from cli import handle_errors as handle

        return handle(fn)(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def print_table(title: str | None, columns: Any, rows: Any) -> None:
    from cli import print_table as show

    show(title, columns, rows)


def print_json(value: Any) -> None:
    from cli import print_json as show

    show(value)


def _client() -> Client:
    from jobs.client import default_client

    return default_client()


def _common(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options every analysis command takes."""
    options = [
        click.option("--format", "fmt", type=click.Choice(["csv", "parquet", "json"]),
                     help="Data format (default: from the file names)."),
        click.option("--delimiter", help="CSV delimiter (default: detected)."),
        click.option("--header/--no-header", default=None, help="CSV header row (default: detected)."),
        click.option("--type", "types", multiple=True, metavar="COLUMN=TYPE",
                     help="CSV: read COLUMN as TYPE, e.g. amount=DECIMAL(12,2) (repeatable)."),
        click.option("--where", multiple=True, metavar="FILTER",
                     help='Keep rows where "column op value" holds, e.g. "status = paid" (repeatable).'),
        click.option("--no-split", is_flag=True, help="Read every file in one worker, not one per file."),
        click.option("--no-check", is_flag=True,
                     help="Skip checking the data here (when this machine does not see the data directory)."),
        click.option("--wait", is_flag=True, help="Wait, with a progress bar, and print the result."),
        click.option("--timeout", type=float, default=None, help="With --wait: give up after SECONDS."),
        click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _payload(path: str, fmt: str | None, delimiter: str | None, header: bool | None,
             types: tuple[str, ...], where: tuple[str, ...], no_split: bool, **fields: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {"path": path}
    if fmt:
        payload["format"] = fmt
    if delimiter:
        payload["delimiter"] = delimiter
    if header is not None:
        payload["header"] = header
    if types:
        pairs = [t.partition("=") for t in types]
        if any(not sep or not name for name, sep, _ in pairs):
            raise click.BadParameter("use COLUMN=TYPE, e.g. amount=DECIMAL(12,2)", param_hint="--type")
        payload["types"] = {name: typ for name, _, typ in pairs}
    if where:
        payload["where"] = list(where)
    if no_split:
        payload["split"] = False
    payload.update({k: v for k, v in fields.items() if v not in (None, [], ())})
    return payload


def _names(values: tuple[str, ...]) -> list[str]:
    """Repeated or comma-separated names: --group-by region --group-by channel, or region,channel."""
    return [n.strip() for v in values for n in v.split(",") if n.strip()]


def _run(task: str, payload: dict[str, Any], no_check: bool, wait: bool,
         timeout: float | None, as_json: bool, show: Callable[[dict[str, Any]], None]) -> None:
    from cli import wait_for
    from tasks.analysis.api import submit

    job = submit(_client(), task, payload, check_data=not no_check, source="cli")
    if not wait:
        if as_json:
            print_json(job.to_dict())
        else:
            click.echo(f"enqueued {task} as job {job.id}")
        return
    done = wait_for(job, timeout, as_json)
    if as_json:
        print_json(done.to_dict())
    elif done.status == "succeeded":
        show(done.result or {})
        click.secho(f"job {done.id} succeeded in {done.runtime or 0:.2f}s", fg="green", err=True)
    else:
        click.secho(f"job {done.id} {done.status}: {done.error_type}: {done.error_message}",
                    fg="red", err=True)
    if done.status != "succeeded":
        sys.exit(1)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.4f}".rstrip("0").rstrip(".") if abs(v) < 1e15 else f"{v:g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return "" if v is None else str(v)


def _files(result: dict[str, Any]) -> None:
    for kind, path in (result.get("files") or {}).items():
        click.echo(f"{kind}: {path}")


@click.group()
def analyze() -> None:
    """Profile, aggregate and report on data sets (CSV, Parquet, JSON lines) on the workers.

    PATH is a file, a folder or a glob under the data directory (CONVEYOR_DATA_DIR). A folder
    or glob of several files is processed one file per worker task, then merged.

    \b
    Examples:
      conveyor analyze profile sales/orders.csv --wait
      conveyor analyze aggregate sales/orders --group-by region --bucket day:created_at \\
          --metric sum:amount --metric p95:amount --where "status = paid" --wait
      conveyor analyze anomalies sales/orders --metric sum:amount --bucket day:created_at --wait
      conveyor analyze report sales/orders --metric sum:amount --bucket day:created_at \\
          --anomalies --email ops@example.com
    """


@analyze.command("profile")
@click.argument("path")
@click.option("--column", "columns", multiple=True, help="Profile only these columns (repeatable).")
@click.option("--top", type=click.IntRange(0, 100), default=None,
              help="Most frequent values per column (10).")
@_common
@handle_errors
def profile_cmd(path: str, columns: tuple[str, ...], top: int | None, no_check: bool,
                wait: bool, timeout: float | None, as_json: bool, **opts: Any) -> None:
    """Profile every column: type, nulls, distinct values, range, mean, quantiles, top values.

    \b
    Examples:
      conveyor analyze profile sales/orders.csv --wait
      conveyor analyze profile "sales/2024-*.parquet" --column amount --column region --wait --json
    """
    payload = _payload(path, columns=_names(columns), top=top, **opts)

    def show(r: dict[str, Any]) -> None:
        print_table(f"{r['dataset']['path']}: {r['rows']:,} rows", [
            "column", "type", "nulls", "distinct", "min", "max", "mean", "std", "p50", "top values"],
            [(c["name"], c["type"], c["nulls"], f"{'' if c['distinct_exact'] else '~'}{c['distinct']}",
              _cell(c["min"]), _cell(c["max"]), _cell(c.get("mean")), _cell(c.get("std")),
              _cell((c.get("quantiles") or {}).get("p50")),
              ", ".join(f"{t['value']} ({t['count']})" for t in c["top"][:3])) for c in r["columns"]])

    _run("analysis.profile", payload, no_check, wait, timeout, as_json, show)


@analyze.command("aggregate")
@click.argument("path")
@click.option("--group-by", multiple=True, metavar="COLUMN", help="Group by this column (repeatable).")
@click.option("--bucket", metavar="UNIT:COLUMN", help="Time bucket: hour, day, week or month of a column.")
@click.option("--metric", "metrics", multiple=True, metavar="FUNC[:COLUMN]",
              help="count, sum, mean, min, max, median, p95, distinct; e.g. sum:amount (repeatable).")
@click.option("--sort", "order_by", multiple=True, metavar="[-]NAME",
              help="Sort by an output column; - for descending.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Keep only this many rows.")
@_common
@handle_errors
def aggregate_cmd(path: str, group_by: tuple[str, ...], bucket: str | None,
                  metrics: tuple[str, ...], order_by: tuple[str, ...], limit: int | None, no_check: bool,
                  wait: bool, timeout: float | None, as_json: bool, **opts: Any) -> None:
    """Group rows and compute metrics; the whole table goes to CSV and Parquet files.

    \b
    Examples:
      conveyor analyze aggregate sales/orders --group-by region --bucket day:created_at \\
          --metric sum:amount --metric p95:amount --where "status = paid" --wait
      conveyor analyze aggregate sales/orders.csv --group-by channel --metric count \\
          --metric distinct:customer_id --sort -count --limit 10 --wait
    """
    payload = _payload(path, group_by=_names(group_by), bucket=bucket, metrics=list(metrics),
                       order_by=list(order_by), limit=limit, **opts)

    def show(r: dict[str, Any]) -> None:
        cols = r["columns"]
        rows = r["rows"][:100]
        shown = f" (first {len(rows)} shown)" if r["row_count"] > len(rows) else ""
        print_table(f"{r['row_count']:,} rows{shown}", cols, [[_cell(row[c]) for c in cols] for row in rows])
        _files(r)

    _run("analysis.aggregate", payload, no_check, wait, timeout, as_json, show)


@analyze.command("anomalies")
@click.argument("path")
@click.option("--metric", metavar="FUNC[:COLUMN]", help="The metric per bucket (default: count).")
@click.option("--bucket", required=True, metavar="UNIT:COLUMN", help="Time bucket, e.g. day:created_at.")
@click.option("--group-by", multiple=True, metavar="COLUMN", help="One series per group (repeatable).")
@click.option("--method", type=click.Choice(["robust_z", "iqr"]), default=None,
              help="robust_z (default) or iqr.")
@click.option("--threshold", type=float, default=None, help="|z| for robust_z (3.5), k for iqr (1.5).")
@click.option("--window", type=click.IntRange(3, 1000), default=None, help="Buckets in the baseline (14).")
@_common
@handle_errors
def anomalies_cmd(path: str, metric: str | None, bucket: str, group_by: tuple[str, ...],
                  method: str | None, threshold: float | None, window: int | None, no_check: bool,
                  wait: bool, timeout: float | None, as_json: bool, **opts: Any) -> None:
    """Flag time buckets whose metric is far from the rolling baseline of the buckets before.

    \b
    Examples:
      conveyor analyze anomalies sales/orders --metric sum:amount --bucket day:created_at --wait
      conveyor analyze anomalies sales/orders --bucket hour:created_at --group-by region \\
          --method iqr --threshold 3 --window 48 --wait
    """
    payload = _payload(path, metric=metric, bucket=bucket, group_by=_names(group_by), method=method,
                       threshold=threshold, window=window, **opts)

    def show(r: dict[str, Any]) -> None:
        click.echo(f"{r['anomaly_count']} anomalous of {r['buckets']} buckets in {r['series']} series "
                   f"({r['metric']} per {r['bucket']}, {r['method']} > {r['threshold']:g})")
        if r["anomalies"]:
            print_table("anomalies", ["group", "bucket", "value", "expected", "score"],
                        [(", ".join(map(str, a["group"].values())) or "all", a["bucket"], _cell(a["value"]),
                          f"{_cell(a['expected'][0])} .. {_cell(a['expected'][1])}" if a["expected"] else "",
                          _cell(a["score"])) for a in r["anomalies"][:100]])
        _files(r)

    _run("analysis.anomalies", payload, no_check, wait, timeout, as_json, show)


@analyze.command("report")
@click.argument("path")
@click.option("--title", default=None, help="The report's title.")
@click.option("--metric", "metrics", multiple=True, metavar="FUNC[:COLUMN]",
              help="An aggregate section with these metrics (repeatable).")
@click.option("--bucket", metavar="UNIT:COLUMN", help="Time bucket of the aggregate section.")
@click.option("--group-by", multiple=True, metavar="COLUMN", help="Groups of the aggregate section.")
@click.option("--anomalies", is_flag=True, help="Also look for anomalies in the first metric per bucket.")
@click.option("--profile/--no-profile", default=True, show_default=True, help="Include a profile.")
@click.option("--email", multiple=True, metavar="ADDRESS", help="Email the summary and chart (repeatable).")
@click.option("--subject", default=None, help="The email's subject.")
@_common
@handle_errors
def report_cmd(path: str, title: str | None, metrics: tuple[str, ...], bucket: str | None,
               group_by: tuple[str, ...], anomalies: bool, profile: bool, email: tuple[str, ...],
               subject: str | None, no_check: bool, wait: bool, timeout: float | None, as_json: bool,
               **opts: Any) -> None:
    """Render a chart and an HTML summary of a data set into the results directory; email them.

    \b
    Examples:
      conveyor analyze report sales/orders --metric sum:amount --bucket day:created_at --wait
      conveyor analyze report sales/orders --metric sum:amount --bucket day:created_at \\
          --group-by region --anomalies --email ops@example.com --title "Daily sales"
    """
    sections: dict[str, Any] = {"profile": profile}
    if metrics or group_by or bucket:
        sections["aggregates"] = [{"metrics": list(metrics) or ["count"], "group_by": _names(group_by),
                                   **({"bucket": bucket} if bucket else {})}]
    if anomalies:
        if not bucket:
            raise click.BadParameter("--anomalies needs --bucket", param_hint="--anomalies")
        sections["anomalies"] = {"metric": metrics[0] if metrics else "count", "bucket": bucket}
    payload = _payload(path, title=title, email=list(email), subject=subject, **sections, **opts)

    def show(r: dict[str, Any]) -> None:
        click.echo(r["title"])
        for line in r["summary"]:
            click.echo(f"  - {line}")
        _files(r)
        if r.get("email_job"):
            click.echo(f"email: job {r['email_job']}")

    _run("analysis.report", payload, no_check, wait, timeout, as_json, show)
