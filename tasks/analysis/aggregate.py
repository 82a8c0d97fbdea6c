"""Aggregates: group by columns and/or a time bucket, metrics, filters, sort, limit.

Like the profile, an aggregate is partial tables -> merge -> finish, all in SQL:
- `g`: per group the row count and, per column, count, sum, min, max (integer sums as
  DECIMAL(38,0) so a Parquet partial holds them exactly);
- `q<j>`: per group the quantile sketch buckets of column j (median, p95; see sketch.py);
- `d<j>`: per group the distinct values of column j (distinct counts are exact).
`final_sql` merges whatever partial tables it is given (sums of sums, min of mins, bucket
counts added, distinct values unioned) and reads the metrics off them. A single process gives
it the partial queries themselves as CTEs, so DuckDB runs the whole thing as one statement; a
split job gives it the partitions' Parquet files. Same SQL, same answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.analysis.datasets import Dataset
from tasks.analysis.engine import NUMERIC, ORDERED, TEMPORAL, Sql, ident, literal, to_json
from tasks.analysis.errors import MetricTypeMismatch
from tasks.analysis.filters import Filter, to_sql
from tasks.analysis.sketch import QuantileSketch
from tasks.analysis.spec import QUANTILES, AggregateSpec, Metric

if TYPE_CHECKING:
    import duckdb

NEEDS = {"sum": NUMERIC, "mean": NUMERIC, "median": NUMERIC, "p95": NUMERIC,
         "min": ORDERED, "max": ORDERED}


@dataclass
class AggPlan:
    """An aggregate request checked against a data set, ready to become SQL."""

    spec: AggregateSpec
    dataset: Dataset
    where: list[Filter]
    keys: list[tuple[str, str]]  # (output name, SQL over the source)
    kinds: dict[str, str]
    states: dict[str, set[str]] = field(default_factory=dict)  # column -> {"n", "s", "lo", "hi"}
    quantile_cols: list[str] = field(default_factory=list)
    distinct_cols: list[str] = field(default_factory=list)

    @property
    def tables(self) -> list[str]:
        return ["g", *(f"q{j}" for j in range(len(self.quantile_cols))),
                *(f"d{j}" for j in range(len(self.distinct_cols)))]

    @property
    def needed(self) -> list[str]:
        cols = {*self.spec.group_by, *self.states, *self.quantile_cols, *self.distinct_cols,
                *(f.column for f in self.where)}
        if self.spec.bucket:
            cols.add(self.spec.bucket.column)
        return [c for c in self.dataset.names if c in cols]

    def state(self, col: str, what: str) -> str:
        return f"{what}{list(self.states).index(col)}"


def plan(spec: AggregateSpec, dataset: Dataset, where: list[Filter] = ()) -> AggPlan:  # type: ignore[assignment]
    """Check `spec` against the data set: columns exist, metrics fit their columns' types."""
    kinds = {c.name: c.kind for c in dataset.columns}
    keys = [(name, ident(dataset.column(name).name)) for name in spec.group_by]
    if spec.bucket:
        col = dataset.column(spec.bucket.column)
        if col.kind not in TEMPORAL:
            raise MetricTypeMismatch(f"bucket {spec.bucket} needs a date or timestamp column; "
                                     f"{col.name} is {col.type}")
        if spec.bucket.unit == "hour" and col.kind == "date":
            raise MetricTypeMismatch(f"bucket {spec.bucket}: {col.name} is a DATE, it has no hours")
        expr = f"date_trunc('{spec.bucket.unit}', {ident(col.name)})"
        if col.kind == "date":
            expr = f"CAST({expr} AS DATE)"
        keys.append((spec.bucket_name or spec.bucket.unit, expr))
    p = AggPlan(spec=spec, dataset=dataset, where=[*where, *spec.where], keys=keys, kinds=kinds)
    for m in spec.metrics:
        _add_metric(p, m)
    to_sql(p.where, kinds, Sql())  # checks filter columns and values now, before any work
    return p


def _add_metric(p: AggPlan, m: Metric) -> None:
    if m.column is None:
        return
    col = p.dataset.column(m.column)
    allowed = NEEDS.get(m.func)
    if allowed is not None and col.kind not in allowed:
        need = "a numeric" if allowed is NUMERIC else "an orderable"
        raise MetricTypeMismatch(f"metric {m} needs {need} column; {col.name} is {col.type}")
    wants = {"count": {"n"}, "sum": {"s"}, "mean": {"s", "n"}, "min": {"lo"}, "max": {"hi"},
             "median": {"lo", "hi"}, "p95": {"lo", "hi"}, "distinct": set()}[m.func]
    if wants:
        p.states.setdefault(col.name, set()).update(wants)
    if m.func in QUANTILES and col.name not in p.quantile_cols:
        p.quantile_cols.append(col.name)
    if m.func == "distinct" and col.name not in p.distinct_cols:
        p.distinct_cols.append(col.name)


