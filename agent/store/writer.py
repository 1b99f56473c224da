"""The single store writer: one thread, a bounded queue, batched commits.

Events reach the writer through `submit()` (the pipeline's sink). The writer commits at
most `batch_size` events, gathered for up to `flush_interval` seconds after the first
(one transaction per trickle of events, not one per event), with Core `executemany`
inserts and `ON CONFLICT DO NOTHING` on each row's uid — so re-sending a batch after a
half-committed failure stores nothing twice. A failed commit is retried with back-off
and the batch kept; while it retries the queue fills and back-pressure reaches the
sensors, whose drops are counted. `stop()` flushes everything queued before returning.
With a central (non-SQLite) database the writer commits to the local spool instead
(`commit=`, see agent/store/spool.py and forwarder.py), so it never waits on the network.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, delete, tuple_
from sqlalchemy.exc import SQLAlchemyError

from agent import metrics
from agent.backoff import Backoff
from agent.events import Artefact, Event, FileEvent, Flow
from agent.liveness import HEARTBEATS, Heartbeat, supervised
from agent.pipeline import BoundedQueue
from agent.store import rows as R
from agent.store.tables import artefacts, decisions, file_events, file_state, flows, lineage
from agent.store.upserts import sqlite_file_event_rows, upsert
from agent.store.watch import StoreWatch

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BatchRows:
    """What one batch of events becomes in each table (see agent/store/rows.py)."""

    file_events: list[dict[str, Any]]
    flows: list[dict[str, Any]]
    decisions: list[dict[str, Any]]
    artefacts: list[dict[str, Any]]
    lineage: list[dict[str, Any]]
    file_state_upserts: list[dict[str, Any]]
    file_state_deletes: list[str]

    def counts(self) -> dict[str, int]:
        return {
            "file_events": len(self.file_events),
            "flows": len(self.flows),
            "decisions": len(self.decisions),
            "artefacts": len(self.artefacts),
        }


def batch_rows(host_id: str, events: Sequence[Event], file_rows: bool = True) -> BatchRows:
    """Each table's rows for a batch; `file_rows=False` leaves `file_events` empty (the
    SQLite writer binds those rows straight from the events: `sqlite_file_event_rows`)."""
    now = datetime.now(UTC)
    # each content's row once, from its last artefact in the batch, in the order the
    # contents first came: a file's `created` and `written` (and copies of one content)
    # share a hash, and building a row per event cost the writer about 3 us an event
    last: dict[str, Artefact] = {}
    lineage: dict[tuple[str, str, str], dict[str, Any]] = {}
    file_event_rows: list[dict[str, Any]] = []
    flow_rows: list[dict[str, Any]] = []
    decisions: list[dict[str, Any]] = []
    for e in events:  # one pass, in event order; most events have no decision
        if isinstance(e, FileEvent):
            if file_rows:
                file_event_rows.append(R.file_event_row(e, host_id))
            a = e.artefact
            if a is not None and a.sha256:
                last[a.sha256] = a
                if a.parents:
                    for ln in R.lineage_rows(a, now):
                        lineage[(ln["parent_sha256"], ln["child_sha256"], ln["relation"])] = ln
        elif isinstance(e, Flow):
            flow_rows.append(R.flow_row(e, host_id))
        if e.decisions:
            decisions.extend(R.decision_rows(e, host_id))
    artefacts = [row for a in last.values() if (row := R.artefact_row(a, now)) is not None]
    upserts, deletes = R.file_state_changes(events)
    return BatchRows(
        file_events=file_event_rows,
        flows=flow_rows,
        decisions=decisions,
        artefacts=artefacts,
        lineage=list(lineage.values()),
        file_state_upserts=[{"host_id": host_id, **u} for u in upserts.values()],
        file_state_deletes=sorted(deletes),
    )


# the tables keyed by each row's uid: a re-sent row is skipped, never stored twice
EVENT_TABLES = (
    ("file_events", file_events),
    ("flows", flows),
    ("decisions", decisions),
)


def write_batch(engine: Engine, host_id: str, events: Sequence[Event]) -> dict[str, int]:
    """Commit one batch in one transaction; idempotent. Returns rows offered per table."""
    on_sqlite = engine.dialect.name == "sqlite"
    rows = batch_rows(host_id, events, file_rows=not on_sqlite)
    counts = rows.counts()
    with engine.begin() as conn:
        if on_sqlite:
            sql, row_of = sqlite_file_event_rows(engine)
            bound = [row_of(e, host_id) for e in events if isinstance(e, FileEvent)]
            if bound:
                conn.exec_driver_sql(sql, bound)
            counts["file_events"] = len(bound)
        for name, table in EVENT_TABLES:
            if on_sqlite and table is file_events:
                continue
            # no conflict target: the key is `uid` on SQLite, `(uid, time)` on a partitioned
            # PostgreSQL store (agent/store/partitions.py); either way a re-sent row is skipped
            upsert(conn, engine, table, getattr(rows, name))
        write_shared_rows(conn, engine, host_id, rows)
    return counts


def write_shared_rows(conn: Connection, engine: Engine, host_id: str, rows: BatchRows) -> None:
    """Artefacts, lineage and file state: upserts keyed by content or path, not by uid."""
    upsert(
        conn,
        engine,
        artefacts,
        rows.artefacts,
        conflict=("sha256",),
        update=("last_seen", "tags", "kinds", "matches", "content_type"),
    )
    upsert(conn, engine, lineage, rows.lineage)
    if rows.file_state_deletes:
        keys = [(host_id, p) for p in rows.file_state_deletes]
        for i in range(0, len(keys), 500):
            conn.execute(
                delete(file_state).where(
                    tuple_(file_state.c.host_id, file_state.c.path).in_(keys[i : i + 500])
                )
            )
    upsert(
        conn,
        engine,
        file_state,
        rows.file_state_upserts,
        conflict=("host_id", "path"),
        update=("size", "inode", "mtime_ns", "sha256", "updated_at"),
    )


class StoreWriter:
    """One thread that owns all event writes to the store."""

    def __init__(
        self,
        engine: Engine,
        host_id: str,
        batch_size: int = 1000,
        flush_interval: float = 0.1,
        queue_size: int = 100_000,
        stop_retry_seconds: float = 30.0,
        commit: Callable[[Sequence[Event]], Mapping[str, int]] | None = None,
        watch: StoreWatch | None = None,
    ) -> None:
        self.engine = engine
        # a SQLite store swapped under the agent is reopened before the next batch
        self.watch = watch
        self.host_id = host_id
        # where a batch goes: the store itself, or the fleet spool (agent/store/spool.py)
        self._write = commit or (lambda batch: write_batch(engine, host_id, batch))
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.stop_retry_seconds = stop_retry_seconds
        self.queue: BoundedQueue[Event] = BoundedQueue("store", queue_size)
        self._thread: threading.Thread | None = None
        self._beat: Heartbeat = Heartbeat("store-writer")
        self._stopping = threading.Event()
        self.written = 0

    def submit(self, event: Event) -> None:
        """Sink for the pipeline: waits while the queue is full (back-pressure)."""
        self.queue.put(event, timeout=None)

    def submit_many(self, events: Sequence[Event]) -> None:
        """`submit` for a whole batch (the pipeline's batch sink): one queue lock."""
        self.queue.put_many(events, timeout=None)

    def start(self) -> None:
        self._beat = HEARTBEATS.add("store-writer", self.queue.qsize)
        target = supervised(self._run, self._beat, threading.Event())
        self._thread = threading.Thread(target=target, name="store-writer")
        self._thread.start()

    def stop(self) -> None:
        """Flush everything queued, then join the thread."""
        if self._thread is None:
            return
        self._stopping.set()
        self.queue.put_stop()
        self._thread.join()
        self._thread = None
        HEARTBEATS.remove(self._beat.name)

    def _run(self) -> None:
        done = False
        while not done:
            # block until an event comes (stop() sends one: nothing to poll for), then
            # linger: events that trickle in (a flow every few ms) share one commit
            batch, done = self.queue.get_batch(self.batch_size, None, linger=self.flush_interval)
            self._beat.beat()
            if batch:
                self._beat.busy = True
                try:
                    self._commit(batch)
                except Exception:  # a bug, not an outage: count the batch, then restart
                    metrics.DROPPED.labels("store", "writer_error").inc(len(batch))
                    raise
                finally:
                    self._beat.busy = False
                self._beat.beat()

    def _commit(self, batch: list[Event]) -> None:
        delays = Backoff(initial=0.05, maximum=5.0)
        deadline: float | None = None
        while True:
            started = time.perf_counter()
            try:
                if self.watch is None:
                    counts = self._write(batch)
                else:
                    with self.watch.writing():  # a store swapped under us is reopened first
                        counts = self._write(batch)
            except (SQLAlchemyError, sqlite3.Error) as e:
                reason = type(getattr(e, "orig", None) or e).__name__
                metrics.STORE_ERRORS.labels(reason).inc()
                delay = delays.next()
                log.warning(
                    "store write failed (%s); retrying in %.1fs", e.__class__.__name__, delay
                )
                self._beat.beat()  # an outage is not a hang: the writer is alive and retrying
                if self._stopping.is_set():
                    deadline = deadline or time.monotonic() + self.stop_retry_seconds
                    if time.monotonic() > deadline:
                        metrics.DROPPED.labels("store", "store_unavailable_at_stop").inc(len(batch))
                        log.error("store still failing at stop: %d events not written", len(batch))
                        return
                time.sleep(delay)
                continue
            metrics.STORE_WRITE_SECONDS.observe(time.perf_counter() - started)
            counts = dict(counts)
            # a full fleet spool keeps fewer than it was given (the rest are counted drops)
            kept = counts.pop("events_kept", len(batch))
            for table, n in counts.items():
                if n:
                    metrics.STORE_ROWS.labels(table).inc(n)
            metrics.STORE_LAST_WRITE.set_to_current_time()
            self.written += kept
            return
