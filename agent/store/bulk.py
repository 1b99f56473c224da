"""The PostgreSQL bulk path: binary COPY through psycopg 3, exactly once.

Used by the forwarder (agent/store/forwarder.py) to move spooled batches into the central
store. `copy_rows` takes batches spooled as COPY-ready rows (agent/store/spool_rows.py):
the same two ways as below with text COPY of the spooled lines and no per-row work here;
whether the batch is new is read from its spool's `forward_marks` row. For events (spools
written as JSON, the other write paths), two ways, both one transaction per batch:

- `copy_direct`, the fast one: the event rows are COPYed straight into `file_events`,
  `flows` and `decisions`. It is only tried when a batch is new to the store: a batch
  whose first event is already there (a re-send after a lost acknowledgement) goes the
  merge way at once, and a COPY that hits the `(uid, time)` key anyway (a batch that was
  partly stored by an earlier bisection, an event spooled twice) rolls back and is merged.
- `copy_batch`, the idempotent one: each event table is loaded into a temporary table and
  moved with `INSERT … SELECT … ON CONFLICT DO NOTHING`, so a re-send stores nothing twice.

Artefacts, lineage and file state are upserts keyed by content or path in both ways
(staged, then `ON CONFLICT … DO UPDATE`), with the semantics of the plain writer
(`write_batch`), so every path leaves the same rows. COPY is binary with the column types
set once, which spares PostgreSQL parsing text and psycopg formatting it. The progress of
each spool goes into `forward_marks` in the same transaction (for `status` and lag, see
docs/fleet.md). Measured in bench/store.py.
"""

from __future__ import annotations

import functools
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import psycopg
from psycopg import Cursor, sql
from sqlalchemy import JSON, Engine, Table

from agent.events import Event, FileEvent
from agent.store import values_merge
from agent.store.models import Artefact, FileState, Lineage
from agent.store.spool_rows import EVENT_TABLES as EVENT_TABLES_IN_ROWS
from agent.store.spool_rows import RowsBatch
from agent.store.writer import EVENT_TABLES, BatchRows, batch_rows, write_batch

# how each staged table is merged: event tables skip re-sent rows (no conflict target: the
# key is (uid, time) on a partitioned store); artefacts and file state take the newest
# values (each key appears once per batch: batch_rows folds repeats)
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


@dataclass(frozen=True, slots=True)
class Mark:
    """Which spooled records a batch is: the forwarder's progress, kept centrally."""

    spool_id: str
    last_seq: int


@dataclass(frozen=True, slots=True)
class _Layout:
    names: tuple[str, ...]
    json: tuple[bool, ...]
    pg_types: tuple[str, ...]
    columns: sql.Composable


def _pg_type(col: Any) -> str:
    t = values_merge.base_type(col)
    # json's binary form is its text: dumped once here, checked there; varchar takes
    # text's binary form
    return "text" if t == "json" else t


@functools.cache
def _layout(table: Table) -> _Layout:
    """The columns a row provides (all but the surrogate `id`), with their COPY types."""
    cols = [c for c in table.columns if c.name != "id"]
    names = tuple(c.name for c in cols)
    return _Layout(
        names=names,
        json=tuple(isinstance(c.type, JSON) for c in cols),
        pg_types=tuple(_pg_type(c) for c in cols),
        columns=sql.SQL(", ").join(sql.Identifier(n) for n in names),
    )


def _copy(
    cur: Cursor[Any], target: sql.Composable, lay: _Layout, rows: list[dict[str, Any]]
) -> None:
    stmt = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(target, lay.columns)
    names = lay.names
    json_at = [i for i, j in enumerate(lay.json) if j]
    dumps = json.dumps  # what SQLAlchemy's JSON type writes, so both paths store one text
    with cur.copy(stmt) as copy:
        copy.set_types(list(lay.pg_types))
        write = copy.write_row
        for row in rows:
            values = [row[n] for n in names]
            for i in json_at:
                # JSON columns always get JSON, None as `null`, as SQLAlchemy's JSON type
                v = values[i]
                values[i] = "null" if v is None else dumps(v)
            write(values)


def _stage_merge(cur: Cursor[Any], table: Table, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    lay = _layout(table)
    staging = sql.Identifier(f"_in_{table.name}")
    # created once per session; its rows go at COMMIT (ON COMMIT DELETE ROWS) or ROLLBACK
    cur.execute(
        sql.SQL(
            "CREATE TEMP TABLE IF NOT EXISTS {} ON COMMIT DELETE ROWS AS "
            "SELECT {} FROM {} WITH NO DATA"
        ).format(staging, lay.columns, sql.Identifier(table.name))
    )
    _copy(cur, staging, lay, rows)
    cur.execute(
        sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ").format(
            sql.Identifier(table.name), lay.columns, lay.columns, staging
        )
        + sql.SQL(_MERGE[table.name])
    )


