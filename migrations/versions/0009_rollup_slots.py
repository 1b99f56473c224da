"""event_rollup: a slot in the key, so two batches in flight count in different rows

Issue 18: the forwarder COPYs the next batch's event rows while the batch before it is
being finished in another transaction. Both statement triggers updated the same
(host, table, day) counter row, so the second COPY waited for the first transaction's
commit and the two backends took turns. The slot (set per opened transaction through
the `egress.rollup_slot` setting, 0 where none is set) keeps them apart; readers sum
over the slots, a delete folds a day's slots back into slot 0 (agent/store/rollup.py).
PostgreSQL only (SQLite stores have no rollup). The downgrade sums the slots back into
one row a day and restores 0007's trigger functions.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 09:45:00
"""

from __future__ import annotations

from alembic import op

from agent.store import rollup

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "postgresql" and rollup.installed(conn):
        rollup.add_slots(conn)


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "postgresql" and rollup.installed(conn):
        rollup.drop_slots(conn)
