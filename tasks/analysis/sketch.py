"""Mergeable sketches: what lets a quantile or a distinct count be split across workers.

Quantiles: a log-bucket histogram (the DDSketch mapping). A value x lands in bucket
(sign(x), ceil(log_gamma |x|)) with gamma = (1 + a) / (1 - a); every value of a bucket is
within relative error `a` of the bucket's representative 2 gamma^i / (gamma + 1). Buckets are
just counts, so partitions merge by adding them: the merged sketch is the very sketch one
process would have built over all the data, and its quantiles are the same numbers. The
quantile q is the value of rank floor(q (n - 1)) (numpy's method="lower"), within `a`,
clamped to the exact min and max.

Distinct counts: HyperLogLog with 4096 registers (about 1.6% standard error), computed in
SQL from DuckDB's 64-bit `hash()`; registers merge by max, so they too are exactly the same
split or not. The profile uses it only past `analysis_exact_distinct_limit` distinct values.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Mapping

HLL_BITS = 12
HLL_REGISTERS = 1 << HLL_BITS


class QuantileSketch:
    """The bucket mapping for one relative accuracy, in SQL (to build) and Python (to read)."""

    def __init__(self, accuracy: float) -> None:
        self.accuracy = accuracy
        self.gamma = (1 + accuracy) / (1 - accuracy)
        self.inv_log_gamma = 1 / math.log(self.gamma)

    def sign_sql(self, x: str) -> str:
        return f"CAST(sign({x}) AS TINYINT)"

    def index_sql(self, x: str) -> str:
        """The bucket index of a DOUBLE expression (0 for zero; ln of 0 is never evaluated)."""
        return (f"CAST(ceil(ln(CASE WHEN {x} = 0 THEN 1 ELSE abs({x}) END) * {self.inv_log_gamma!r})"
                f" AS INTEGER)")

    def value_sql(self, s: str, i: str) -> str:
        """The representative value of bucket (s, i)."""
        return f"({s} * 2 * pow({self.gamma!r}, {i}) / {self.gamma + 1!r})"

    def value(self, s: int, i: int) -> float:
        return s * 2 * self.gamma**i / (self.gamma + 1)

    def quantiles(self, buckets: Mapping[tuple[int, int], int], qs: Iterable[float],
                  lo: float | None, hi: float | None) -> dict[float, float | None]:
        """Quantiles read from merged bucket counts, clamped to the exact [lo, hi]."""
        ordered = sorted(buckets.items(), key=lambda kv: (kv[0][0], kv[0][0] * kv[0][1]))
        total = sum(n for _, n in ordered)
        out: dict[float, float | None] = {}
        for q in qs:
            if total == 0:
                out[q] = None
                continue
            rank = math.floor(q * (total - 1))
            cum = 0
            for (s, i), n in ordered:
                cum += n
                if cum > rank:
                    v = self.value(s, i)
                    if lo is not None:
                        v = max(v, lo)
                    if hi is not None:
                        v = min(v, hi)
                    out[q] = v
                    break
        return out


def hll_register_sql(h: str) -> tuple[str, str]:
    """SQL giving (register, rank) of a 64-bit hash `h`; the rank is trailing zeros + 1, capped."""
    w = f"(({h} >> {HLL_BITS}) | {1 << (64 - HLL_BITS)}::UBIGINT)"
    return f"CAST({h} & {HLL_REGISTERS - 1} AS INTEGER)", f"CAST(bit_count(({w} - 1) & ~{w}) + 1 AS INTEGER)"


def hll_encode(registers: Mapping[int, int]) -> str:
    data = bytearray(HLL_REGISTERS)
    for r, rank in registers.items():
        data[r] = max(data[r], rank)
    return base64.b64encode(bytes(data)).decode()


def hll_merge(encoded: Iterable[str]) -> str:
    data = bytearray(HLL_REGISTERS)
    for enc in encoded:
        for r, rank in enumerate(base64.b64decode(enc)):
            if rank > data[r]:
                data[r] = rank
    return base64.b64encode(bytes(data)).decode()


def hll_estimate(encoded: str) -> int:
    """The HyperLogLog estimate, with linear counting for small cardinalities."""
    regs = base64.b64decode(encoded)
    m = len(regs)
    alpha = 0.7213 / (1 + 1.079 / m)
    raw = alpha * m * m / sum(2.0 ** -r for r in regs)
    zeros = regs.count(0)
    if raw <= 2.5 * m and zeros:
        return round(m * math.log(m / zeros))
    return round(raw)