# --- partial tables ---------------------------------------------------------------------------------
def partial_sql(p: AggPlan, table: str, sketch: QuantileSketch, q: Sql) -> str:
    """The SELECT (over the CTE `src`) that builds one partial table; binds into `q`."""
    cond = to_sql(p.where, p.kinds, q)
    keys = [f"{expr} AS k{i}" for i, (_, expr) in enumerate(p.keys)]
    if table == "g":
        cols = ["count(*) AS _rows"]
        for col, wants in p.states.items():
            c = ident(col)
            if "n" in wants:
                cols.append(f"count({c}) AS {p.state(col, 'n')}")
            if "s" in wants:
                total = f"CAST({c} AS DECIMAL(38,0))" if p.kinds[col] == "integer" else c
                cols.append(f"sum({total}) AS {p.state(col, 's')}")
            if "lo" in wants:
                cols.append(f"min({c}) AS {p.state(col, 'lo')}")
            if "hi" in wants:
                cols.append(f"max({c}) AS {p.state(col, 'hi')}")
        return f"SELECT {', '.join(keys + cols)} FROM src WHERE {cond} GROUP BY ALL"
    col = (p.quantile_cols if table[0] == "q" else p.distinct_cols)[int(table[1:])]
    c = ident(col)
    if table[0] == "q":
        inner = ", ".join([*keys, f"CAST({c} AS DOUBLE) AS x"])
        ks = "".join(f"k{i}, " for i in range(len(keys)))
        return (f"SELECT {ks}{sketch.sign_sql('x')} AS s, {sketch.index_sql('x')} AS b, count(*) AS n "
                f"FROM (SELECT {inner} FROM src WHERE ({cond}) AND {c} IS NOT NULL) "
                f"WHERE isfinite(x) GROUP BY ALL")
    return f"SELECT DISTINCT {', '.join([*keys, f'{c} AS v'])} FROM src WHERE ({cond}) AND {c} IS NOT NULL"


