"""decisions: regime, legal reference, item code, control state and confidence

What a compliance officer acts on (issue 13): which regime and law a decision rests on,
the item code, whether the control was in force on the event's day (and in which
state: in_force, not_yet_in_force, suspended, not_enforced, repealed) and the
confidence of the categories behind it. Rows written before this revision read as
in force with empty texts, which is what the engine assumed when it wrote them.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06 17:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("regime", sa.String(length=64), server_default="", nullable=False)
        )
        batch_op.add_column(sa.Column("legal_ref", sa.Text(), server_default="", nullable=False))
        batch_op.add_column(sa.Column("item", sa.Text(), server_default="", nullable=False))
        batch_op.add_column(
            sa.Column("in_force", sa.Boolean(), server_default=sa.true(), nullable=False)
        )
        batch_op.add_column(
            sa.Column(
                "control_state", sa.String(length=48), server_default="in_force", nullable=False
            )
        )
        batch_op.add_column(
            sa.Column("confidence", sa.String(length=8), server_default="", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        for name in ("confidence", "control_state", "in_force", "item", "legal_ref", "regime"):
            batch_op.drop_column(name)
