"""schedules, schedule firings (the exactly-once claims) and the schedule change marker

Revision ID: 0004_schedules
Revises: 0003_reconciliation
Create Date: 2026-11-24 08:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import jobs.db

revision = "0004_schedules"
down_revision = "0003_reconciliation"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
UTC = jobs.db.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "schedules",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("task", sa.String(length=200), nullable=False),
        sa.Column("payload", JSON, nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("cron", sa.String(length=120), nullable=True),
        sa.Column("every", sa.Integer(), nullable=True),
        sa.Column("run_at", UTC, nullable=True),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("queue", sa.String(length=100), nullable=True),
        sa.Column("priority", sa.Integer(), nullable=True),
        sa.Column("overlap", sa.String(length=8), nullable=False),
        sa.Column("catchup", sa.String(length=8), nullable=False),
        sa.Column("armed_at", UTC, nullable=False),
        sa.Column("last_slot", UTC, nullable=True),
        sa.Column("last_outcome", sa.String(length=16), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_run_at", UTC, nullable=True),
        sa.Column("last_job_id", sa.String(length=64), nullable=True),
        sa.Column("last_success_at", UTC, nullable=True),
        sa.Column("failure_streak", sa.Integer(), nullable=False),
        sa.Column("run_count", sa.Integer(), nullable=False),
        sa.Column("next_run_at", UTC, nullable=True),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("updated_at", UTC, nullable=False),
        sa.CheckConstraint(
            "(CASE WHEN cron IS NULL THEN 0 ELSE 1 END) + (CASE WHEN every IS NULL THEN 0 ELSE 1 END)"
            " + (CASE WHEN run_at IS NULL THEN 0 ELSE 1 END) = 1",
            name=op.f("ck_schedules_one_timing"),
        ),
        sa.CheckConstraint("every IS NULL OR every >= 1", name=op.f("ck_schedules_every_positive")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_schedules")),
        sa.UniqueConstraint("name", name=op.f("uq_schedules_name")),
    )
    with op.batch_alter_table("schedules", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_schedules_next_run_at"), ["next_run_at"], unique=False)

    op.create_table(
        "schedule_firings",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("schedule_id", sa.Integer(), nullable=False),
        sa.Column("slot", UTC, nullable=False),
        sa.Column("fired_at", UTC, nullable=False),
        sa.Column("fired_by", sa.String(length=255), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("finished_at", UTC, nullable=True),
        sa.ForeignKeyConstraint(["schedule_id"], ["schedules.id"], ondelete="CASCADE",
                                name=op.f("fk_schedule_firings_schedule_id_schedules")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_schedule_firings")),
        sa.UniqueConstraint("schedule_id", "slot", name=op.f("uq_schedule_firings_schedule_id")),
    )
    with op.batch_alter_table("schedule_firings", schema=None) as batch_op:
        batch_op.create_index("ix_schedule_firings_fired_at", ["fired_at"], unique=False)
        batch_op.create_index("ix_schedule_firings_outcome", ["outcome"], unique=False)

    changes = op.create_table(
        "schedule_changes",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("changed_at", UTC, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_schedule_changes")),
    )
    op.bulk_insert(changes, [{"id": 1, "version": 0, "changed_at": None}])


def downgrade() -> None:
    op.drop_table("schedule_changes")
    with op.batch_alter_table("schedule_firings", schema=None) as batch_op:
        batch_op.drop_index("ix_schedule_firings_outcome")
        batch_op.drop_index("ix_schedule_firings_fired_at")
    op.drop_table("schedule_firings")
    with op.batch_alter_table("schedules", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_schedules_next_run_at"))
    op.drop_table("schedules")
