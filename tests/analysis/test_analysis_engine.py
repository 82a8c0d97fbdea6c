"""Analyses in process, against answers computed independently in Python.

Known data (written as CSV, JSON lines, one Parquet file and Parquet partitions) with answers
computed here with plain Python; the single-process path against the partitioned path (partials
written, then merged: the code a chord runs); bad input; a memory limit the data outgrows.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from config import Settings
from tasks.analysis import api, kinds
from tasks.analysis.datasets import find_files, resolve
from tasks.analysis.engine import connect
from tasks.analysis.errors import (
    AnalysisFailed,
    DatasetNotFound,
    MalformedFilter,
    MetricTypeMismatch,
    PathOutsideDataDir,
    UnknownColumn,
)
from tasks.analysis.runner import Context

ACCURACY = 0.005
REGIONS = ["north", "south", "east", "west"]


@dataclass
class Row:
    id: int
    ts: datetime
    region: str | None
    amount: Decimal
    qty: int
    score: float | None


def make_rows(n: int = 3000, seed: int = 11) -> list[Row]:
    rnd = random.Random(seed)
    start = datetime(2024, 1, 1)
    return [Row(id=i + 1, ts=start + timedelta(minutes=47 * i + rnd.randint(0, 40)),
                region=None if rnd.random() < 0.1 else rnd.choice(REGIONS),
                amount=Decimal(rnd.randint(100, 99_999)) / 100, qty=rnd.randint(1, 20),
                score=None if rnd.random() < 0.05 else round(rnd.gauss(50, 12), 6))
            for i in range(n)]


def write_known(data_dir: Path, rows: list[Row], partitions: int = 4) -> None:
    """The same rows as: known.csv (';', header), known.jsonl, known.parquet, known_parts/*.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / "known.csv", "w", newline="") as fh:
        w = csv.writer(fh, delimiter=";")
        w.writerow(["id", "ts", "region", "amount", "qty", "score"])
        for r in rows:
            w.writerow([r.id, r.ts.isoformat(sep=" "), r.region or "", r.amount, r.qty,
                        "" if r.score is None else r.score])
    with open(data_dir / "known.jsonl", "w") as fh:
        for r in rows:
            fh.write(json.dumps({"id": r.id, "ts": r.ts.isoformat(sep=" "), "region": r.region,
                                 "amount": float(r.amount), "qty": r.qty, "score": r.score}) + "\n")

    def table(part: list[Row]) -> Any:
        return pa.table({
            "id": pa.array([r.id for r in part], pa.int64()),
            "ts": pa.array([r.ts for r in part], pa.timestamp("us")),
            "region": pa.array([r.region for r in part], pa.string()),
            "amount": pa.array([r.amount for r in part], pa.decimal128(10, 2)),
            "qty": pa.array([r.qty for r in part], pa.int32()),
            "score": pa.array([r.score for r in part], pa.float64()),
        })

    pq.write_table(table(rows), data_dir / "known.parquet")
    parts = data_dir / "known_parts"
    parts.mkdir(exist_ok=True)
    cuts = [0, len(rows) // 7, len(rows) // 2, len(rows) * 3 // 4, len(rows)][: partitions + 1]
    for i in range(len(cuts) - 1):  # unequal partitions, as real ones are
        pq.write_table(table(rows[cuts[i]: cuts[i + 1]]), parts / f"part-{i:03d}.parquet")
    (parts / "_SUCCESS").write_text("")  # left by writers; must be ignored


@pytest.fixture(scope="module")
def rows() -> list[Row]:
    return make_rows()


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, rows: list[Row]) -> Settings:
    root = tmp_path_factory.mktemp("analysis")
    write_known(root / "data", rows)
    return Settings(_env_file=None, data_dir=root / "data", results_dir=root / "results",
                    analysis_quantile_accuracy=ACCURACY, analysis_exact_distinct_limit=100)


def run_inline(settings: Settings, task: str, payload: dict[str, Any]) -> dict[str, Any]:
    """What the task does in one process (no worker, no split)."""
    kind = kinds.KINDS[task]
    data = kind.input.model_validate(payload)
    with connect(settings) as con:
        dataset = resolve(con, settings.data_dir, data.path, format=data.format,
                          delimiter=data.delimiter, header=data.header, types=data.types)
        ctx = Context(settings, dataset, "inline")
        outputs = {a.name: a.inline(con, ctx) for a in kind.analyses(data)}
        return kind.finish(con, ctx, data, outputs, None)


def run_split(settings: Settings, task: str, payload: dict[str, Any]) -> dict[str, Any]:
    """What a split job does: a partial per file (each in its own connection), then the merge."""
    kind = kinds.KINDS[task]
    data = kind.input.model_validate(payload)
    with connect(settings) as con:
        dataset = resolve(con, settings.data_dir, data.path, format=data.format)
    assert len(dataset.files) > 1
    ctx = Context(settings, dataset.model_copy(update={"files": []}), "split")
    scratch = settings.results_dir / "scratch"
    for i, f in enumerate(dataset.files):
        with connect(settings) as con:
            for a in kind.analyses(data):
                a.write_partial(con, ctx, [f], scratch / a.name / str(i))
    with connect(settings) as con:
        outputs = {a.name: a.merge(con, ctx, [scratch / a.name / str(i) for i in range(len(dataset.files))])
                   for a in kind.analyses(data)}
        return kind.finish(con, ctx, data, outputs, None)


def lower_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[math.floor(q * (len(ordered) - 1))]


def close(a: Any, b: Any, rel: float = 1e-9) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=rel, abs_tol=1e-9)
    return a == b


# --- known answers ---------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["known.csv", "known.parquet", "known.jsonl"])
def test_profile_known_answers(settings: Settings, rows: list[Row], path: str) -> None:
    got = run_inline(settings, "analysis.profile", {"path": path})
    cols = {c["name"]: c for c in got["columns"]}
    assert got["rows"] == len(rows)
    assert got["dataset"]["columns"][0] == {"name": "id", "type": "BIGINT"}
    assert cols["ts"]["kind"] == "timestamp" and cols["region"]["kind"] == "string"

    regions = [r.region for r in rows]
    c = cols["region"]
    assert (c["count"], c["nulls"]) == (sum(x is not None for x in regions), regions.count(None))
    assert c["distinct"] == len(REGIONS) and c["distinct_exact"]
    expected_top = sorted(Counter(x for x in regions if x).items(), key=lambda kv: (-kv[1], kv[0]))
    assert [(t["value"], t["count"]) for t in c["top"]] == expected_top

    qty = [r.qty for r in rows]
    c = cols["qty"]
    assert (c["min"], c["max"], c["sum"]) == (min(qty), max(qty), sum(qty))
    assert math.isclose(c["mean"], statistics.fmean(qty)) and math.isclose(c["std"], statistics.stdev(qty))
    assert c["distinct"] == 20 and c["distinct_exact"]
    for label, q in {"p5": 0.05, "p50": 0.5, "p95": 0.95}.items():
        true = lower_quantile(qty, q)
        assert abs(c["quantiles"][label] - true) <= ACCURACY * true + 0.5

    scores = [r.score for r in rows if r.score is not None]
    c = cols["score"]
    assert c["nulls"] == len(rows) - len(scores)
    assert math.isclose(c["mean"], statistics.fmean(scores), rel_tol=1e-9)
    assert math.isclose(c["std"], statistics.stdev(scores), rel_tol=1e-9)
    for label, q in {"p25": 0.25, "p75": 0.75}.items():
        true = lower_quantile(scores, q)
        assert abs(c["quantiles"][label] - true) <= ACCURACY * abs(true) + 1e-9
    assert not c["distinct_exact"]  # past the exact limit (100): HyperLogLog
    assert abs(c["distinct"] - len(set(scores))) <= 0.05 * len(set(scores))

    c = cols["id"]
    assert abs(c["distinct"] - len(rows)) <= 0.05 * len(rows) and not c["distinct_exact"]
    assert c["top_exact"] and [t["value"] for t in c["top"]] == list(range(1, 11))  # ties: by value
    c = cols["ts"]
    assert (c["min"], c["max"]) == (rows[0].ts.isoformat(), rows[-1].ts.isoformat())
    per_day = Counter(r.ts.date().isoformat() for r in rows)
    assert {d["day"]: d["rows"] for d in c["per_day"]} == per_day


def test_profile_keeps_decimals_exact(settings: Settings, rows: list[Row]) -> None:
    got = run_inline(settings, "analysis.profile", {"path": "known.parquet", "columns": ["amount"]})
    [c] = got["columns"]
    assert c["type"] == "DECIMAL(10,2)"
    assert Decimal(c["sum"]) == sum(r.amount for r in rows)
    amounts = [r.amount for r in rows]
    assert (Decimal(c["min"]), Decimal(c["max"])) == (min(amounts), max(amounts))


def test_aggregate_known_answers(settings: Settings, rows: list[Row]) -> None:
    got = run_inline(settings, "analysis.aggregate", {
        "path": "known.parquet", "group_by": ["region"], "bucket": "week:ts",
        "metrics": ["count", "sum:amount", "mean:amount", "min:amount", "max:qty", "median:amount",
                    "p95:qty", "distinct:qty", "count:score"],
        "where": ["qty >= 3", "region != east"]})
    groups: dict[tuple[Any, ...], list[Row]] = defaultdict(list)
    for r in rows:
        if r.qty >= 3 and r.region is not None and r.region != "east":
            week = datetime.combine(r.ts.date() - timedelta(days=r.ts.weekday()), datetime.min.time())
            groups[(r.region, week.isoformat())].append(r)
    assert got["row_count"] == len(groups) and not got["truncated"]
    assert got["columns"][:2] == ["region", "week"]
    for out in got["rows"]:
        g = groups[(out["region"], out["week"])]
        amounts = [r.amount for r in g]
        assert out["count"] == len(g)
        assert Decimal(out["sum_amount"]) == sum(amounts)
        assert math.isclose(out["mean_amount"], float(sum(amounts) / len(g)), rel_tol=1e-12)
        assert Decimal(out["min_amount"]) == min(amounts) and out["max_qty"] == max(r.qty for r in g)
        assert out["distinct_qty"] == len({r.qty for r in g})
        assert out["count_score"] == sum(r.score is not None for r in g)
        true_median = float(lower_quantile([float(a) for a in amounts], 0.5))
        assert abs(out["median_amount"] - true_median) <= ACCURACY * true_median + 1e-9
        true_p95 = lower_quantile([r.qty for r in g], 0.95)
        assert abs(out["p95_qty"] - true_p95) <= ACCURACY * true_p95 + 0.5
    keys = [(o["region"], o["week"]) for o in got["rows"]]
    assert keys == sorted(keys)  # sorted by the keys when no order is given
    for kind, path in got["files"].items():
        assert Path(path).stat().st_size > 0, kind


def test_aggregate_sort_limit_and_files(settings: Settings, rows: list[Row]) -> None:
    got = run_inline(settings, "analysis.aggregate", {
        "path": "known.csv", "group_by": ["qty"], "metrics": ["count"], "order_by": ["-count", "qty"],
        "limit": 5})
    counts = sorted(Counter(r.qty for r in rows).items(), key=lambda kv: (-kv[1], kv[0]))[:5]
    assert [(r["qty"], r["count"]) for r in got["rows"]] == counts
    import pyarrow.parquet as pq

    table = pq.read_table(got["files"]["parquet"])
    assert table.num_rows == 5 and table.column_names == ["qty", "count"]
    with open(got["files"]["csv"]) as fh:
        assert sum(1 for _ in fh) == 6


def test_results_past_the_bound_stay_in_files(settings: Settings, rows: list[Row]) -> None:
    small = settings.model_copy(update={"analysis_max_result_rows": 10})
    got = run_inline(small, "analysis.aggregate", {"path": "known.parquet", "group_by": ["id"]})
    assert got["row_count"] == len(rows) and len(got["rows"]) == 10 and got["truncated"]
    import pyarrow.parquet as pq

    assert pq.read_table(got["files"]["parquet"]).num_rows == len(rows)


# --- split equals single ------------------------------------------------------------------------------
def assert_same(a: Any, b: Any, path: str = "") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            if k in ("files", "dataset"):
                continue
            if k in ("top", "top_exact") and not b.get("top_exact"):
                # documented: past the exact-distinct limit a split profile's top values are
                # approximate (sums of each partition's most frequent); one read is exact
                assert a["top_exact"] and not a["distinct_exact"] and not b["distinct_exact"]
                continue
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert close(a, b), f"{path}: {a!r} != {b!r}"


@pytest.mark.parametrize("task,payload", [
    ("analysis.profile", {}),
    ("analysis.aggregate", {"group_by": ["region"], "bucket": "day:ts",
                            "metrics": ["count", "sum:amount", "mean:score", "min:ts", "max:amount",
                                        "median:score", "p95:amount", "distinct:qty", "count:region"]}),
    ("analysis.aggregate", {"metrics": ["count", "sum:qty", "p95:score", "distinct:region"],
                            "where": ["region in (north, south)"]}),
    ("analysis.anomalies", {"metric": "sum:amount", "bucket": "day:ts", "group_by": ["region"]}),
])
def test_partitioned_equals_single(settings: Settings, task: str, payload: dict[str, Any]) -> None:
    single = run_inline(settings, task, {"path": "known.parquet", **payload})
    split = run_split(settings, task, {"path": "known_parts", **payload})
    assert_same(single, split)


# --- data sets and bad input ----------------------------------------------------------------------------
def test_csv_dialect_detection(settings: Settings, tmp_path: Path) -> None:
    data = settings.data_dir / "dialects"
    data.mkdir(exist_ok=True)
    (data / "tabs.tsv").write_text("a\tb\n1\tx\n2\ty\n")
    (data / "noheader.csv").write_text("1,2.5,x\n2,3.5,y\n3,4.5,z\n")
    with connect(settings) as con:
        tabs = resolve(con, settings.data_dir, "dialects/tabs.tsv")
        assert tabs.csv and tabs.csv.delimiter == "\t" and tabs.names == ["a", "b"]
        bare = resolve(con, settings.data_dir, "dialects/noheader.csv", header=False)
        assert bare.csv and not bare.csv.header
        assert [c.type for c in bare.columns] == ["BIGINT", "DOUBLE", "VARCHAR"]
    got = run_inline(settings, "analysis.aggregate", {"path": "dialects/noheader.csv", "header": False,
                                                      "metrics": ["sum:column1"]})
    assert got["rows"] == [{"sum_column1": 10.5}]


def test_declared_csv_types(settings: Settings, rows: list[Row]) -> None:
    got = run_inline(settings, "analysis.aggregate", {
        "path": "known.csv", "types": {"amount": "DECIMAL(10,2)"}, "metrics": ["sum:amount"]})
    assert Decimal(got["rows"][0]["sum_amount"]) == sum(r.amount for r in rows)


def test_paths_are_confined(settings: Settings, tmp_path: Path) -> None:
    outside = tmp_path / "secret.csv"
    outside.write_text("a\n1\n")
    link = settings.data_dir / "escape.csv"
    if not link.exists():
        os.symlink(outside, link)
    with pytest.raises(PathOutsideDataDir):
        find_files(settings.data_dir, "escape.csv")
    with pytest.raises(PathOutsideDataDir):
        find_files(settings.data_dir, "es*.csv")
    with pytest.raises(PathOutsideDataDir):
        find_files(settings.data_dir, str(outside))
    with pytest.raises(PathOutsideDataDir):
        find_files(settings.data_dir, "known_parts/../../secret.csv")
    with pytest.raises(DatasetNotFound, match="does not exist"):
        find_files(settings.data_dir, "nope.csv")
    with pytest.raises(DatasetNotFound, match="no file matches"):
        find_files(settings.data_dir, "nope-*.parquet")
    parts = find_files(settings.data_dir, "known_parts")
    assert [p.name for p in parts] == [f"part-00{i}.parquet" for i in range(4)]  # _SUCCESS ignored
    assert find_files(settings.data_dir, str(settings.data_dir / "known_parts" / "part-*.parquet")) == parts


@pytest.mark.parametrize("task,payload,error,message", [
    ("analysis.profile", {"path": "missing.csv"}, DatasetNotFound, "does not exist"),
    ("analysis.profile", {"path": "/etc/passwd"}, PathOutsideDataDir, "outside the data directory"),
    ("analysis.aggregate", {"path": "known.csv", "group_by": ["nope"]}, UnknownColumn,
     "unknown column 'nope'; the data set has: id, ts, region, amount, qty, score"),
    ("analysis.aggregate", {"path": "known.csv", "metrics": ["sum:region"]}, MetricTypeMismatch,
     "needs a numeric column; region is VARCHAR"),
    ("analysis.aggregate", {"path": "known.csv", "bucket": "hour:region"}, MetricTypeMismatch,
     "needs a date or timestamp column"),
    ("analysis.aggregate", {"path": "known.csv", "where": ["qty > many"]}, MalformedFilter,
     "'many' is not a whole number"),
    ("analysis.aggregate", {"path": "known.csv", "where": ["ts < someday"]}, MalformedFilter, "not a time"),
    ("analysis.aggregate", {"path": "known.csv", "where": ["qty like 5%"]}, MalformedFilter,
     "needs a text column"),
    ("analysis.anomalies", {"path": "known.csv", "bucket": "day:ts", "metric": "mean:nope"}, UnknownColumn,
     "unknown column 'nope'"),
])
def test_bad_input_is_refused_before_publishing(settings: Settings, task: str, payload: dict[str, Any],
                                                error: type[Exception], message: str) -> None:
    from jobs.errors import InvalidInput, PermanentError

    with pytest.raises(error, match=message) as caught:
        api.check(settings, task, payload)
    # the same error, raised in a worker, fails the job at once: it is permanent
    assert isinstance(caught.value, InvalidInput) and isinstance(caught.value, PermanentError)


@pytest.mark.parametrize("payload,message", [
    ({"path": "known.csv", "where": ["amount >"]}, "no value"),
    ({"path": "known.csv", "where": ["amount"]}, "not 'column op value'"),
    ({"path": "known.csv", "where": ["region in north, 'south"]}, "unterminated quote"),
    ({"path": "known.csv", "where": ["region in (north"]}, "unbalanced parentheses"),
    ({"path": "known.csv", "metrics": ["avg:amount"]}, "unknown metric 'avg'"),
    ({"path": "known.csv", "metrics": ["sum"]}, "needs a column"),
    ({"path": "known.csv", "bucket": "fortnight:ts"}, "unknown bucket unit"),
    ({"path": "../known.csv"}, "no '..'"),
    ({"path": "known.csv", "order_by": ["-total"]}, "cannot sort by 'total'"),
    ({"path": "known.csv", "metrics": ["count", "count"]}, "appear twice"),
])
def test_malformed_requests_fail_validation(settings: Settings, payload: dict[str, Any],
                                            message: str) -> None:
    from jobs.errors import PayloadInvalid

    with pytest.raises(PayloadInvalid, match=message):
        api.check(settings, "analysis.aggregate", payload)


def test_filters_parse_and_bind() -> None:
    from tasks.analysis.engine import Sql
    from tasks.analysis.filters import parse, to_sql

    cases = {
        "status = paid": ("status", "=", "paid"),
        "amount>=10.5": ("amount", ">=", "10.5"),
        "city == 'New York'": ("city", "=", "New York"),
        "region in (north, 'south, east')": ("region", "in", ["north", "south, east"]),
        "note is not null": ("note", "is not null", None),
        '"odd ""col""" != x': ('odd "col"', "!=", "x"),
        "name NOT LIKE 'a%'": ("name", "not like", "a%"),
    }
    for text, want in cases.items():
        f = parse(text)
        assert (f.column, f.op, f.value) == want, text
    q = Sql()
    filters = [parse("status = 'x''; DROP TABLE t; --'"), parse("n in (1, 2)")]
    sql = to_sql(filters, {"status": "string", "n": "integer"}, q)
    assert "DROP" not in sql and list(q.params.values()) == ["x'; DROP TABLE t; --", 1, 2]


# --- anomalies ---------------------------------------------------------------------------------------
def test_anomaly_detection_flags_the_outliers() -> None:
    from tasks.analysis.anomalies import detect

    rnd = random.Random(3)
    values: list[float | None] = [100 + rnd.uniform(-5, 5) for _ in range(60)]
    values[30], values[45] = 180.0, 20.0
    for method, threshold in (("robust_z", 3.5), ("iqr", 3.0)):  # 3: Tukey's "far out"
        points = detect(values, method, threshold, window=14, min_periods=7)
        assert [i for i, p in enumerate(points) if p.anomaly] == [30, 45], method
        assert all(p.low is None for p in points[:7])  # not enough history yet
        p = points[30]
        assert p.low is not None and p.high is not None and p.low < 100 < p.high < 180


# --- resources -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A million rows with a million distinct keys: a group-by far larger than 48 MB of memory."""
    import duckdb

    root = tmp_path_factory.mktemp("big")
    (root / "data").mkdir()
    con = duckdb.connect()
    con.execute(f"COPY (SELECT i AS k, i % 7 AS v FROM range(1000000) t(i)) TO '{root}/data/big.parquet'")
    con.close()
    return root


def test_larger_than_memory_spills_and_stays_exact(big: Path) -> None:
    tight = Settings(_env_file=None, data_dir=big / "data", results_dir=big / "results",
                     analysis_memory_limit="48MB", analysis_threads=1, analysis_max_result_rows=3)
    got = run_inline(tight, "analysis.aggregate", {"path": "big.parquet", "group_by": ["k"],
                                                   "metrics": ["sum:v", "distinct:v"]})
    assert got["row_count"] == 1_000_000
    import pyarrow.parquet as pq

    table = pq.read_table(got["files"]["parquet"])
    assert sum(int(x) for x in table.column("sum_v").to_pylist()) == sum(i % 7 for i in range(1_000_000))
    # the same limit without spilling to disk: the engine runs out of memory, with a clear message
    no_spill = tight.model_copy(update={"analysis_spill": False})
    with pytest.raises(AnalysisFailed, match="needs more memory"):
        from tasks.analysis.engine import engine_errors

        with engine_errors("the test aggregate"):
            run_inline(no_spill, "analysis.aggregate", {"path": "big.parquet", "group_by": ["k"],
                                                        "metrics": ["sum:v", "distinct:v"]})


def test_engine_survives_fork_after_use(settings: Settings) -> None:
    """Celery's prefork pool forks workers from a parent; a query after fork must not hang."""
    import duckdb

    duckdb.connect().execute("SELECT sum(i) FROM range(1000000) t(i)").fetchall()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            got = run_inline(settings, "analysis.aggregate", {"path": "known.parquet", "metrics": ["count"]})
            os._exit(0 if got["rows"][0]["count"] == 3000 else 1)
        except BaseException:
            os._exit(2)
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    pytest.fail("a DuckDB query in a forked child hung")
