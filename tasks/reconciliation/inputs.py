"""The job's payload: what to reconcile and how. Checked when the job is enqueued."""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

from pydantic import BaseModel, ConfigDict, EmailStr, Field, field_validator

from tasks.reconciliation.mapping import resolve
from tasks.reconciliation.money import Tolerance


def _relative(value: str) -> str:
    path = PurePath(value.strip())
    if not value.strip():
        raise ValueError("give a file path")
    if path.is_absolute() or ".." in path.parts:
        raise ValueError(
            f"{value!r} must be a path inside the data directory, relative to it (no leading / and no ..)"
        )
    return str(path)


class ReconcileInput(BaseModel):
    """Reconcile `ledger` against `statement` (both relative to CONVEYOR_DATA_DIR)."""

    model_config = ConfigDict(extra="forbid")

    ledger: str = Field(description="ledger file (CSV or Parquet), relative to the data directory")
    statement: str = Field(
        description="statement file (CSV, Parquet or camt.053 XML), relative to the data directory"
    )
    mapping: str | dict[str, Any] | None = Field(
        default=None, description="preset name (default, camt053, bank_debit_credit, ...) or a mapping object"
    )
    date_tolerance_days: int | None = Field(
        default=None, ge=0, le=366, description="defaults to CONVEYOR_RECON_DATE_TOLERANCE_DAYS"
    )
    amount_tolerance: str = Field(default="0", description='absolute ("0.05") or percent ("0.5%")')
    notify: list[EmailStr] | None = Field(
        default=None,
        max_length=50,
        description="mail the summary here when discrepancies reach the threshold",
    )
    force: bool = Field(default=False, description="match again even if this run already succeeded")

    @field_validator("ledger", "statement")
    @classmethod
    def _inside_data_dir(cls, value: str) -> str:
        return _relative(value)

    @field_validator("mapping")
    @classmethod
    def _mapping(cls, value: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
        resolve(value)  # raises InvalidMapping, a ValueError, with what is wrong
        return value

    @field_validator("amount_tolerance", mode="before")
    @classmethod
    def _tolerance(cls, value: object) -> str:
        if isinstance(value, float):
            raise ValueError("give the amount tolerance as a string ('0.05' or '0.5%'), not a float")
        Tolerance.parse(str(value))
        return str(value).strip()
