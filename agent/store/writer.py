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

import functools
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

from sqlalchemy import JSON, Connection, Engine, bindparam, delete, text, tuple_
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.elements import TextClause

from agent import metrics
from agent.backoff import Backoff
from agent.events import Artefact, Event, FileEvent, Flow
from agent.liveness import HEARTBEATS, Heartbeat, supervised
from agent.pipeline import BoundedQueue
from agent.store import rows as R
from agent.store.schema_map import FILE_EVENT_ROW
from agent.store.tables import artefacts, decisions, file_events, file_state, flows, lineage
from agent.store.watch import StoreWatch

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=128)
def _upsert_sql(
    engine: Engine,
    table: Any,
    keys: tuple[str, ...],
    conflict: tuple[str, ...],
    update: tuple[str, ...],
) -> TextClause:
    """`INSERT ... ON CONFLICT (...) DO NOTHING | DO UPDATE SET c = excluded.c`, built once.

    SQLAlchemy cannot cache the compiled form of its dialect `insert().on_conflict_*`
    constructs, so building them per batch recompiled every statement every commit (a
    third of the writer's CPU). PostgreSQL and SQLite (3.24+) share this syntax; typed
    bind parameters keep SQLAlchemy's JSON and DateTime handling.
    """
    sql = _upsert_text(engine, table, keys, conflict, update, [f":{k}" for k in keys])
    return text(sql).bindparams(*(bindparam(k, type_=table.c[k].type) for k in keys))


def _upsert_text(
    engine: Engine,
    table: Any,
    keys: tuple[str, ...],
    conflict: tuple[str, ...],
    update: tuple[str, ...],
    placeholders: list[str],
) -> str:
    q = engine.dialect.identifier_preparer.quote
    cols = ", ".join(q(k) for k in keys)
    values = ", ".join(placeholders)
    target = f" ({', '.join(q(c) for c in conflict)})" if conflict else ""
    if update:
        action = "DO UPDATE SET " + ", ".join(f"{q(c)} = excluded.{q(c)}" for c in update)
    else:
        action = "DO NOTHING"
    return f"INSERT INTO {q(table.name)} ({cols}) VALUES ({values}) ON CONFLICT{target} {action}"


def _upsert(
    conn: Connection,
    engine: Engine,
    table: Any,
    rows: Sequence[Mapping[str, Any]],
    conflict: tuple[str, ...] = (),
    update: tuple[str, ...] = (),
) -> None:
    """executemany of one batch's rows (all with the same keys) into `table`."""
    if not rows:
        return
    keys = tuple(rows[0])
    if engine.dialect.name == "sqlite":
        sql, processors = _sqlite_upsert(engine, table, keys, conflict, update)
        conn.exec_driver_sql(sql, _bound_rows(rows, keys, processors))
        return
    conn.execute(_upsert_sql(engine, table, keys, conflict, update), list(rows))


Processor = Callable[[Any], Any] | None


@functools.lru_cache(maxsize=128)
def _sqlite_upsert(
    engine: Engine,
    table: Any,
    keys: tuple[str, ...],
    conflict: tuple[str, ...],
    update: tuple[str, ...],
) -> tuple[str, tuple[Processor, ...]]:
    """The same statement with `?` placeholders, and each column's SQLAlchemy bind
    processor (JSON text, DateTime text: exactly what `conn.execute` would store).

    On SQLite, SQLAlchemy's per-row parameter handling (named to positional, a processor
    lookup per value) cost more than the inserts themselves; here it is one tuple per
    row handed to the driver's executemany.
    """
    sql = _upsert_text(engine, table, keys, conflict, update, ["?"] * len(keys))
    dialect = engine.dialect
    processors = tuple(
        _faster(t, t.dialect_impl(dialect), p) if p is not None else p
        for k in keys
        for t in [table.c[k].type]
        for p in [t.dialect_impl(dialect).bind_processor(dialect)]
    )
    return sql, processors


