"""The PostgreSQL bulk path: COPY through psycopg 3, then an idempotent INSERT … SELECT.

Used by the forwarder (agent/store/forwarder.py) to move spooled batches into the central
store. COPY cannot skip conflicting rows, so each event table is loaded into a temporary
table first (`ON COMMIT DELETE ROWS`, created once per session) and moved with
`INSERT … SELECT … ON CONFLICT (uid) DO NOTHING`: a batch re-sent after a commit whose
acknowledgement was lost stores nothing twice. Artefacts, lineage and file state go the
same way with the upserts of the plain writer (`write_batch`), in the same transaction,
so both paths leave the same rows. Measured in bench/store.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from psycopg import Cursor, sql
from psycopg.types.json import Json
from sqlalchemy import JSON, Engine, Table

from agent.events import Event
from agent.store.models import Artefact, FileState, Lineage
from agent.store.writer import EVENT_TABLES, batch_rows, write_batch

# how each staged table is merged: uid tables skip re-sent rows; artefacts and file state
# take the newest values (each key appears once per batch: batch_rows folds repeats)
_MERGE: dict[str, str] = {
    "file_events": "ON CONFLICT DO NOTHING",
    "flows": "ON CONFLICT DO NOTHING",
    "decisions": "ON CONFLICT DO NOTHING",
    "lineage": "ON CONFLICT DO NOTHING",
    "artefacts": "ON CONFLICT (sha256) DO UPDATE SET last_seen = EXCLUDED.last_seen, "
    "tags = EXCLUDED.tags, kinds = EXCLUDED.kinds, matches = EXCLUDED.matches, "
    "content_type = EXCLUDED.content_type",
    "file_state": "ON CONFLICT (host_id, path) DO UPDATE SET size = EXCLUDED.size, "
    "inode = EXCLUDED.inode, mtime_ns = EXCLUDED.mtime_ns, sha256 = EXCLUDED.sha256, "
    "updated_at = EXCLUDED.updated_at",
}


def _columns(table: Table) -> list[tuple[str, bool]]:
    """(name, is_json) of the columns a row provides: all but the surrogate `id`."""
    return [(c.name, isinstance(c.type, JSON)) for c in table.columns if c.name != "id"]


def _copy_merge(cur: Cursor[Any], table: Table, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
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
            # JSON columns always get JSON, None as `null`, exactly as SQLAlchemy's JSON type
            copy.write_row([Json(row[n]) if is_json else row[n] for n, is_json in cols])
    # the staging rows go at COMMIT (ON COMMIT DELETE ROWS) or with a ROLLBACK
    cur.execute(
        sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ").format(
            sql.Identifier(table.name), names, names, staging
        )
        + sql.SQL(_MERGE[table.name])
    )


def copy_batch(engine: Engine, host_id: str, events: Sequence[Event]) -> dict[str, int]:
    """Commit one batch with COPY in one transaction; idempotent like `write_batch`."""
    if engine.dialect.name != "postgresql" or engine.dialect.driver != "psycopg":
        return write_batch(engine, host_id, events)
    rows = batch_rows(host_id, events)
    with engine.begin() as conn:
        raw = conn.connection.driver_connection
        with raw.cursor() as cur:  # type: ignore[union-attr]
            for name, table in EVENT_TABLES:
                _copy_merge(cur, cast(Table, table), getattr(rows, name))
            _copy_merge(cur, cast(Table, Artefact.__table__), rows.artefacts)
            _copy_merge(cur, cast(Table, Lineage.__table__), rows.lineage)
            if rows.file_state_deletes:
                cur.execute(
                    "DELETE FROM file_state WHERE host_id = %s AND path = ANY(%s)",
                    (host_id, rows.file_state_deletes),
                )
            _copy_merge(cur, cast(Table, FileState.__table__), rows.file_state_upserts)
    return rows.counts()