def write_partials(con: duckdb.DuckDBPyConnection, p: AggPlan, src: Sql, sketch: QuantileSketch,
                   out: Path) -> None:
    """A partition's partial tables, as Parquet files in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    for table in p.tables:
        q = Sql(params=dict(src.params))
        body = partial_sql(p, table, sketch, q)
        con.execute(f"COPY (WITH src AS ({src.text}) {body}) TO {literal(out / f'{table}.parquet')} "
                    f"(FORMAT parquet)", q.params)


# --- merge and finish -------------------------------------------------------------------------------
def final_sql(p: AggPlan, sketch: QuantileSketch, *, src: Sql | None = None,
              parts: dict[str, list[str]] | None = None) -> Sql:
    """The merged answer, from the source itself (`src`) or from partial files (`parts`)."""
    q = Sql(params=dict(src.params) if src else {})
    ks = [f"k{i}" for i in range(len(p.keys))]
    ctes = []
    if src is not None:
        many = len(p.tables) > 1 and p.dataset.format != "parquet"
        ctes.append(f"src AS {'' if many else 'NOT '}MATERIALIZED ({src.text})")
    for table in p.tables:
        body = (partial_sql(p, table, sketch, q) if parts is None
                else f"SELECT * FROM read_parquet({q.bind(parts[table], 'parts')})")
        ctes.append(f"{table}_p AS ({body})")
    by = "".join(f"{k}, " for k in ks)
    part = f"PARTITION BY {', '.join(ks)} " if ks else ""
    for j, _ in enumerate(p.quantile_cols):
        ctes.append(f"q{j} AS (SELECT {by}s, b, sum(n) AS n FROM q{j}_p GROUP BY ALL)")
        ctes.append(f"q{j}c AS (SELECT *, sum(n) OVER ({part}ORDER BY s, s * b ROWS BETWEEN UNBOUNDED "
                    f"PRECEDING AND CURRENT ROW) AS cum, sum(n) OVER ({part.strip()}) AS tot FROM q{j})")
        picks = ", ".join(
            f"min_by({sketch.value_sql('s', 'b')}, cum) FILTER (WHERE cum > floor({qv!r} * (tot - 1)))"
            f" AS q{j}_{name}" for name, qv in QUANTILES.items())
        ctes.append(f"q{j}f AS (SELECT {by}{picks} FROM q{j}c GROUP BY ALL)")
    # No joins: the pieces are stacked (UNION ALL BY NAME fills the missing columns with NULL)
    # and grouped once, which spills to disk like any aggregate and treats NULL keys as equal.
    pieces = ["SELECT * FROM g_p"]
    pieces += [f"SELECT * FROM q{j}f" for j in range(len(p.quantile_cols))]
    pieces += [f"SELECT {by}v AS d{j}_v FROM d{j}_p" for j in range(len(p.distinct_cols))]
    ctes.append(f"u AS ({' UNION ALL BY NAME '.join(pieces)})")
    merged = ["sum(_rows) AS _rows"]
    for col, wants in p.states.items():
        for what, fn in (("n", "sum"), ("s", "sum"), ("lo", "min"), ("hi", "max")):
            if what in wants:
                name = p.state(col, what)
                merged.append(f"{fn}({name}) AS {name}")
    merged += [f"max(q{j}_{name}) AS q{j}_{name}" for j in range(len(p.quantile_cols)) for name in QUANTILES]
    merged += [f"count(DISTINCT d{j}_v) AS d{j}_n" for j in range(len(p.distinct_cols))]
    ctes.append(f"g AS (SELECT {by}{', '.join(merged)} FROM u GROUP BY ALL)")
    outs = [f"g.k{i} AS {ident(name)}" for i, (name, _) in enumerate(p.keys)]
    outs += [f"{_metric_sql(p, m)} AS {ident(m.name)}" for m in p.spec.metrics]
    order = [f"{ident(name)} {'DESC' if desc else 'ASC'} NULLS LAST" for name, desc in p.spec.sort_keys()]
    order += [f"{ident(name)} ASC NULLS LAST" for name, _ in p.keys]
    q.text = (f"WITH {', '.join(ctes)} SELECT {', '.join(outs)} FROM g"
              + (f" ORDER BY {', '.join(order)}" if order else "")
              + (f" LIMIT {int(p.spec.limit)}" if p.spec.limit else ""))
    return q


def _metric_sql(p: AggPlan, m: Metric) -> str:
    if m.column is None:
        return "CAST(g._rows AS BIGINT)"
    col, kind = m.column, p.kinds[m.column]
    if m.func == "count":
        return f"CAST(g.{p.state(col, 'n')} AS BIGINT)"
    if m.func == "sum":
        return f"g.{p.state(col, 's')}"
    if m.func == "mean":
        return f"CAST(g.{p.state(col, 's')} AS DOUBLE) / nullif(g.{p.state(col, 'n')}, 0)"
    if m.func in ("min", "max"):
        return f"g.{p.state(col, 'lo' if m.func == 'min' else 'hi')}"
    if m.func == "distinct":
        return f"g.d{p.distinct_cols.index(col)}_n"
    j = p.quantile_cols.index(col)
    lo, hi = p.state(col, "lo"), p.state(col, "hi")
    v = f"greatest(least(g.q{j}_{m.func}, CAST(g.{hi} AS DOUBLE)), CAST(g.{lo} AS DOUBLE))"
    return f"CAST(round({v}) AS BIGINT)" if kind == "integer" else v


@dataclass
class Table:
    """A finished aggregate, held as a temp table of the connection it was computed in."""

    name: str
    columns: list[str]
    total: int

    def head(self, con: duckdb.DuckDBPyConnection, limit: int | None = None) -> list[dict[str, Any]]:
        sql = f"SELECT * FROM {ident(self.name)}" + (f" LIMIT {int(limit)}" if limit is not None else "")
        return [dict(zip(self.columns, map(to_json, row), strict=True))
                for row in con.execute(sql).fetchall()]

    def write(self, con: duckdb.DuckDBPyConnection, out: Path, stem: str) -> dict[str, str]:
        """The whole table as CSV and Parquet under `out`; returns the two paths."""
        out.mkdir(parents=True, exist_ok=True)
        files = {"csv": out / f"{stem}.csv", "parquet": out / f"{stem}.parquet"}
        con.execute(f"COPY {ident(self.name)} TO {literal(files['csv'])} (FORMAT csv, HEADER)")
        con.execute(f"COPY {ident(self.name)} TO {literal(files['parquet'])} (FORMAT parquet)")
        return {k: str(v) for k, v in files.items()}


def materialize(con: duckdb.DuckDBPyConnection, query: Sql, name: str) -> Table:
    """Run the final query into a temp table (computed once, then written and read from)."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE {ident(name)} AS {query.text}", query.params)
    cur = con.execute(f"SELECT * FROM {ident(name)} LIMIT 0")
    columns = [d[0] for d in cur.description]
    total = con.execute(f"SELECT count(*) FROM {ident(name)}").fetchone()[0]  # type: ignore[index]
    return Table(name=name, columns=columns, total=int(total))
