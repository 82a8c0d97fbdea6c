"""Filters: `column op value`, parsed, checked against the column's type, and bound.

A filter never reaches SQL as text. The string form (`"status = paid"`, `"amount >= 100"`,
`"region in (north, 'south east')"`, `"note is null"`) is parsed into a `Filter`; its column is
checked against the data set and quoted, its values are converted to the column's type (so
`amount > abc` is refused with a clear message before any job runs) and bound as parameters.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from tasks.analysis.engine import NUMERIC, ORDERED, Sql, ident
from tasks.analysis.errors import MalformedFilter

Op = Literal["=", "!=", "<", "<=", ">", ">=", "in", "not in", "is null", "is not null", "like", "not like"]
OPS: tuple[str, ...] = Op.__args__  # type: ignore[attr-defined]
ALIASES = {"==": "=", "<>": "!="}
NO_VALUE = ("is null", "is not null")
LIST_OPS = ("in", "not in")

_PATTERN = re.compile(
    r"""^\s*(?P<col>"(?:[^"]|"")+"|[^\s=!<>"]+)\s*
    (?P<op>is\s+not\s+null|is\s+null|not\s+in|not\s+like|in|like|<=|>=|!=|<>|==|=|<|>)
    (?P<value>.*)$""", re.IGNORECASE | re.VERBOSE | re.DOTALL)


class Filter(BaseModel):
    """One condition: `column op value` (`value` is a list for `in`, absent for `is null`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    column: str
    op: Op
    value: Any = None

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data: Any) -> Any:
        if isinstance(data, str):
            return parse(data).model_dump()
        if isinstance(data, dict) and isinstance(data.get("op"), str):
            op = " ".join(data["op"].lower().split())
            data = {**data, "op": ALIASES.get(op, op)}
        return data

    @model_validator(mode="after")
    def _value_fits_op(self) -> Filter:
        if self.op in NO_VALUE and self.value is not None:
            raise ValueError(f"'{self.op}' takes no value")
        if self.op in LIST_OPS and (not isinstance(self.value, list) or not self.value):
            raise ValueError(f"'{self.op}' takes a non-empty list of values")
        single = self.value is not None and not isinstance(self.value, (list, dict))
        if self.op not in NO_VALUE + LIST_OPS and not single:
            raise ValueError(f"'{self.op}' takes one value")
        return self

    def __str__(self) -> str:
        if self.op in NO_VALUE:
            return f"{self.column} {self.op}"
        return f"{self.column} {self.op} {self.value}"


def parse(text: str) -> Filter:
    """`"status = paid"` -> Filter(column="status", op="=", value="paid")."""
    m = _PATTERN.match(text)
    if not m:
        raise MalformedFilter(f"filter {text!r} is not 'column op value' (op: {', '.join(OPS)})")
    col = m.group("col")
    if col.startswith('"'):
        col = col[1:-1].replace('""', '"')
    op = " ".join(m.group("op").lower().split())
    op = ALIASES.get(op, op)
    raw = m.group("value").strip()
    if op in NO_VALUE:
        if raw:
            raise MalformedFilter(f"filter {text!r}: '{op}' takes no value")
        return Filter(column=col, op=op)  # type: ignore[arg-type]
    if op in ("in", "not in", "like", "not like") and m.group("value")[:1] not in (" ", "\t", "(", "'", '"'):
        raise MalformedFilter(f"filter {text!r} is not 'column op value'")
    if not raw:
        raise MalformedFilter(f"filter {text!r} has no value after '{op}'")
    if op in LIST_OPS:
        if raw.startswith("(") != raw.endswith(")"):
            raise MalformedFilter(f"filter {text!r}: unbalanced parentheses")
        if raw.startswith("("):
            raw = raw[1:-1]
        values = _split_list(raw, text)
        return Filter(column=col, op=op, value=values)  # type: ignore[arg-type]
    return Filter(column=col, op=op, value=_unquote(raw, text))  # type: ignore[arg-type]


def _unquote(raw: str, text: str) -> str:
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        q = raw[0]
        inner = raw[1:-1]
        if q in inner.replace(q * 2, ""):
            raise MalformedFilter(f"filter {text!r}: stray quote in {raw}")
        return inner.replace(q * 2, q)
    if raw[:1] in "'\"" or raw[-1:] in "'\"":
        raise MalformedFilter(f"filter {text!r}: unterminated quote in {raw}")
    return raw


def _split_list(raw: str, text: str) -> list[str]:
    items, cur, quote = [], "", ""
    for ch in raw:
        if quote:
            cur += ch
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
            cur += ch
        elif ch == ",":
            items.append(cur)
            cur = ""
        else:
            cur += ch
    if quote:
        raise MalformedFilter(f"filter {text!r}: unterminated quote")
    items.append(cur)
    values = [_unquote(i.strip(), text) for i in items]
    if any(v == "" for v in values):
        raise MalformedFilter(f"filter {text!r}: empty item in the list")
    return values


# --- checking against the data set ------------------------------------------------------------------
_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}


def coerce(value: Any, kind: str, f: Filter) -> Any:
    """`value` converted to the column's kind, or MalformedFilter naming what was expected."""
    try:
        if kind == "integer":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(str(value).strip()) if not isinstance(value, int) else value
        if kind == "decimal":
            return Decimal(str(value).strip())
        if kind == "float":
            return float(value)
        if kind == "boolean":
            if isinstance(value, bool):
                return value
            word = str(value).strip().lower()
            if word in _TRUE | _FALSE:
                return word in _TRUE
            raise ValueError
        if kind == "date":
            return date.fromisoformat(str(value).strip())
        if kind == "timestamp":
            return datetime.fromisoformat(str(value).strip())
        return str(value)
    except (ValueError, TypeError, InvalidOperation):
        expected = {"integer": "a whole number", "decimal": "a number", "float": "a number",
                    "boolean": "true or false", "date": "a date like 2024-01-31",
                    "timestamp": "a time like 2024-01-31T08:00:00"}.get(kind, "a value")
        raise MalformedFilter(
            f"filter '{f}': {value!r} is not {expected} (column {f.column} is {kind})") from None


def to_sql(filters: list[Filter], kinds: dict[str, str], q: Sql) -> str:
    """The filters as one SQL condition over checked columns with bound values ("true" if none)."""
    from tasks.analysis.errors import UnknownColumn

    parts = []
    for f in filters:
        if f.column not in kinds:
            raise UnknownColumn(column=f.column, available=list(kinds))
        kind = kinds[f.column]
        col = ident(f.column)
        if f.op in NO_VALUE:
            parts.append(f"{col} {f.op.upper()}")
        elif f.op in LIST_OPS:
            values = ", ".join(q.bind(coerce(v, kind, f), "f") for v in f.value)
            parts.append(f"{col} {f.op.upper()} ({values})")
        elif f.op in ("like", "not like"):
            if kind != "string":
                raise MalformedFilter(f"filter '{f}': '{f.op}' needs a text column; {f.column} is {kind}")
            parts.append(f"{col} {f.op.upper()} {q.bind(str(f.value), 'f')}")
        else:
            if f.op not in ("=", "!=") and kind not in ORDERED | NUMERIC:
                raise MalformedFilter(f"filter '{f}': {f.column} ({kind}) has no order")
            parts.append(f"{col} {f.op} {q.bind(coerce(f.value, kind, f), 'f')}")
    return " AND ".join(f"({p})" for p in parts) or "true"
