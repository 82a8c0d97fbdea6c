"""Exact money: amounts are integers of 1/10,000 of a currency unit ("units") end to end.

Four decimal places hold every ISO 4217 currency (0, 2 or 3 minor digits) and the odd
ledger that books a fraction of a cent, with room for 922 trillion in an int64. Integers
make sums and comparisons exact in DuckDB, Arrow, numpy and Python alike. Text is made only
at the edges, always with at least two decimals and more only when needed (`12.30`,
`0.125`, `-0.0005`), by `format_units` (one value) or `units_to_text` (an Arrow column),
which agree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SCALE = 4
UNIT = 10**SCALE

_DECIMAL = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")


def to_units(value: str | int | Decimal) -> int:
    """`"12.30"` -> 123000. Raises ValueError for anything that is not an exact decimal."""
    if isinstance(value, (bool, float)):
        raise ValueError(f"{value!r} is a {type(value).__name__}; give amounts as decimal strings")
    if isinstance(value, int):
        return value * UNIT
    if isinstance(value, str):
        text = value.strip()
        if not _DECIMAL.match(text):
            raise ValueError(f"{value!r} is not a decimal number")
        value = Decimal(text)
    try:
        scaled = value.scaleb(SCALE)
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a decimal number") from None
    if not scaled.is_finite() or scaled != scaled.to_integral_value():
        raise ValueError(f"{value!r} has more than {SCALE} decimal places")
    return int(scaled)


def to_decimal(units: int) -> Decimal:
    return Decimal(units).scaleb(-SCALE)


def format_units(units: int | None, currency: str | None = None) -> str | None:
    """Units as a decimal string: at least two decimals, more only when they are not zero."""
    if units is None:
        return None
    sign = "-" if units < 0 else ""
    whole, frac = divmod(abs(units), UNIT)
    text = f"{frac:0{SCALE}d}"
    text = text[:2] + text[2:].rstrip("0")
    return f"{sign}{whole}.{text}"


def units_to_text(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """`format_units` over an int64 Arrow column, vectorized (nulls stay null).

    The int64 buffer is widened to decimal128(20, 4), which reads the same integers as
    units/10,000 exactly; Arrow prints it with four decimals and the zero tail is cut off."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    array = array.cast(pa.int64())
    n = len(array)
    values = pc.fill_null(array, 0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    wide = np.empty((n, 2), dtype=np.int64)
    wide[:, 0] = values
    wide[:, 1] = values >> 63
    decimals = pa.Array.from_buffers(
        pa.decimal128(20, SCALE),
        n,
        [array.buffers()[0], pa.py_buffer(wide)],
        null_count=array.null_count,
        offset=0,
    )
    text = pc.cast(decimals, pa.string())
    cut2 = pa.array(values % 100 == 0)
    cut1 = pa.array(values % 10 == 0)
    return pc.if_else(
        cut2,
        pc.utf8_slice_codeunits(text, 0, -2),
        pc.if_else(cut1, pc.utf8_slice_codeunits(text, 0, -1), text),
    )


@dataclass(frozen=True)
class Tolerance:
    """How far two amounts may differ for a `tolerance` match: absolute units or a percentage
    of the ledger amount (both exact: the percentage is kept as a Decimal)."""

    units: int = 0
    percent: Decimal | None = None

    @classmethod
    def parse(cls, text: str | int | Decimal | None) -> Tolerance:
        if text is None:
            return cls()
        raw = str(text).strip()
        if raw.endswith("%"):
            try:
                pct = Decimal(raw[:-1].strip())
            except InvalidOperation:
                raise ValueError(f"{text!r} is not a percentage like '0.5%'") from None
            if not pct.is_finite() or pct < 0 or pct > 100:
                raise ValueError(f"{text!r}: a percentage tolerance is between 0% and 100%")
            return cls(percent=pct)
        units = to_units(raw)
        if units < 0:
            raise ValueError(f"{text!r}: the amount tolerance cannot be negative")
        return cls(units=units)

    def allows(self, ledger_units: int, statement_units: int) -> bool:
        diff = abs(ledger_units - statement_units)
        if self.percent is not None:
            return diff * 100 <= self.percent * abs(ledger_units)
        return diff <= self.units

    def sql(self, ledger: str, statement: str) -> str:
        """The same test as `allows`, as an exact DuckDB expression over two BIGINT columns."""
        diff = f"abs({ledger}::HUGEINT - {statement}::HUGEINT)"
        if self.percent is not None:
            num, den = self.percent.as_integer_ratio()
            return f"({diff} * 100 * {den} <= {num} * abs({ledger}::HUGEINT))"
        return f"({diff} <= {self.units})"

    @property
    def exact(self) -> bool:
        return (self.units == 0) if self.percent is None else self.percent == 0

    def __str__(self) -> str:
        if self.percent is not None:
            return f"{self.percent}%"
        return format_units(self.units) or "0.00"
