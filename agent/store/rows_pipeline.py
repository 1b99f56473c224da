"""Two batches of spooled rows in flight on two connections, committed in spool order.

A batch's transaction (agent/store/bulk.py, `copy_rows`) is mostly its COPY into the
event tables (about half the wall time) and then the merges of artefacts, lineage and
file state, the spool's forward mark and the commit. Run one after the other on one
connection, the backend waits while the forwarder reads the spool and acknowledges, and
the forwarder waits while the backend works. Here the next batch is opened on a second
connection (`open_rows`: the mark check and the event-table COPY, not committed) while
the current one is finished (`finish`: merges, mark, commit) and acknowledged, so two
backends and the forwarder work at once.

Exactly once is the single-connection argument unchanged: each batch is one transaction
holding its rows and its mark, and a batch is finished only after the one before it has
committed, so the marks still cover a prefix of the spool and file state is still merged
in spool order. Only the event tables are written early; they are append-only and keyed
by `(uid, time)`, so the open batch cannot change what the current one merges. An event
spooled in both batches makes the open batch's COPY wait for the current commit and then
fail on the key; that batch, like one whose mark says it may be stored, is rolled back
and sent the merge way (`Opened.merge`). Any other failure rolls both back and the
forwarder retries from the spool.

An opened batch counts its rows in a rollup slot of its own (1 and 2 in turn; the
current batch, opened before it or sent directly, is in the other one or in 0), so its
COPY does not wait for the current batch's commit on a shared counter row
(agent/store/rollup.py, migration 0009).
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine, RootTransaction

from agent.store.bulk import (
    Mark,
    SeenBefore,
    copy_event_rows,
    finish_rows,
    is_seen_before,
)
from agent.store.rollup import SLOT_SETTING
from agent.store.spool_rows import RowsBatch

# the rollup slots opened batches take in turn (next() on a cycle is atomic under the GIL)
_slots = itertools.cycle(("1", "2"))

# what makes an open batch go the merge way instead of failing the attempt: seen before
# (its mark, or the key met), or refused as data (the forwarder then bisects it)
_MERGE_INSTEAD = (SeenBefore, psycopg.errors.UniqueViolation, psycopg.DataError)


@dataclass(slots=True)
class Opened:
    """A batch whose event rows are COPYed in a transaction not yet committed.

    `merge`: the COPY could not be used (the reason is `why`); the transaction is gone
    and the batch must be sent by the sequential path instead.
    """

    conn: Connection
    tx: RootTransaction | None
    rows: RowsBatch
    mark: Mark
    merge: bool = False
    why: BaseException | None = None

    def dbapi(self) -> Any:
        """The DBAPI connection, for the attempt deadline to watch (agent/store/attempt.py)."""
        return self.conn.connection.dbapi_connection

    def discard(self) -> None:
        """Roll back whatever is open and give the connection back; never raises."""
        with contextlib.suppress(Exception):
            if self.tx is not None and self.tx.is_active:
                self.tx.rollback()
        with contextlib.suppress(Exception):
            self.conn.close()
        self.tx = None


def checkout(engine: Engine) -> Connection:
    """A connection for `open_rows`, taken by the caller's thread.

    Taken where the attempt deadline sees it (its checkout is tracked), then handed to
    the thread that opens the batch.
    """
    return engine.connect()


def open_rows(conn: Connection, rows: RowsBatch, mark: Mark) -> Opened:
    """Begin the batch on `conn`: check its mark and COPY its event rows; do not commit.

    Errors about the batch itself come back as `Opened(merge=True)`; connection errors
    propagate (the connection is closed first).
    """
    opened = Opened(conn, None, rows, mark)
    try:
        opened.tx = conn.begin()
        raw = conn.connection.driver_connection
        with raw.cursor() as cur:  # type: ignore[union-attr]
            cur.execute("SELECT set_config(%s, %s, true)", (SLOT_SETTING, next(_slots)))
            copy_event_rows(cur, rows, mark)
    except Exception as e:
        orig = getattr(e, "orig", None) or e
        merge = isinstance(orig, _MERGE_INSTEAD) or is_seen_before(e)
        opened.discard()
        if not merge:
            raise
        opened.merge, opened.why = True, orig
        return opened
    return opened


def finish(opened: Opened, host_id: str) -> dict[str, int]:
    """Merge the batch's shared rows, set its mark and commit; the connection is returned."""
    assert not opened.merge and opened.tx is not None
    try:
        raw = opened.conn.connection.driver_connection
        with raw.cursor() as cur:  # type: ignore[union-attr]
            finish_rows(cur, host_id, opened.rows, opened.mark)
        opened.tx.commit()
    finally:
        opened.discard()
    return opened.rows.counts()