def _shared_rows(cur: Cursor[Any], host_id: str, rows: BatchRows) -> None:
    _stage_merge(cur, cast(Table, Artefact.__table__), rows.artefacts)
    _stage_merge(cur, cast(Table, Lineage.__table__), rows.lineage)
    if rows.file_state_deletes:
        cur.execute(
            "DELETE FROM file_state WHERE host_id = %s AND path = ANY(%s)",
            (host_id, rows.file_state_deletes),
        )
    _stage_merge(cur, cast(Table, FileState.__table__), rows.file_state_upserts)


def _mark(cur: Cursor[Any], host_id: str, mark: Mark | None) -> None:
    if mark is not None:
        cur.execute(
            "INSERT INTO forward_marks (spool_id, host_id, last_seq, updated_at) "
            "VALUES (%s, %s, %s, now()) ON CONFLICT (spool_id) DO UPDATE SET "
            "host_id = EXCLUDED.host_id, updated_at = EXCLUDED.updated_at, "
            "last_seq = greatest(forward_marks.last_seq, EXCLUDED.last_seq)",
            (mark.spool_id, host_id, mark.last_seq),
        )


def is_bulk(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg"


def copy_batch(
    engine: Engine,
    host_id: str,
    events: Sequence[Event],
    mark: Mark | None = None,
    rows: BatchRows | None = None,
) -> dict[str, int]:
    """Commit one batch with COPY and merges in one transaction; idempotent like `write_batch`.

    `rows`: `batch_rows(host_id, events)` when the caller has them already.
    """
    if not is_bulk(engine):
        return write_batch(engine, host_id, events)
    rows = rows or batch_rows(host_id, events)
    with engine.begin() as conn:
        raw = conn.connection.driver_connection
        with raw.cursor() as cur:  # type: ignore[union-attr]
            for name, table in EVENT_TABLES:
                _stage_merge(cur, cast(Table, table), getattr(rows, name))
            _shared_rows(cur, host_id, rows)
            _mark(cur, host_id, mark)
    return rows.counts()


def _stored(cur: Cursor[Any], event: Event) -> bool:
    """Whether this event is in the store already: one lookup on its (uid, time) key."""
    if isinstance(event, FileEvent):
        q = "SELECT 1 FROM file_events WHERE uid = %s AND time = %s"
        cur.execute(q, (event.uid, event.time))
    else:
        q = "SELECT 1 FROM flows WHERE uid = %s AND end_time = %s"
        cur.execute(q, (event.uid, event.time))
    return cur.fetchone() is not None


def copy_direct(
    engine: Engine,
    host_id: str,
    events: Sequence[Event],
    mark: Mark | None = None,
    rows: BatchRows | None = None,
) -> dict[str, int]:
    """Commit one batch, its event rows COPYed straight into their tables; exactly once.

    Falls back to `copy_batch` (idempotent merges) for a batch the store may have seen:
    its first event is stored, or the COPY hits the unique key. Either way the result is
    each event stored once.
    """
    if not is_bulk(engine) or not events:
        return copy_batch(engine, host_id, events, mark, rows)
    rows = rows or batch_rows(host_id, events)
    try:
        with engine.begin() as conn:
            raw = conn.connection.driver_connection
            with raw.cursor() as cur:  # type: ignore[union-attr]
                if _stored(cur, events[0]):
                    raise SeenBefore
                for name, table in EVENT_TABLES:
                    if getattr(rows, name):
                        lay = _layout(cast(Table, table))
                        _copy(cur, sql.Identifier(name), lay, getattr(rows, name))
                _shared_rows(cur, host_id, rows)
                _mark(cur, host_id, mark)
    except (SeenBefore, psycopg.errors.UniqueViolation):
        return copy_batch(engine, host_id, events, mark, rows)
    except Exception as e:  # SQLAlchemy wraps what psycopg raised inside its transaction
        if isinstance(getattr(e, "orig", None), psycopg.errors.UniqueViolation):
            return copy_batch(engine, host_id, events, mark, rows)
        raise
    return rows.counts()


class SeenBefore(Exception):
    """The batch's first event is stored: a re-send, merged instead of COPYed."""


def _copy_text(cur: Cursor[Any], target: str, columns: tuple[str, ...], data: str) -> None:
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(target), cols)) as cp:
        cp.write(data)


def _stage_text(cur: Cursor[Any], table: str, columns: tuple[str, ...], data: str) -> str:
    """COPY `data` into this session's staging table for these columns of `table`."""
    # named by the columns too: a spool may hold rows of an older layout
    staging = f"_in_{table}_{zlib.crc32(' '.join(columns).encode()):08x}"
    cur.execute(
        sql.SQL(
            "CREATE TEMP TABLE IF NOT EXISTS {} ON COMMIT DELETE ROWS AS "
            "SELECT {} FROM {} WITH NO DATA"
        ).format(
            sql.Identifier(staging),
            sql.SQL(", ").join(sql.Identifier(c) for c in columns),
            sql.Identifier(table),
        )
    )
    _copy_text(cur, staging, columns, data)
    return staging


