"""Job delivery: publish tracking for transactional and held jobs, encrypted secrets

Revision ID: 0006_job_delivery
Revises: 0004_schedules
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import jobs.db

revision = "0006_job_delivery"
down_revision = "0004_schedules"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("published_at", jobs.db.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("publish_after", jobs.db.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("secrets", sa.Text(), nullable=True))
        batch_op.create_index("ix_jobs_unpublished", ["publish_after"], unique=False,
                              postgresql_where=sa.text("published_at IS NULL"),
                              sqlite_where=sa.text("published_at IS NULL"))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_unpublished", postgresql_where=sa.text("published_at IS NULL"),
                            sqlite_where=sa.text("published_at IS NULL"))
        batch_op.drop_column("secrets")
        batch_op.drop_column("publish_after")
        batch_op.drop_column("published_at")