def _faster(column_type: Any, impl: Any, process: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A column's bind processor, or one that gives the same text for less: JSON values
    remembered (`_remembering`), SQLite datetimes by `isoformat` (`_sqlite_datetime`)."""
    if isinstance(column_type, JSON):
        return _remembering(process)
    if isinstance(impl, sqlite.DATETIME) and impl._storage_format == _SQLITE_DATETIME_FORMAT:
        return functools.partial(_sqlite_datetime, process)
    return process


_DATETIME = datetime  # the class itself (a test freezes the module's `datetime.now`)
# SQLAlchemy's default text for a datetime in SQLite (sqlalchemy.dialects.sqlite.DATETIME)
_SQLITE_DATETIME_FORMAT = (
    "%(year)04d-%(month)02d-%(day)02d %(hour)02d:%(minute)02d:%(second)02d.%(microsecond)06d"
)


def _sqlite_datetime(process: Callable[[Any], Any], value: Any) -> Any:
    """SQLAlchemy's text of a datetime in SQLite (`YYYY-MM-DD HH:MM:SS.ffffff`, the time
    zone left out) from `isoformat`, in C: its `%`-format of seven fields was a sixth of
    the writer's CPU in a burst. Anything but a datetime goes to SQLAlchemy's processor."""
    if type(value) is _DATETIME:
        return value.isoformat(" ", "microseconds")[:26]
    return process(value)


def _bound_rows(
    rows: Sequence[Mapping[str, Any]], keys: tuple[str, ...], procs: tuple[Processor, ...]
) -> list[tuple[Any, ...]]:
    """Each row as a tuple in `keys` order, every value through its column's processor.

    Column by column (`map` over one column's values) rather than value by value: the
    burst's writer spent a quarter of its time in the per-value loop this replaces.
    """
    get = itemgetter(*keys)
    values = [(get(r),) for r in rows] if len(keys) == 1 else [get(r) for r in rows]
    if not any(procs):
        return values
    columns = list(zip(*values, strict=True))
    for i, p in enumerate(procs):
        if p is not None:
            columns[i] = tuple(map(p, columns[i]))
    return list(zip(*columns, strict=True))


def _remembering(process: Callable[[Any], Any], limit: int = 4096) -> Callable[[Any], Any]:
    """A JSON column's processor that remembers the text of small repeated values.

    Event rows repeat a few JSON values (`[]`, `null`, the same two or three content
    kinds) thousands of times; a list of strings is keyed by its tuple, anything else
    is encoded every time. At most `limit` texts are kept.
    """
    known: dict[tuple[str, ...] | None, Any] = {}

    def remembered(value: Any) -> Any:
        if value is None:
            key = None
        elif type(value) is list and all(type(x) is str for x in value):
            key = tuple(value)
        else:
            return process(value)
        try:
            return known[key]
        except KeyError:
            text = process(value)
            if len(known) < limit:
                known[key] = text
            return text

    return remembered


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
    SQLite writer binds those rows straight from the events: `_sqlite_file_event_rows`)."""
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
            sql, row_of = _sqlite_file_event_rows(engine)
            bound = [row_of(e, host_id) for e in events if isinstance(e, FileEvent)]
            if bound:
                conn.exec_driver_sql(sql, bound)
            counts["file_events"] = len(bound)
        for name, table in EVENT_TABLES:
            if on_sqlite and table is file_events:
                continue
            # no conflict target: the key is `uid` on SQLite, `(uid, time)` on a partitioned
            # PostgreSQL store (agent/store/partitions.py); either way a re-sent row is skipped
            _upsert(conn, engine, table, getattr(rows, name))
        write_shared_rows(conn, engine, host_id, rows)
    return counts


@functools.lru_cache(maxsize=8)
def _sqlite_file_event_rows(
    engine: Engine,
) -> tuple[str, Callable[[FileEvent, str], tuple[Any, ...]]]:
    """The `file_events` insert with `?` placeholders, and a function that makes an
    event's bound row (the tuple `_bound_rows` makes of `file_event_row`) in one step.

    The function is compiled from the row's projection (schema_map.FILE_EVENT_ROW) with
    each column's bind processor around its expression: no dict per event, no
    transposition: a burst's file-event row cost 6.9 us as a dict bound by `_bound_rows`,
    2.9 us this way.
    """
    projection = FILE_EVENT_ROW
    keys = (*projection.keys, "host_id")
    sql, processors = _sqlite_upsert(engine, file_events, keys, (), ())
    namespace: dict[str, Any] = {}
    prologue: list[str] = []
    expressions = dict(projection._expressions("obj", namespace, prologue))
    expressions["host_id"] = "host_id"
    values = []
    for i, (key, process) in enumerate(zip(keys, processors, strict=True)):
        if process is None:
            values.append(expressions[key])
        else:
            namespace[f"_bind{i}"] = process
            values.append(f"_bind{i}({expressions[key]})")
    source = (
        "def bound_row(obj, host_id):\n"
        + "".join(f"    {line}\n" for line in prologue)
        + f"    return ({', '.join(values)},)\n"
    )
    exec(source, namespace)  # our own source, made of the projection's field names
    return sql, namespace["bound_row"]


def write_shared_rows(conn: Connection, engine: Engine, host_id: str, rows: BatchRows) -> None:
    """Artefacts, lineage and file state: upserts keyed by content or path, not by uid."""
    _upsert(
        conn,
        engine,
        artefacts,
        rows.artefacts,
        conflict=("sha256",),
        update=("last_seen", "tags", "kinds", "matches", "content_type"),
    )
    _upsert(conn, engine, lineage, rows.lineage)
    if rows.file_state_deletes:
        keys = [(host_id, p) for p in rows.file_state_deletes]
        for i in range(0, len(keys), 500):
            conn.execute(
                delete(file_state).where(
                    tuple_(file_state.c.host_id, file_state.c.path).in_(keys[i : i + 500])
                )
            )
    _upsert(
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
