"""Daily partitions of the central store's event tables (PostgreSQL only).

A fleet store grows by millions of rows a day; a plain table makes retention a huge
DELETE plus its vacuum, and lets the `(host_id, time)` indexes outgrow memory. Since
migration 0005, `file_events`, `flows` and `decisions` on PostgreSQL are declaratively
partitioned by RANGE on their event time (`time`, `end_time`, `time`), one partition per
UTC day named `<table>_pYYYYMMDD`, plus `<table>_default` for rows no day partition
covers (a host with a wild clock, a day not yet created, evidence kept past retention).
The maintenance job creates days ahead (`ensure_ahead`), retention drops whole days
(`drop_expired`). SQLite stores keep plain tables: one host's data never needs this.

A unique key of a partitioned table must contain the partition key, so the idempotency
key is `(uid, time)` there: a re-sent event carries the same uid and the same time, so a
re-send still stores nothing twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, column, text
from sqlalchemy import table as sa_table
from sqlalchemy.sql.expression import TableClause

from agent.store import rollup

log = logging.getLogger(__name__)

# table -> the column it is partitioned by (the event's own time, never the arrival time)
PARTITIONED: dict[str, str] = {"file_events": "time", "flows": "end_time", "decisions": "time"}
AHEAD_DAYS = 7  # days created in advance: a week of maintenance runs may fail harmlessly
_LOCK = 0x6567_7061_7274  # pg_advisory_xact_lock key: one agent at a time changes partitions


def partition_name(table: str, day: date) -> str:
    return f"{table}_p{day:%Y%m%d}"


def _day_of(name: str, table: str) -> date | None:
    suffix = name.removeprefix(f"{table}_p")
    if suffix == name or len(suffix) != 8 or not suffix.isdigit():
        return None
    try:
        return datetime.strptime(suffix, "%Y%m%d").replace(tzinfo=UTC).date()
    except ValueError:
        return None


def _bound(day: date) -> str:
    return f"'{day.isoformat()} 00:00:00+00'"


def is_partitioned(conn: Connection, table: str = "file_events") -> bool:
    if conn.dialect.name != "postgresql":
        return False
    found = conn.execute(
        text("SELECT 1 FROM pg_partitioned_table WHERE partrelid = to_regclass(:t)"), {"t": table}
    ).first()
    return found is not None


def days(conn: Connection, table: str) -> set[date]:
    """The days that have a partition of `table`."""
    rows = conn.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = to_regclass(:t)"
        ),
        {"t": table},
    )
    return {d for (name,) in rows if (d := _day_of(name, table)) is not None}


def _create_day(conn: Connection, table: str, day: date) -> None:
    """One day's partition; rows of that day already in the default partition move in.

    PostgreSQL refuses a new partition while the default partition holds rows in its
    range, so such rows (events that arrived before their day was created) are moved with
    the default detached for the moment, all in the caller's transaction.
    """
    col = PARTITIONED[table]
    name, lo, hi = partition_name(table, day), _bound(day), _bound(day + timedelta(days=1))
    default = f"{table}_default"
    stray = conn.exec_driver_sql(
        f'SELECT 1 FROM "{default}" WHERE "{col}" >= {lo} AND "{col}" < {hi} LIMIT 1'
    ).first()
    if stray is None:
        conn.exec_driver_sql(
            f'CREATE TABLE "{name}" PARTITION OF "{table}" FOR VALUES FROM ({lo}) TO ({hi})'
        )
        return
    conn.exec_driver_sql(f'ALTER TABLE "{table}" DETACH PARTITION "{default}"')
    conn.exec_driver_sql(
        f'CREATE TABLE "{name}" PARTITION OF "{table}" FOR VALUES FROM ({lo}) TO ({hi})'
    )
    where = f'"{col}" >= {lo} AND "{col}" < {hi}'
    conn.exec_driver_sql(f'INSERT INTO "{name}" SELECT * FROM "{default}" WHERE {where}')
    with rollup.paused(conn, table):  # a move within the day: the counts stay as they are
        conn.exec_driver_sql(f'DELETE FROM "{default}" WHERE {where}')
    conn.exec_driver_sql(f'ALTER TABLE "{table}" ATTACH PARTITION "{default}" DEFAULT')


def ensure_days(
    conn: Connection, wanted: Iterable[date], tables: Iterable[str] = tuple(PARTITIONED)
) -> int:
    """Create the missing day partitions of `tables`; returns how many."""
    wanted = sorted(set(wanted))
    missing = {t: [d for d in wanted if d not in days(conn, t)] for t in tables}
    if not any(missing.values()):
        return 0  # the usual case: no lock, no DDL
    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK})
    created = 0
    for table in missing:
        have = days(conn, table)  # again, under the lock: another agent may have made them
        for day in missing[table]:
            if day not in have:
                _create_day(conn, table, day)
                created += 1
    return created


def ensure_ahead(engine: Engine, ahead: int = AHEAD_DAYS, now: datetime | None = None) -> int:
    """Partitions from yesterday to `ahead` days on (the maintenance job's call)."""
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    with engine.begin() as conn:
        if not is_partitioned(conn):
            return 0
        created = ensure_days(conn, (today + timedelta(days=i) for i in range(-1, ahead + 1)))
    if created:
        log.info("created %d day partitions (through %s)", created, today + timedelta(ahead))
    return created


def drop_expired(engine: Engine, cutoff: datetime, keep: set[str]) -> dict[str, int]:
    """Retention on a partitioned store: drop every day partition wholly before `cutoff`.

    Rows that an open incident's evidence names (`keep`: event uids, and a decision's
    subject) are first re-inserted into the table, where they land in the default
    partition since no day covers them any more (each agent's retention deletes its own
    old rows there, row by row: it holds few; see agent/jobs.py). A day partly before the
    cutoff stays until all of it is: retention is per whole day, at most one day late.
    Fleet-wide: which agent runs it first does the work, the others find nothing left.
    """
    keep_list = sorted(keep)
    counts: dict[str, int] = {}
    for table in PARTITIONED:
        spared = '"uid" = ANY(:keep)' + (
            ' OR "subject_uid" = ANY(:keep)' if table == "decisions" else ""
        )
        dropped = 0
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK})
            expired = sorted(d for d in days(conn, table) if d + timedelta(days=1) <= cutoff.date())
        for day in expired:
            name = partition_name(table, day)
            with engine.begin() as conn:
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK})
                if day not in days(conn, table):
                    continue
                conn.exec_driver_sql(f'ALTER TABLE "{table}" DETACH PARTITION "{name}"')
                n = conn.exec_driver_sql(f'SELECT count(*) FROM "{name}"').scalar_one()
                rollup.forget_day(conn, table, day)  # the spared rows are counted again
                kept = conn.execute(
                    text(f'INSERT INTO "{table}" SELECT * FROM "{name}" WHERE {spared}'),
                    {"keep": keep_list},
                ).rowcount
                conn.exec_driver_sql(f'DROP TABLE "{name}"')
                dropped += int(n) - max(kept, 0)
        counts[table] = dropped
    return counts


