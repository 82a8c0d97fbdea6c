"""email: the outbox (one row per message) and the campaigns table

Revision ID: 0002_email
Revises: 0001
Create Date: 2026-11-24 08:33:14.051018
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import jobs.db  # noqa: F401 - column types

JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True, astext_type=sa.Text()),
                                              'postgresql')

revision = '0002_email'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('email_campaigns',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('template', sa.String(length=200), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('rate', sa.Float(), nullable=False),
    sa.Column('recipients', sa.Integer(), nullable=False),
    sa.Column('planned', sa.Integer(), nullable=False),
    sa.Column('skipped_duplicates', sa.Integer(), nullable=False),
    sa.Column('skipped_in_doubt', sa.Integer(), nullable=False),
    sa.Column('invalid', sa.Integer(), nullable=False),
    sa.Column('invalid_examples', JSON, nullable=True),
    sa.Column('summary', JSON, nullable=True),
    sa.Column('created_at', jobs.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('finished_at', jobs.db.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_email_campaigns'))
    )
    with op.batch_alter_table('email_campaigns', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_email_campaigns_key'), ['key'], unique=False)

    op.create_table('email_outbox',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('message_id', sa.String(length=255), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('sender', sa.String(length=320), nullable=False),
    sa.Column('recipients', JSON, nullable=False),
    sa.Column('subject', sa.Text(), nullable=True),
    sa.Column('template', sa.String(length=200), nullable=True),
    sa.Column('campaign', sa.String(length=255), nullable=True),
    sa.Column('campaign_run', sa.String(length=64), nullable=True),
    sa.Column('payload', JSON, nullable=True),
    sa.Column('raw', sa.LargeBinary(), nullable=True),
    sa.Column('size', sa.Integer(), nullable=True),
    sa.Column('send_at', jobs.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('released_at', jobs.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('enqueued_at', jobs.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.String(length=64), nullable=True),
    sa.Column('claimed_at', jobs.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('data_at', jobs.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_response', sa.Text(), nullable=True),
    sa.Column('refused', JSON, nullable=True),
    sa.Column('created_at', jobs.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', jobs.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('sent_at', jobs.db.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_email_outbox')),
    sa.UniqueConstraint('key', name=op.f('uq_email_outbox_key')),
    sa.UniqueConstraint('message_id', name=op.f('uq_email_outbox_message_id'))
    )
    with op.batch_alter_table('email_outbox', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_email_outbox_campaign'), ['campaign'], unique=False)
        batch_op.create_index('ix_email_outbox_campaign_run_status', ['campaign_run', 'status'], unique=False)
        batch_op.create_index('ix_email_outbox_created_at', ['created_at'], unique=False)
        batch_op.create_index('ix_email_outbox_status_send_at', ['status', 'send_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('email_outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_email_outbox_status_send_at')
        batch_op.drop_index('ix_email_outbox_created_at')
        batch_op.drop_index('ix_email_outbox_campaign_run_status')
        batch_op.drop_index(batch_op.f('ix_email_outbox_campaign'))

    op.drop_table('email_outbox')
    with op.batch_alter_table('email_campaigns', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_email_campaigns_key'))

    op.drop_table('email_campaigns')
