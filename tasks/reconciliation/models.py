"""The reconciliation tables: one `recon_runs` row per run, one `recon_items` row per match or
discrepancy. A run's id is derived from its key (the inputs' content hashes and the
parameters), so running the same inputs again finds the same run."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Date, Integer, Numeric, String, Text
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from jobs.db import Base

#: Plain `json` on PostgreSQL (stored as text, parsed when read), not the store's usual jsonb:
#: parsing four jsonb values per row on write doubled the COPY time of a million items.
JSONText = JSON(none_as_null=True)


class RunStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Money(TypeDecorator[Decimal]):
    """An exact amount: NUMERIC(20, 4) on PostgreSQL; text on SQLite, which has no decimal type
    (its NUMERIC would round through a float). Always a `Decimal` in Python."""

    impl = Numeric(20, 4)
    cache_ok = True

    def load_dialect_impl(self, dialect: Any) -> Any:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(32))
        return dialect.type_descriptor(Numeric(20, 4, asdecimal=True))

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        if value is None:
            return None
        value = Decimal(value) if not isinstance(value, Decimal) else value
        return str(value) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Any) -> Decimal | None:
        return None if value is None else Decimal(value)


class ReconRun(Base):
    __tablename__ = "recon_runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    #: sha256 of the inputs' hashes, the mapping and the parameters.
    key: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[str | None] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.RUNNING)
    ledger_path: Mapped[str] = mapped_column(String(1000))
    ledger_sha256: Mapped[str | None] = mapped_column(String(64))
    ledger_lines: Mapped[int | None] = mapped_column(Integer)
    statement_path: Mapped[str] = mapped_column(String(1000))
    statement_sha256: Mapped[str | None] = mapped_column(String(64))
    statement_lines: Mapped[int | None] = mapped_column(Integer)
    #: mapping, tolerances, engine version: everything that decides the result.
    params: Mapped[dict[str, Any]]
    counts: Mapped[dict[str, Any] | None]
    lines: Mapped[dict[str, Any] | None]
    totals: Mapped[dict[str, Any] | None]
    matched_total: Mapped[dict[str, Any] | None]
    unexplained_difference: Mapped[dict[str, Any] | None]
    report_path: Mapped[str | None] = mapped_column(String(1000))
    files: Mapped[dict[str, Any] | None]
    notification: Mapped[dict[str, Any] | None]
    timings: Mapped[dict[str, Any] | None]
    error_type: Mapped[str | None] = mapped_column(String(200))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(index=True)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class ReconItem(Base):
    """One match or discrepancy of a run.

    No foreign key to `recon_runs`: a million-row COPY would pay a referential check per row
    (a quarter of the store time, measured). Items are only written in the transaction that
    finishes their run, and `RunStore` deletes them with it."""

    __tablename__ = "recon_items"

    run_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    #: Position in the report: discrepancies first (by type), then matches, each by date.
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    type: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16))
    currency: Mapped[str | None] = mapped_column(String(16))
    ledger_ids: Mapped[list[str]] = mapped_column(JSONText)
    statement_ids: Mapped[list[str]] = mapped_column(JSONText)
    ledger_lines: Mapped[list[int]] = mapped_column(JSONText)
    statement_lines: Mapped[list[int]] = mapped_column(JSONText)
    ledger_date: Mapped[date | None] = mapped_column(Date)
    statement_date: Mapped[date | None] = mapped_column(Date)
    ledger_amount: Mapped[Decimal | None] = mapped_column(Money)
    statement_amount: Mapped[Decimal | None] = mapped_column(Money)
    difference: Mapped[Decimal | None] = mapped_column(Money)
    reference: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)


ITEM_COLUMNS = (
    "run_id",
    "seq",
    "type",
    "kind",
    "currency",
    "ledger_ids",
    "statement_ids",
    "ledger_lines",
    "statement_lines",
    "ledger_date",
    "statement_date",
    "ledger_amount",
    "statement_amount",
    "difference",
    "reference",
    "reason",
)
