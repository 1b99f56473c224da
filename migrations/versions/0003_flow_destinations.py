"""flows: destination organisation, known service and category, Community ID

Issue 16: a flow says which known service it went to (Google Drive, GitHub, an AI
assistant…) and its category, the organisation owning the address when an ASN database
is configured, and its Community ID v1 so a SIEM can join it with Zeek or Suricata
records. All nullable: flows written before this revision simply lack them.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06 17:05:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("flows", schema=None) as batch_op:
        batch_op.add_column(sa.Column("dest_org", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("service", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("service_category", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("community_id", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("flows", schema=None) as batch_op:
        for name in ("community_id", "service_category", "service", "dest_org"):
            batch_op.drop_column(name)