def is_partition_name(name: str | None) -> bool:
    return name is not None and any(
        name == f"{t}_default" or _day_of(name, t) is not None for t in PARTITIONED
    )


def default_partition(table: str) -> TableClause:
    """The default partition of `table` as a selectable, with the columns retention uses."""
    cols = ["id", "uid", "host_id", PARTITIONED[table]]
    if table == "decisions":
        cols.append("subject_uid")
    return sa_table(f"{table}_default", *(column(c) for c in cols))


def compare_filter(dialect: str) -> Callable[..., bool]:
    """Alembic `include_object` for comparing models with a partitioned PostgreSQL store.

    Day partitions are made at run time, not by the models, so they and their indexes
    are left out. The models state the SQLite shape (`uid` unique); on PostgreSQL the
    partitioned tables' key is `(uid, <time>)`, which tests/store/test_migrations.py
    checks on its own.
    """

    def include(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        if dialect != "postgresql":
            return True
        if type_ == "table":  # the rollup is kept by triggers, made by migration 0007
            return not is_partition_name(name) and name != rollup.TABLE
        table = getattr(getattr(obj, "table", None), "name", None)
        if is_partition_name(table) or table == rollup.TABLE:
            return False
        return not (type_ == "unique_constraint" and table in PARTITIONED)

    return include
