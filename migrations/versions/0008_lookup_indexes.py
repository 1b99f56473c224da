"""file_events: no index on path; the sha256 one only for hashed events

Issue 18: every forwarded file event pays for every index of `file_events`, and on a
fleet store the forwarder's rate is bounded by the backends' CPU per row. Neither index
served a query the agent, the CLI or the fleet dashboards send (bench/store.py `PLANNED`,
bench/fleet_panels.py); together they cost 1.5-2 µs of backend CPU per forwarded row
(of about 16) in bench/store.py's mix:

- `ix_file_events_path`, a long text key on every file event: dropped (what the agent
  knows of a path now is `file_state`, keyed by `(host_id, path)`);
- `ix_file_events_sha256`: kept for the look-up "where did this content go" as
  `ix_file_events_sha256_set`, partial on `sha256 IS NOT NULL`, so events without a
  hash (most of them) cost no index entry; the look-up's `sha256 = …` implies the
  predicate, so the planner still uses it.

The time and `(host_id, time)` indexes stay (`events list`, retention, the dashboards),
and so do the analysts' look-ups by destination, rule and judged event (a few of the
rows: flows and decisions). Both dialects; on a partitioned PostgreSQL store the
parent's index change goes to every partition. The downgrade builds both again.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 08:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# (index, table, columns) dropped: frozen here, not imported
DROPPED = (
    ("ix_file_events_path", "file_events", ("path",)),
    ("ix_file_events_sha256", "file_events", ("sha256",)),
)
_HASHED = sa.text("sha256 IS NOT NULL")


def upgrade() -> None:
    for name, table, _cols in DROPPED:
        op.drop_index(name, table_name=table)
    op.create_index(
        "ix_file_events_sha256_set",
        "file_events",
        ["sha256"],
        postgresql_where=_HASHED,
        sqlite_where=_HASHED,
    )


def downgrade() -> None:
    op.drop_index("ix_file_events_sha256_set", table_name="file_events")
    for name, table, cols in DROPPED:
        op.create_index(name, table, list(cols))
