"""Profiles: per column its type, counts, distinct values, range, moments, quantiles, top values.

Computed as partial -> merge -> finish, whether the data set is read by one process or split:
- `partial()` reads the data once. A single `GROUP BY GROUPING SETS` pass counts every value of
  every column (spilled to disk when it outgrows memory); everything else is read off those
  counts. It returns a JSON-able partial: exact counts, sums, min/max, (count, mean, M2) for the
  variance, quantile sketch buckets, HyperLogLog registers, the value counts themselves when a
  column has at most `exact_limit` distinct values (else its 100 most frequent), rows per day.
- `merge()` combines partials exactly (sums, min/max, Chan's formula for the variance, bucket
  counts, register maxima, value counts).
- `finish()` reads the answer off a merged partial. A single process runs finish(partial(all
  data)), a split job finish(merge(partials)): the same numbers (floats up to rounding).
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from tasks.analysis.datasets import Dataset
from tasks.analysis.engine import NUMERIC, TEMPORAL, Sql, from_json, ident, to_json
from tasks.analysis.filters import Filter, to_sql
from tasks.analysis.sketch import QuantileSketch, hll_encode, hll_estimate, hll_merge, hll_register_sql

if TYPE_CHECKING:
    import duckdb

PERCENTILES = {"p5": 0.05, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p95": 0.95}
TOP_CANDIDATES = 100
MAX_DAYS = 3660


def columns_of(dataset: Dataset, names: list[str]) -> list[tuple[str, str, str]]:
    """(name, type, kind) of the profiled columns, checked against the data set."""
    return [(c.name, c.type, c.kind) for c in (dataset.column(n) for n in names or dataset.names)]


def partial(con: duckdb.DuckDBPyConnection, src: Sql, dataset: Dataset, names: list[str],
            where: list[Filter], exact_limit: int, sketch: QuantileSketch) -> dict[str, Any]:
    """One read of the data; everything the profile needs, as mergeable JSON."""
    cols = columns_of(dataset, names)
    q = Sql(params=dict(src.params))
    cond = to_sql(where, {c.name: c.kind for c in dataset.columns}, q)
    inner = ", ".join(
        f"{'CAST(' + ident(n) + ' AS VARCHAR)' if k == 'other' else ident(n)} AS c{i}"
        for i, (n, _, k) in enumerate(cols))
    sets = ", ".join(f"(c{i})" for i in range(len(cols)))
    which = " ".join(f"WHEN GROUPING(c{i}) = 0 THEN {i}" for i in range(len(cols)))
    outs = ", ".join(f"c{i}" for i in range(len(cols)))
    q.text = (f"CREATE OR REPLACE TEMP TABLE vc AS WITH src AS ({src.text}) "
              f"SELECT {outs}, CASE {which} ELSE -1 END AS col, count(*) AS n "
              f"FROM (SELECT {inner} FROM src WHERE {cond}) GROUP BY GROUPING SETS ({sets}, ())")
    con.execute(q.text, q.params)
    rows = con.execute("SELECT coalesce(sum(n), 0) FROM vc WHERE col = -1").fetchone()[0]  # type: ignore[index]

    stats = _stats(con, cols)
    buckets = _sketches(con, cols, sketch)
    registers = _registers(con, cols)
    out: dict[str, Any] = {}
    for i, (name, typ, kind) in enumerate(cols):
        st = stats[i]
        entry: dict[str, Any] = {"type": typ, "kind": kind, **st,
                                 "hll": hll_encode(registers.get(i, {}))}
        if kind in NUMERIC:
            entry["sketch"] = buckets.get(i, [])
        limit = exact_limit if st["local_distinct"] <= exact_limit else TOP_CANDIDATES
        found = con.execute(f"SELECT c{i}, n FROM vc WHERE col = {i} AND c{i} IS NOT NULL "
                            f"ORDER BY n DESC, c{i} LIMIT {int(limit)}").fetchall()
        pairs = [[to_json(v), int(n)] for v, n in found]
        entry["values"] = pairs if st["local_distinct"] <= exact_limit else None
        entry["top"] = pairs if entry["values"] is None else None
        if kind in TEMPORAL:
            days = con.execute(f"SELECT CAST(c{i} AS DATE) AS d, sum(n) FROM vc WHERE col = {i} "
                               f"AND c{i} IS NOT NULL GROUP BY d ORDER BY d").fetchall()
            entry["per_day"] = [[to_json(d), int(n)] for d, n in days]
        out[name] = entry
    con.execute("DROP TABLE vc")
    return {"rows": int(rows), "parts": 1, "columns": out}


def _stats(con: duckdb.DuckDBPyConnection, cols: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
    exprs = []
    for i, (_, _, kind) in enumerate(cols):
        exprs += [f"sum(n) FILTER (WHERE col = {i} AND c{i} IS NOT NULL)",
                  f"sum(n) FILTER (WHERE col = {i} AND c{i} IS NULL)",
                  f"count(c{i})", f"min(c{i})", f"max(c{i})"]
        if kind in NUMERIC:
            x = f"CAST(c{i} AS DOUBLE)"
            total = f"sum(CAST(c{i} AS HUGEINT) * n)" if kind == "integer" else f"sum(c{i} * n)"
            exprs += [total, f"sum(n) FILTER (WHERE isfinite({x}))",
                      f"sum({x} * n) FILTER (WHERE isfinite({x}))"]
    got = con.execute(f"SELECT {', '.join(exprs)} FROM vc").fetchone() or ()
    out, pos, means = [], 0, {}
    for i, (_, _, kind) in enumerate(cols):
        count, nulls, distinct, lo, hi = got[pos: pos + 5]
        pos += 5
        st: dict[str, Any] = {"count": int(count or 0), "nulls": int(nulls or 0),
                              "local_distinct": int(distinct or 0), "min": to_json(lo), "max": to_json(hi)}
        if kind in NUMERIC:
            total, finite, fsum = got[pos: pos + 3]
            pos += 3
            st["sum"] = to_json(total)
            st["n"] = int(finite or 0)
            st["mean"] = fsum / st["n"] if st["n"] else None
            means[i] = st["mean"]
        out.append(st)
    if means:
        m2 = [f"sum(n * pow(CAST(c{i} AS DOUBLE) - {float(mu or 0.0)!r}, 2)) FILTER "
              f"(WHERE col = {i} AND isfinite(CAST(c{i} AS DOUBLE)))" for i, mu in means.items()]
        got = con.execute(f"SELECT {', '.join(m2)} FROM vc").fetchone() or ()
        for (i, _), value in zip(means.items(), got, strict=False):
            out[i]["m2"] = float(value or 0.0)
    return out


def _sketches(con: duckdb.DuckDBPyConnection, cols: list[tuple[str, str, str]],
              sketch: QuantileSketch) -> dict[int, list[list[int]]]:
    parts = []
    for i, (_, _, kind) in enumerate(cols):
        if kind in NUMERIC:
            x = f"CAST(c{i} AS DOUBLE)"
            parts.append(f"SELECT {i} AS col, {sketch.sign_sql('x')} AS s, {sketch.index_sql('x')} AS b, "
                         f"sum(n) AS n FROM (SELECT {x} AS x, n FROM vc "
                         f"WHERE col = {i} AND c{i} IS NOT NULL) "
                         f"WHERE isfinite(x) GROUP BY ALL")
    out: dict[int, list[list[int]]] = {}
    if parts:
        for col, s, b, n in con.execute(" UNION ALL ".join(parts)).fetchall():
            out.setdefault(col, []).append([int(s), int(b), int(n)])
    return out


def _registers(con: duckdb.DuckDBPyConnection, cols: list[tuple[str, str, str]]) -> dict[int, dict[int, int]]:
    if not cols:
        return {}
    h = "CASE col " + " ".join(f"WHEN {i} THEN hash(c{i})" for i in range(len(cols))) + " END"
    reg, rank = hll_register_sql("h")
    out: dict[int, dict[int, int]] = {}
    query = (f"SELECT col, {reg} AS r, max({rank}) FROM (SELECT col, {h} AS h FROM vc "
             f"WHERE col >= 0 AND ({' OR '.join(f'c{i} IS NOT NULL' for i in range(len(cols)))})) "
             "GROUP BY ALL")
    for col, r, k in con.execute(query).fetchall():
        out.setdefault(col, {})[r] = k
    return out


# --- merging ----------------------------------------------------------------------------------------
def _add_pairs(a: list[list[Any]] | None, b: list[list[Any]] | None) -> dict[str, list[Any]]:
    import json

    merged: dict[str, list[Any]] = {}
    for pairs in (a or [], b or []):
        for value, n in pairs:
            key = json.dumps(value)
            merged[key] = [value, merged[key][1] + n] if key in merged else [value, n]
    return merged


def _merge_column(a: dict[str, Any], b: dict[str, Any], exact_limit: int) -> dict[str, Any]:
    kind = a["kind"]
    pick_min = [v for v in (a["min"], b["min"]) if v is not None]
    pick_max = [v for v in (a["max"], b["max"]) if v is not None]
    out = {**a, "count": a["count"] + b["count"], "nulls": a["nulls"] + b["nulls"],
           "min": min(pick_min, key=lambda v: from_json(kind, v)) if pick_min else None,
           "max": max(pick_max, key=lambda v: from_json(kind, v)) if pick_max else None,
           "hll": hll_merge([a["hll"], b["hll"]])}
    if kind in NUMERIC:
        if not out["count"]:
            out["sum"] = None
        elif kind == "decimal":
            out["sum"] = to_json(Decimal(str(a["sum"] or 0)) + Decimal(str(b["sum"] or 0)))
        else:
            out["sum"] = (a["sum"] or 0) + (b["sum"] or 0)
        na, nb = a["n"], b["n"]
        out["n"] = na + nb
        if na == 0 or nb == 0:
            src = a if nb == 0 else b
            out["mean"], out["m2"] = src["mean"], src["m2"]
        else:  # Chan, Golub and LeVeque's pairwise update
            delta = b["mean"] - a["mean"]
            out["mean"] = a["mean"] + delta * nb / (na + nb)
            out["m2"] = a["m2"] + b["m2"] + delta * delta * na * nb / (na + nb)
        buckets: dict[tuple[int, int], int] = {}
        for s, i, n in [*a["sketch"], *b["sketch"]]:
            buckets[(s, i)] = buckets.get((s, i), 0) + n
        out["sketch"] = [[s, i, n] for (s, i), n in sorted(buckets.items())]
    if a["values"] is not None and b["values"] is not None:
        values = list(_add_pairs(a["values"], b["values"]).values())
        out["values"], out["top"] = (values, None) if len(values) <= exact_limit else (None, values)
    else:
        out["values"] = None
        out["top"] = list(_add_pairs(a["values"] or a["top"], b["values"] or b["top"]).values())
    if kind in TEMPORAL:
        days: dict[str, int] = {}
        for d, n in [*a["per_day"], *b["per_day"]]:
            days[d] = days.get(d, 0) + n
        out["per_day"] = [[d, days[d]] for d in sorted(days)]
    out["local_distinct"] = len(out["values"]) if out["values"] is not None else None
    return out


def merge(partials: list[dict[str, Any]], exact_limit: int) -> dict[str, Any]:
    """Combine the partials of the partitions into the partial of the whole data set."""
    merged = partials[0]
    for p in partials[1:]:
        merged = {"rows": merged["rows"] + p["rows"], "parts": merged["parts"] + p["parts"],
                  "columns": {name: _merge_column(col, p["columns"][name], exact_limit)
                              for name, col in merged["columns"].items()}}
    return merged


# --- the answer ----------------------------------------------------------------------------------
def finish(merged: dict[str, Any], top: int, sketch: QuantileSketch) -> dict[str, Any]:
    """The profile, read off a (merged) partial."""
    columns = []
    for name, c in merged["columns"].items():
        kind = c["kind"]
        exact = c["values"] is not None
        entry: dict[str, Any] = {
            "name": name, "type": c["type"], "kind": kind, "count": c["count"], "nulls": c["nulls"],
            "distinct": len(c["values"]) if exact else hll_estimate(c["hll"]), "distinct_exact": exact,
            "min": c["min"], "max": c["max"],
        }
        if kind in NUMERIC:
            n = c["n"]
            if kind == "float":
                entry["mean"] = c["mean"]
            else:
                entry["mean"] = float(Decimal(str(c["sum"])) / n) if n else None
            entry["sum"] = c["sum"]
            entry["std"] = math.sqrt(c["m2"] / (n - 1)) if n > 1 else None
            lo = float(Decimal(str(c["min"]))) if c["min"] is not None else None
            hi = float(Decimal(str(c["max"]))) if c["max"] is not None else None
            found = sketch.quantiles({(s, i): k for s, i, k in c["sketch"]}, PERCENTILES.values(), lo, hi)
            entry["quantiles"] = {label: _shape(found[q], kind) for label, q in PERCENTILES.items()}
        pairs = c["values"] if exact else c["top"]
        ranked = sorted(pairs or [], key=lambda p: (-p[1], p[0] is not None, from_json(kind, p[0])))
        entry["top"] = [{"value": v, "count": k} for v, k in ranked[:top]]
        # Past the exact limit a single read still counts every value; merged partials only
        # know each partition's most frequent ones, so their sums are lower bounds.
        entry["top_exact"] = exact or merged["parts"] == 1
        if kind in TEMPORAL:
            days = c["per_day"]
            entry["per_day"] = [{"day": d, "rows": k} for d, k in days[:MAX_DAYS]]
            entry["per_day_truncated"] = len(days) > MAX_DAYS
        columns.append(entry)
    return {"rows": merged["rows"], "columns": columns}


def _shape(value: float | None, kind: str) -> float | int | None:
    if value is None:
        return None
    return round(value) if kind == "integer" else value
