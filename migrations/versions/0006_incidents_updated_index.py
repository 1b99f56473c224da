"""incidents: index on updated_at, for `incidents list --since`

Issue 18: `incidents list` orders by the last update and `--since` filters on it; with a
fleet's incidents in one store that was a sequential scan and a sort. Both dialects.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 20:35:00
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("incidents", schema=None) as batch_op:
        batch_op.create_index("ix_incidents_updated", ["updated_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("incidents", schema=None) as batch_op:
        batch_op.drop_index("ix_incidents_updated")
