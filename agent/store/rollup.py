"""Per-host, per-day row counts of a PostgreSQL store's event tables (migration 0007).

`status --hosts` used to count every event row (GROUP BY host over all of `file_events`,
`flows`, `decisions`): linear in the store, ≈ 40 s at 100 M rows. `event_rollup` holds,
per (host, table, UTC day of the event time), the number of rows and the newest event
time, so the status reads a table of hosts × days × 3 rows whatever the event count.

It is kept by statement-level AFTER triggers with transition tables on the partitioned
parents, so it changes in the transaction that stores or deletes the rows, whichever path
wrote them (forwarder COPY, its `INSERT … ON CONFLICT DO NOTHING` merge, the plain
writer): a transition table holds only the rows really inserted, so a re-sent batch
that stores nothing counts nothing, and a rolled-back COPY rolls its counts back with
it. No counting code in the write paths, none to forget in a new one.

DML addressed to a partition directly does not fire the parent's statement triggers:
- retention deletes old rows from `<table>_default` by name (agent/jobs.py), so the
  default partition carries its own delete trigger;
- `partitions._create_day` moves rows from the default partition into a new day (same
  event day, so no change to the counts) with that trigger paused (`paused`);
- `partitions.drop_expired` drops a whole day: `forget_day` removes the day's counts
  before the spared rows are re-inserted through the parent, which counts them again.

SQLite stores (one host) have no rollup; their status counts the rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date

from sqlalchemy import Connection, text

TABLE = "event_rollup"
# table -> its event time column (the partition key)
TIMED = {"file_events": "time", "flows": "end_time", "decisions": "time"}


def _day(col: str) -> str:
    return f"(\"{col}\" AT TIME ZONE 'UTC')::date"


def _functions(table: str, col: str) -> list[str]:
    day = _day(col)
    added = f"""
CREATE OR REPLACE FUNCTION {TABLE}_{table}_ins() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  INSERT INTO {TABLE} (host_id, table_name, day, n_rows, last_time)
  SELECT host_id, '{table}', {day}, count(*), max("{col}") FROM new_rows
  GROUP BY 1, 3 ORDER BY 1, 3
  ON CONFLICT (host_id, table_name, day) DO UPDATE
  SET n_rows = {TABLE}.n_rows + EXCLUDED.n_rows,
      last_time = greatest({TABLE}.last_time, EXCLUDED.last_time);
  RETURN NULL;
END $f$"""
    # after a delete the newest time of a touched day is looked up again: one backward
    # step of the (host_id, time) index in that day's partition
    removed = f"""
CREATE OR REPLACE FUNCTION {TABLE}_{table}_del() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  WITH gone AS (
    SELECT host_id, {day} AS day, count(*) AS n FROM old_rows GROUP BY 1, 2 ORDER BY 1, 2
  )
  UPDATE {TABLE} r SET n_rows = r.n_rows - gone.n,
    last_time = (SELECT max(t."{col}") FROM "{table}" t WHERE t.host_id = gone.host_id
                 AND t."{col}" >= gone.day::timestamp AT TIME ZONE 'UTC'
                 AND t."{col}" < (gone.day + 1)::timestamp AT TIME ZONE 'UTC')
  FROM gone
  WHERE r.host_id = gone.host_id AND r.table_name = '{table}' AND r.day = gone.day;
  DELETE FROM {TABLE} WHERE table_name = '{table}' AND n_rows <= 0
    AND (host_id, day) IN (SELECT DISTINCT host_id, {day} FROM old_rows);
  RETURN NULL;
END $f$"""
    return [added, removed]


def _triggers(table: str) -> list[str]:
    stmt = "FOR EACH STATEMENT EXECUTE FUNCTION"
    return [
        f'CREATE TRIGGER {TABLE}_ins AFTER INSERT ON "{table}" '
        f"REFERENCING NEW TABLE AS new_rows {stmt} {TABLE}_{table}_ins()",
        f'CREATE TRIGGER {TABLE}_del AFTER DELETE ON "{table}" '
        f"REFERENCING OLD TABLE AS old_rows {stmt} {TABLE}_{table}_del()",
        f'CREATE TRIGGER {TABLE}_del AFTER DELETE ON "{table}_default" '
        f"REFERENCING OLD TABLE AS old_rows {stmt} {TABLE}_{table}_del()",
    ]


def install(conn: Connection) -> None:
    """Create the table and its triggers and count the rows already stored (one scan).

    The event tables are locked against writers first (SHARE ROW EXCLUSIVE, what
    CREATE TRIGGER takes anyway), so no row slips between the backfill and the triggers.
    """
    for table in TIMED:
        conn.exec_driver_sql(f'LOCK TABLE "{table}" IN SHARE ROW EXCLUSIVE MODE')
    conn.exec_driver_sql(
        f"CREATE TABLE {TABLE} (host_id varchar(64) NOT NULL, table_name varchar(16) NOT NULL,"
        " day date NOT NULL, n_rows bigint NOT NULL, last_time timestamptz,"
        " PRIMARY KEY (host_id, table_name, day))"
    )
    for table, col in TIMED.items():
        for sql in _functions(table, col) + _triggers(table):
            conn.exec_driver_sql(sql)
        conn.exec_driver_sql(
            f"INSERT INTO {TABLE} (host_id, table_name, day, n_rows, last_time) "
            f"SELECT host_id, '{table}', {_day(col)}, count(*), max(\"{col}\") "
            f'FROM "{table}" GROUP BY 1, 3'
        )


def uninstall(conn: Connection) -> None:
    for table in TIMED:
        for on in (table, f"{table}_default"):
            conn.exec_driver_sql(f'DROP TRIGGER IF EXISTS {TABLE}_ins ON "{on}"')
            conn.exec_driver_sql(f'DROP TRIGGER IF EXISTS {TABLE}_del ON "{on}"')
        conn.exec_driver_sql(f"DROP FUNCTION IF EXISTS {TABLE}_{table}_ins()")
        conn.exec_driver_sql(f"DROP FUNCTION IF EXISTS {TABLE}_{table}_del()")
    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {TABLE}")


def installed(conn: Connection) -> bool:
    return conn.execute(text("SELECT to_regclass(:t)"), {"t": TABLE}).scalar() is not None


@contextmanager
def paused(conn: Connection, table: str) -> Iterator[None]:
    """The default partition's delete trigger off, for rows moved to another partition.

    Transactional DDL on a table the caller already holds exclusively (it is detached).
    """
    on = installed(conn)
    if on:
        conn.exec_driver_sql(f'ALTER TABLE "{table}_default" DISABLE TRIGGER {TABLE}_del')
    yield
    if on:
        conn.exec_driver_sql(f'ALTER TABLE "{table}_default" ENABLE TRIGGER {TABLE}_del')


def forget_day(conn: Connection, table: str, day: date) -> None:
    """Drop the counts of a day whose partition is being dropped (every host's)."""
    if installed(conn):
        conn.execute(
            text(f"DELETE FROM {TABLE} WHERE table_name = :t AND day = :d"),
            {"t": table, "d": day},
        )
