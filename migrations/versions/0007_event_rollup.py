"""event_rollup: per-host, per-day row counts kept by triggers (PostgreSQL only)

`status --hosts` counted every event row (≈ 40 s at 100 M rows). This adds
`event_rollup` (host, table, UTC day, rows, newest event time), kept in the storing
transaction by statement triggers on the event tables (agent/store/rollup.py), and fills
it from the rows already stored: one scan of the event tables, which are locked against
writers meanwhile (agents keep spooling). SQLite stores are left as they are.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 21:15:00
"""

from __future__ import annotations

from alembic import op

from agent.store import rollup

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        rollup.install(conn)


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        rollup.uninstall(conn)
