"""The PostgreSQL bulk path: COPY through psycopg 3, then an idempotent INSERT … SELECT.

Used by the forwarder (agent/store/forwarder.py) to move spooled batches into the central
store. COPY cannot skip conflicting rows, so each event table is loaded into a temporary
table first (`ON COMMIT DELETE ROWS`, created once per session) and moved with
`INSERT … SELECT … ON CONFLICT (uid) DO NOTHING`: a batch re-sent after a commit whose
acknowledgement was lost stores nothing twice. Artefacts, lineage and file state are few
per batch and go through the same upserts as the plain writer (`write_shared_rows`), in
the same transaction. Measured in bench/store.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from psycopg import Cursor, sql
from psycopg.types.json import Json
from sqlalchemy import JSON, Engine, Table

from agent.events import Event
from agent.store.writer import EVENT_TABLES, batch_rows, write_batch, write_shared_rows


def _columns(table: Table) -> list[tuple[str, bool]]:
    """(name, is_json) of the columns a row provides: all but the surrogate `id`."""
    return [(c.name, isinstance(c.type, JSON)) for c in table.columns if c.name != "id"]


def _copy_insert(cur: Cursor[Any], table: Table, rows: list[dict[str, Any]]) -> None:
    cols = _columns(table)
    names = sql.SQL(", ").join(sql.Identifier(n) for n, _ in cols)
    staging = sql.Identifier(f"_in_{table.name}")
    cur.execute(
        sql.SQL(
            "CREATE TEMP TABLE IF NOT EXISTS {} ON COMMIT DELETE ROWS AS "
            "SELECT {} FROM {} WITH NO DATA"
        ).format(staging, names, sql.Identifier(table.name))
    )
    with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(staging, names)) as copy:
        for row in rows:
            copy.write_row(
                [Json(row[n]) if is_json and row[n] is not None else row[n] for n, is_json in cols]
            )
    cur.execute(
        sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT (uid) DO NOTHING").format(
            sql.Identifier(table.name), names, names, staging
        )
    )
    # the staging rows go at COMMIT (ON COMMIT DELETE ROWS) or with a ROLLBACK


def copy_batch(engine: Engine, host_id: str, events: Sequence[Event]) -> dict[str, int]:
    """Commit one batch with COPY in one transaction; idempotent like `write_batch`."""
    if engine.dialect.name != "postgresql" or engine.dialect.driver != "psycopg":
        return write_batch(engine, host_id, events)
    rows = batch_rows(host_id, events)
    with engine.begin() as conn:
        raw = conn.connection.driver_connection
        with raw.cursor() as cur:  # type: ignore[union-attr]
            for name, table in EVENT_TABLES:
                data = getattr(rows, name)
                if data:
                    _copy_insert(cur, cast(Table, table), data)
        write_shared_rows(conn, engine, host_id, rows)
    return rows.counts()
