"""reconciliation runs and items

Revision ID: 0003_reconciliation
Revises: 0002_email
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import jobs.db
import tasks.reconciliation.models

revision = "0003_reconciliation"
down_revision = "0002_email"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
Money = tasks.reconciliation.models.Money


def upgrade() -> None:
    op.create_table(
        "recon_runs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("ledger_path", sa.String(length=1000), nullable=False),
        sa.Column("ledger_sha256", sa.String(length=64), nullable=True),
        sa.Column("ledger_lines", sa.Integer(), nullable=True),
        sa.Column("statement_path", sa.String(length=1000), nullable=False),
        sa.Column("statement_sha256", sa.String(length=64), nullable=True),
        sa.Column("statement_lines", sa.Integer(), nullable=True),
        sa.Column("params", JSON, nullable=False),
        sa.Column("counts", JSON, nullable=True),
        sa.Column("lines", JSON, nullable=True),
        sa.Column("totals", JSON, nullable=True),
        sa.Column("matched_total", JSON, nullable=True),
        sa.Column("unexplained_difference", JSON, nullable=True),
        sa.Column("report_path", sa.String(length=1000), nullable=True),
        sa.Column("files", JSON, nullable=True),
        sa.Column("notification", JSON, nullable=True),
        sa.Column("timings", JSON, nullable=True),
        sa.Column("error_type", sa.String(length=200), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", jobs.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("started_at", jobs.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("finished_at", jobs.db.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recon_runs")),
        sa.UniqueConstraint("key", name=op.f("uq_recon_runs_key")),
    )
    with op.batch_alter_table("recon_runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_recon_runs_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_recon_runs_job_id"), ["job_id"], unique=False)
    op.create_table(
        "recon_items",
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("currency", sa.String(length=16), nullable=True),
        sa.Column("ledger_ids", sa.JSON(), nullable=False),
        sa.Column("statement_ids", sa.JSON(), nullable=False),
        sa.Column("ledger_lines", sa.JSON(), nullable=False),
        sa.Column("statement_lines", sa.JSON(), nullable=False),
        sa.Column("ledger_date", sa.Date(), nullable=True),
        sa.Column("statement_date", sa.Date(), nullable=True),
        sa.Column("ledger_amount", Money(), nullable=True),
        sa.Column("statement_amount", Money(), nullable=True),
        sa.Column("difference", Money(), nullable=True),
        sa.Column("reference", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "seq", name=op.f("pk_recon_items")),
    )


def downgrade() -> None:
    op.drop_table("recon_items")
    with op.batch_alter_table("recon_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_recon_runs_job_id"))
        batch_op.drop_index(batch_op.f("ix_recon_runs_created_at"))
    op.drop_table("recon_runs")
