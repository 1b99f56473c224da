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

Slots (migration 0009): the forwarder COPYs the next batch's event rows while the batch
before it is still being finished in another transaction (agent/store/rows_pipeline.py).
With one counter row per (host, table, day) the second COPY's trigger waited on the row
the first had updated and not yet committed, which serialised the two sessions. So the
key has a `slot` too: an opened batch sets `egress.rollup_slot` for its transaction
(1 and 2 in turn), everything else counts in slot 0, and two batches in flight never
touch the same row. Readers sum over the slots; a delete folds the day's slots back
into slot 0 (deletes are retention's, rare and not concurrent with themselves).

SQLite stores (one host) have no rollup; their status counts the rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date

from sqlalchemy import Connection, text

TABLE = "event_rollup"
SLOT_SETTING = "egress.rollup_slot"  # a transaction-local setting: the slot it counts in
# the slot of the transaction: its setting, or 0 where none was set (an empty string
# once a transaction-local value has ended)
_SLOT = f"coalesce(nullif(current_setting('{SLOT_SETTING}', true), ''), '0')::smallint"
# table -> its event time column (the partition key)
TIMED = {"file_events": "time", "flows": "end_time", "decisions": "time"}


def _day(col: str) -> str:
    return f"(\"{col}\" AT TIME ZONE 'UTC')::date"


def _functions(table: str, col: str, slots: bool = True) -> list[str]:
    """The insert and delete trigger functions of `table`: with slots (0009 on), or as
    migration 0007 made them (for 0007 itself and 0009's downgrade)."""
    return [
        _added(table, col, slots),
        _removed_slots(table, col) if slots else _removed(table, col),
    ]


def _added(table: str, col: str, slots: bool) -> str:
    day = _day(col)
    slot_col, slot_val, key = (
        (", slot", f", {_SLOT}", "host_id, table_name, day, slot")
        if slots
        else ("", "", "host_id, table_name, day")
    )
    return f"""
CREATE OR REPLACE FUNCTION {TABLE}_{table}_ins() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  INSERT INTO {TABLE} (host_id, table_name, day{slot_col}, n_rows, last_time)
  SELECT host_id, '{table}', {day}{slot_val}, count(*), max("{col}") FROM new_rows
  GROUP BY 1, 3 ORDER BY 1, 3
  ON CONFLICT ({key}) DO UPDATE
  SET n_rows = {TABLE}.n_rows + EXCLUDED.n_rows,
      last_time = greatest({TABLE}.last_time, EXCLUDED.last_time);
  RETURN NULL;
END $f$"""


def _newest(table: str, col: str, host: str, day: str) -> str:
    """The newest event time left in one host's day of `table`: one backward step of the
    (host_id, time) index in that day's partition."""
    return (
        f'(SELECT max(t."{col}") FROM "{table}" t WHERE t.host_id = {host}'
        f""" AND t."{col}" >= {day}::timestamp AT TIME ZONE 'UTC'"""
        f""" AND t."{col}" < ({day} + 1)::timestamp AT TIME ZONE 'UTC')"""
    )


def _removed_slots(table: str, col: str) -> str:
    """After a delete: the touched days' other slots are folded into slot 0, which takes
    the rows gone off and the newest time left; a day left with no rows is forgotten."""
    day = _day(col)
    return f"""
CREATE OR REPLACE FUNCTION {TABLE}_{table}_del() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  WITH gone AS (
    SELECT host_id, {day} AS day, count(*) AS n FROM old_rows GROUP BY 1, 2 ORDER BY 1, 2
  ), moved AS (
    DELETE FROM {TABLE} r USING gone
    WHERE r.host_id = gone.host_id AND r.table_name = '{table}' AND r.day = gone.day
      AND r.slot <> 0
    RETURNING r.host_id, r.day, r.n_rows
  ), delta AS (
    SELECT gone.host_id, gone.day,
      coalesce((SELECT sum(m.n_rows) FROM moved m
                WHERE m.host_id = gone.host_id AND m.day = gone.day), 0) - gone.n AS n
    FROM gone
  )
  INSERT INTO {TABLE} (host_id, table_name, day, slot, n_rows, last_time)
  SELECT host_id, '{table}', day, 0, n, {_newest(table, col, "delta.host_id", "delta.day")}
  FROM delta ORDER BY 1, 3
  ON CONFLICT (host_id, table_name, day, slot) DO UPDATE
  SET n_rows = {TABLE}.n_rows + EXCLUDED.n_rows, last_time = EXCLUDED.last_time;
  DELETE FROM {TABLE} WHERE table_name = '{table}' AND n_rows <= 0
    AND (host_id, day) IN (SELECT DISTINCT host_id, {day} FROM old_rows);
  RETURN NULL;
END $f$"""


def _removed(table: str, col: str) -> str:
    """After a delete (0007's form): the touched days take the rows gone off, and the
    newest time left is looked up again."""
    day = _day(col)
    return f"""
CREATE OR REPLACE FUNCTION {TABLE}_{table}_del() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  WITH gone AS (
    SELECT host_id, {day} AS day, count(*) AS n FROM old_rows GROUP BY 1, 2 ORDER BY 1, 2
  )
  UPDATE {TABLE} r SET n_rows = r.n_rows - gone.n,
    last_time = {_newest(table, col, "gone.host_id", "gone.day")}
  FROM gone
  WHERE r.host_id = gone.host_id AND r.table_name = '{table}' AND r.day = gone.day;
  DELETE FROM {TABLE} WHERE table_name = '{table}' AND n_rows <= 0
    AND (host_id, day) IN (SELECT DISTINCT host_id, {day} FROM old_rows);
  RETURN NULL;
END $f$"""


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


def _lock_writers(conn: Connection) -> None:
    """The event tables locked against writers (SHARE ROW EXCLUSIVE, what CREATE TRIGGER
    takes anyway) until the transaction ends."""
    for table in TIMED:
        conn.exec_driver_sql(f'LOCK TABLE "{table}" IN SHARE ROW EXCLUSIVE MODE')


def install(conn: Connection) -> None:
    """Create the table and its triggers as migration 0007 made them (one counter a day,
    no slots: `add_slots` is 0009) and count the rows already stored (one scan).

    The event tables are locked against writers first (SHARE ROW EXCLUSIVE, what
    CREATE TRIGGER takes anyway), so no row slips between the backfill and the triggers.
    """
    _lock_writers(conn)
    conn.exec_driver_sql(
        f"CREATE TABLE {TABLE} (host_id varchar(64) NOT NULL, table_name varchar(16) NOT NULL,"
        " day date NOT NULL, n_rows bigint NOT NULL, last_time timestamptz,"
        " PRIMARY KEY (host_id, table_name, day))"
    )
    for table, col in TIMED.items():
        for sql in _functions(table, col, slots=False) + _triggers(table):
            conn.exec_driver_sql(sql)
        conn.exec_driver_sql(
            f"INSERT INTO {TABLE} (host_id, table_name, day, n_rows, last_time) "
            f"SELECT host_id, '{table}', {_day(col)}, count(*), max(\"{col}\") "
            f'FROM "{table}" GROUP BY 1, 3'
        )


def add_slots(conn: Connection) -> None:
    """Migration 0009: the slot joins the key (existing counts are slot 0) and the trigger
    functions count in the transaction's slot."""
    _lock_writers(conn)
    conn.exec_driver_sql(f"ALTER TABLE {TABLE} ADD COLUMN slot smallint NOT NULL DEFAULT 0")
    conn.exec_driver_sql(f"ALTER TABLE {TABLE} DROP CONSTRAINT {TABLE}_pkey")
    conn.exec_driver_sql(f"ALTER TABLE {TABLE} ADD PRIMARY KEY (host_id, table_name, day, slot)")
    for table, col in TIMED.items():
        for sql in _functions(table, col, slots=True):
            conn.exec_driver_sql(sql)


def drop_slots(conn: Connection) -> None:
    """0009's downgrade: each day's slots summed into one row, the 0007 functions back."""
    _lock_writers(conn)
    conn.exec_driver_sql(
        f"CREATE TEMP TABLE {TABLE}_folded ON COMMIT DROP AS SELECT host_id, table_name, day,"
        f" sum(n_rows)::bigint AS n_rows, max(last_time) AS last_time FROM {TABLE} GROUP BY 1, 2, 3"
    )
    conn.exec_driver_sql(f"DELETE FROM {TABLE}")
    conn.exec_driver_sql(f"ALTER TABLE {TABLE} DROP CONSTRAINT {TABLE}_pkey")
    conn.exec_driver_sql(f"ALTER TABLE {TABLE} DROP COLUMN slot")
    conn.exec_driver_sql(f"ALTER TABLE {TABLE} ADD PRIMARY KEY (host_id, table_name, day)")
    conn.exec_driver_sql(
        f"INSERT INTO {TABLE} (host_id, table_name, day, n_rows, last_time)"
        f" SELECT host_id, table_name, day, n_rows, last_time FROM {TABLE}_folded"
    )
    for table, col in TIMED.items():
        for sql in _functions(table, col, slots=False):
            conn.exec_driver_sql(sql)


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