def _merge_text(cur: Cursor[Any], table: str, columns: tuple[str, ...], data: str) -> None:
    if not data:
        return
    if values_merge.is_small(data) and values_merge.merge(cur, table, columns, data, _MERGE[table]):
        return  # a few rows: no staging table (its set-up is most of a small merge)
    merge_staged(cur, table, columns, data)


def merge_staged(cur: Cursor[Any], table: str, columns: tuple[str, ...], data: str) -> None:
    """COPY lines of `table` through this session's staging table, merged by `_MERGE`."""
    staging = _stage_text(cur, table, columns, data)
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    cur.execute(
        sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ").format(
            sql.Identifier(table), cols, cols, sql.Identifier(staging)
        )
        + sql.SQL(_MERGE[table])
    )


# A batch's gone paths (staged in {}) out of the host's file state: one probe of the
# (host_id, path) key per path, then the rows by their ctid. A join here was hashed over
# all of the host's file state (the planner's estimate of a host's rows lags a growing
# table): 2-4 µs of backend CPU per forwarded row at 60,000 paths, growing with them,
# against 0.5 µs. OFFSET 0 keeps the probe a nested loop. The ctids are read in this
# statement and one forwarder at a time writes a host's file state, so none is stale.
DELETE_GONE = (
    "DELETE FROM file_state WHERE ctid = ANY(ARRAY(SELECT x.ctid FROM {} g, LATERAL "
    "(SELECT ctid FROM file_state WHERE host_id = %s AND path = g.path OFFSET 0) x))"
)


def _shared_text(cur: Cursor[Any], host_id: str, rows: RowsBatch) -> None:
    _merge_text(cur, "artefacts", rows.columns["artefacts"], rows.texts["artefacts"])
    _merge_text(cur, "lineage", rows.columns["lineage"], rows.texts["lineage"])
    if values_merge.is_small(rows.file_state_deletes):
        values_merge.delete_paths(cur, host_id, rows.file_state_deletes)
    elif rows.file_state_deletes:
        staging = _stage_text(cur, "file_state", ("path",), rows.file_state_deletes)
        cur.execute(sql.SQL(DELETE_GONE).format(sql.Identifier(staging)), (host_id,))
    _merge_text(cur, "file_state", rows.columns["file_state"], rows.file_state_upserts)


def _marked(cur: Cursor[Any], mark: Mark) -> int:
    cur.execute("SELECT last_seq FROM forward_marks WHERE spool_id = %s", (mark.spool_id,))
    found = cur.fetchone()
    return int(found[0]) if found else 0


def copy_event_rows(cur: Cursor[Any], rows: RowsBatch, mark: Mark | None) -> None:
    """The first half of a rows batch: raise `SeenBefore` if its spool's mark says it may
    be stored, else COPY its lines straight into the event tables."""
    if mark is not None and _marked(cur, mark) >= rows.first_seq:
        raise SeenBefore
    for name in EVENT_TABLES_IN_ROWS:
        if rows.texts[name]:
            _copy_text(cur, name, rows.columns[name], rows.texts[name])


def finish_rows(cur: Cursor[Any], host_id: str, rows: RowsBatch, mark: Mark | None) -> None:
    """The second half: artefacts, lineage and file state merged, the mark set."""
    _shared_text(cur, host_id, rows)
    _mark(cur, host_id, mark)


def is_seen_before(e: BaseException) -> bool:
    """Whether a failed direct COPY means "merge this batch instead": its mark was past
    it, or the COPY met the `(uid, time)` key (SQLAlchemy wraps what psycopg raised)."""
    return isinstance(e, SeenBefore | psycopg.errors.UniqueViolation) or isinstance(
        getattr(e, "orig", None), psycopg.errors.UniqueViolation
    )


def merge_rows(engine: Engine, host_id: str, rows: RowsBatch, mark: Mark | None) -> None:
    """A rows batch the idempotent way: each event table staged and merged."""
    with engine.begin() as conn:
        raw = conn.connection.driver_connection
        with raw.cursor() as cur:  # type: ignore[union-attr]
            for name in EVENT_TABLES_IN_ROWS:
                _merge_text(cur, name, rows.columns[name], rows.texts[name])
            finish_rows(cur, host_id, rows, mark)


def copy_rows(engine: Engine, host_id: str, rows: RowsBatch, mark: Mark | None) -> dict[str, int]:
    """Commit a run of spooled rows in one transaction; exactly once.

    COPY straight into the event tables when the spool's mark is below the run (nothing
    of it stored), else — or when the COPY meets the `(uid, time)` key anyway — each
    event table through staging and `ON CONFLICT DO NOTHING`. Either way each row once.
    """
    try:
        with engine.begin() as conn:
            raw = conn.connection.driver_connection
            with raw.cursor() as cur:  # type: ignore[union-attr]
                copy_event_rows(cur, rows, mark)
                finish_rows(cur, host_id, rows, mark)
    except Exception as e:
        if not is_seen_before(e):
            raise
        merge_rows(engine, host_id, rows, mark)
    return rows.counts()
