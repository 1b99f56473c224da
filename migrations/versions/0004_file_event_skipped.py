"""file_events: why the content was not (fully) classified, and where it stopped

Issue 17: a file whose classification was cut short must say so in the store, not
only in a metric: `skipped` is the classifier's reason (timeout, deferred, busy,
malformed, absurd_count, member_limit, unsafe_pickle, ...), and `skipped_at` the tier
reached when `classify.file_deadline` passed ("content", "archive member 12").
Nullable: rows written before this revision, and fully classified files, have none.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 17:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("file_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("skipped", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("skipped_at", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("file_events", schema=None) as batch_op:
        batch_op.drop_column("skipped_at")
        batch_op.drop_column("skipped")
