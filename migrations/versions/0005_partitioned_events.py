"""PostgreSQL: event tables partitioned by day; forward_marks for exactly-once forwarding

Issue 18: a fleet store holds 100 M events and more. On PostgreSQL `file_events`,
`flows` and `decisions` become declaratively partitioned tables, RANGE on the event's
own time (`time`, `end_time`, `time`), one partition per UTC day plus a default one
(agent/store/partitions.py). A partitioned table's unique keys must contain the
partition key: the primary key becomes `(id, time)` and the idempotency key
`(uid, time)`. The existing rows are moved into the new tables (rename, create, copy,
index, drop the old table; the id sequence is kept), all in the migration's transaction.

`forward_marks` (both dialects): per spool, the last spooled seq the central store has
committed, moved in the same transaction as the batch (agent/store/forwarder.py).

On SQLite only `forward_marks` is added: a single host's store stays a plain table.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 20:00:00
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op
from sqlalchemy import Connection

from agent.store import partitions

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# table -> (partition column, its indexes as created by 0001): frozen here, not imported
TABLES: dict[str, tuple[str, dict[str, tuple[str, ...]]]] = {
    "file_events": (
        "time",
        {
            "ix_file_events_time": ("time",),
            "ix_file_events_host_time": ("host_id", "time"),
            "ix_file_events_sha256": ("sha256",),
            "ix_file_events_path": ("path",),
        },
    ),
    "flows": (
        "end_time",
        {
            "ix_flows_end": ("end_time",),
            "ix_flows_host_end": ("host_id", "end_time"),
            "ix_flows_dst": ("dst_ip",),
        },
    ),
    "decisions": (
        "time",
        {
            "ix_decisions_time": ("time",),
            "ix_decisions_host_time": ("host_id", "time"),
            "ix_decisions_subject": ("subject_uid",),
            "ix_decisions_rule": ("rule_id",),
        },
    ),
}
HISTORY_DAYS = 400  # older rows than this go to the default partition, not 1 table each


def _cols(names: tuple[str, ...]) -> str:
    return ", ".join(f'"{c}"' for c in names)


def _strip(conn: Connection, table: str) -> None:
    """Drop a table's primary key, unique constraints and indexes (their names are reused)."""
    for (name,) in conn.execute(
        sa.text(
            "SELECT conname FROM pg_constraint WHERE conrelid = to_regclass(:t) "
            "AND contype IN ('p', 'u')"
        ),
        {"t": table},
    ).all():
        conn.exec_driver_sql(f'ALTER TABLE "{table}" DROP CONSTRAINT "{name}"')
    for (name,) in conn.execute(
        sa.text(
            "SELECT i.relname FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
            "WHERE x.indrelid = to_regclass(:t)"
        ),
        {"t": table},
    ).all():
        conn.exec_driver_sql(f'DROP INDEX "{name}"')


def _index(conn: Connection, table: str, indexes: dict[str, tuple[str, ...]]) -> None:
    for name, cols in indexes.items():
        conn.exec_driver_sql(f'CREATE INDEX "{name}" ON "{table}" ({_cols(cols)})')


def _keep_sequence(conn: Connection, old: str, new: str) -> None:
    seq = conn.execute(sa.text("SELECT pg_get_serial_sequence(:t, 'id')"), {"t": old}).scalar()
    if seq:
        conn.exec_driver_sql(f'ALTER SEQUENCE {seq} OWNED BY "{new}"."id"')


def _partition(conn: Connection, table: str) -> None:
    col, indexes = TABLES[table]
    old = f"{table}_unpartitioned"
    conn.exec_driver_sql(f'ALTER TABLE "{table}" RENAME TO "{old}"')
    _strip(conn, old)
    conn.exec_driver_sql(
        f'CREATE TABLE "{table}" (LIKE "{old}" INCLUDING DEFAULTS) PARTITION BY RANGE ("{col}")'
    )
    conn.exec_driver_sql(f'CREATE TABLE "{table}_default" PARTITION OF "{table}" DEFAULT')
    now = datetime.now(UTC)
    lo, hi = now - timedelta(days=HISTORY_DAYS), now + timedelta(days=partitions.AHEAD_DAYS + 1)
    history = conn.execute(
        sa.text(
            f'SELECT DISTINCT ("{col}" AT TIME ZONE \'UTC\')::date FROM "{old}" '
            f'WHERE "{col}" >= :lo AND "{col}" < :hi'
        ),
        {"lo": lo, "hi": hi},
    ).scalars()
    ahead = (now.date() + timedelta(days=i) for i in range(-1, partitions.AHEAD_DAYS + 1))
    partitions.ensure_days(conn, [*history, *ahead], [table])
    # rows first, keys and indexes after: one index build per partition, not row by row
    conn.exec_driver_sql(f'INSERT INTO "{table}" SELECT * FROM "{old}"')
    conn.exec_driver_sql(
        f'ALTER TABLE "{table}" ADD CONSTRAINT "{table}_pkey" PRIMARY KEY ("id", "{col}")'
    )
    conn.exec_driver_sql(
        f'ALTER TABLE "{table}" ADD CONSTRAINT "{table}_uid_time_key" UNIQUE ("uid", "{col}")'
    )
    _index(conn, table, indexes)
    _keep_sequence(conn, old, table)
    conn.exec_driver_sql(f'DROP TABLE "{old}"')
    conn.exec_driver_sql(f'ANALYZE "{table}"')


def _unpartition(conn: Connection, table: str) -> None:
    _col, indexes = TABLES[table]
    old = f"{table}_partitioned"
    conn.exec_driver_sql(f'ALTER TABLE "{table}" RENAME TO "{old}"')
    _strip(conn, old)
    conn.exec_driver_sql(f'CREATE TABLE "{table}" (LIKE "{old}" INCLUDING DEFAULTS)')
    conn.exec_driver_sql(f'ALTER TABLE "{table}" ADD CONSTRAINT "{table}_pkey" PRIMARY KEY (id)')
    conn.exec_driver_sql(f'ALTER TABLE "{table}" ADD CONSTRAINT "{table}_uid_key" UNIQUE (uid)')
    # (uid, time) allowed one uid at two times; the plain table keeps the first stored
    conn.exec_driver_sql(
        f'INSERT INTO "{table}" SELECT * FROM "{old}" ORDER BY id ON CONFLICT DO NOTHING'
    )
    _index(conn, table, indexes)
    _keep_sequence(conn, old, table)
    conn.exec_driver_sql(f'DROP TABLE "{old}"')  # its partitions with it


def upgrade() -> None:
    op.create_table(
        "forward_marks",
        sa.Column("spool_id", sa.String(length=64), nullable=False),
        sa.Column("host_id", sa.String(length=64), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("spool_id"),
    )
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        for table in TABLES:
            _partition(conn, table)


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        for table in TABLES:
            _unpartition(conn, table)
    op.drop_table("forward_marks")
