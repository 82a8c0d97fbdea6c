"""Column mappings: how a ledger or statement file's layout maps onto the fields matching uses.

A mapping names, for each side, which source column holds each canonical field, how dates
and amounts are written, and the file's format. It is given as a preset name, or as a dict
that is laid over a preset (``{"preset": "default", "ledger": {"columns": {"reference":
"invoice_no"}}}``; a column set to null is removed). Mappings are validated when a job is
enqueued, so a bad one never reaches a worker.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tasks.reconciliation.errors import InvalidMapping

#: The fields matching works on. `text` is the counterparty (ledger) or description (statement);
#: `batch` is a payout or batch id that groups ledger lines settled by one statement line.
CanonicalField = Literal["id", "date", "amount", "debit", "credit", "currency", "reference", "text", "batch"]
CANONICAL: tuple[str, ...] = (
    "id",
    "date",
    "amount",
    "debit",
    "credit",
    "currency",
    "reference",
    "text",
    "batch",
)


class SideMapping(BaseModel):
    """The layout of one input file."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["auto", "csv", "parquet", "camt053"] = Field(
        default="auto", description="auto: by extension (.csv, .parquet/.pq, .xml)"
    )
    columns: dict[CanonicalField, str] = Field(description="canonical field -> source column")
    optional: list[CanonicalField] = Field(
        default_factory=list, description="fields used only when the file has them"
    )
    date_format: str | None = Field(default=None, description="strptime format; ISO 8601 if unset")
    decimal_separator: Literal[".", ","] = "."
    thousands_separator: Literal["", ",", ".", " ", "'"] = ""
    delimiter: str | None = Field(default=None, max_length=1, description="CSV delimiter; sniffed if unset")
    encoding: Literal["utf-8", "utf-16", "latin-1"] = "utf-8"
    negate: bool = Field(default=False, description="the file signs amounts the other way round")
    currency: str | None = Field(default=None, description="currency of every line when no column says")

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z]{3}", value.strip()):
            raise ValueError(f"{value!r} is not a three-letter currency code")
        return value.strip().upper() if value else None

    @field_validator("date_format")
    @classmethod
    def _date_format(cls, value: str | None) -> str | None:
        if value is not None and "%" not in value:
            raise ValueError(f"{value!r} is not a strptime format (for example %d/%m/%Y)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SideMapping:
        cols = self.columns
        if self.format == "camt053":
            return self
        if "date" not in cols:
            raise ValueError("a date column is required")
        has_amount = "amount" in cols
        has_split = "debit" in cols or "credit" in cols
        if has_amount == has_split:
            raise ValueError("give either an amount column or debit and credit columns")
        if has_split and not ("debit" in cols and "credit" in cols):
            raise ValueError("debit and credit columns come together")
        for name in ("date", "amount", "debit", "credit"):
            if name in self.optional:
                raise ValueError(f"the {name} column cannot be optional")
        if self.decimal_separator == self.thousands_separator:
            raise ValueError("the decimal and thousands separators must differ")
        return self

    def source_columns(self) -> dict[str, str]:
        return dict(self.columns)


class Mapping(BaseModel):
    """The layouts of both inputs."""

    model_config = ConfigDict(extra="forbid")

    ledger: SideMapping
    statement: SideMapping

    def fingerprint(self) -> str:
        """A stable hash of the mapping, part of a run's key."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` laid over `base`: dicts merge key by key, None removes a key (back to its default)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve(value: str | dict[str, Any] | None) -> Mapping:
    """The mapping named or described by `value` (a preset name, a dict over a preset, or None)."""
    from tasks.reconciliation.presets import PRESETS

    if value is None:
        value = "default"
    if isinstance(value, str):
        if value not in PRESETS:
            raise InvalidMapping(f"unknown mapping preset {value!r}; presets: {', '.join(sorted(PRESETS))}")
        data = PRESETS[value]
    elif isinstance(value, dict):
        over = dict(value)
        preset = over.pop("preset", "default")
        if preset not in PRESETS:
            raise InvalidMapping(f"unknown mapping preset {preset!r}; presets: {', '.join(sorted(PRESETS))}")
        unknown = set(over) - {"ledger", "statement"}
        if unknown:
            raise InvalidMapping(
                f"a mapping has keys preset, ledger and statement, not {', '.join(sorted(unknown))}"
            )
        data = _merge(PRESETS[preset], over)
    else:
        raise InvalidMapping("a mapping is a preset name or a JSON object")
    try:
        return Mapping.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise InvalidMapping(f"invalid mapping: {problems}") from None
