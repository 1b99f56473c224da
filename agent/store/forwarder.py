"""The forwarder of store-and-forward: spool → central PostgreSQL, in order, exactly once.

With a central database the store writer commits to the local spool (agent/store/spool.py)
and never waits on the network. This thread takes the oldest spooled events, commits them
to the central store in one transaction and only then deletes them from the spool. On
the PostgreSQL bulk path the writer spools each event as its COPY-ready table rows
(agent/store/spool_rows.py), so a batch is sent as it was spooled with no per-event work
here (`copy_rows`); the next batch is opened on a second connection (its event rows
COPYed, not committed) while the current one is merged and committed (rows_pipeline.py;
batches still commit one after the other), and a committed batch is deleted from the
spool in a thread of its own (spool_ahead.py keeps the books of both threads). Events
spooled as JSON (an older spool, a text that is not UTF-8, the other write paths) are
decoded and COPYed as before (`copy_direct`). A crash or a lost acknowledgement between
commit and delete re-sends the batch; the bulk path sees from the spool's forward mark,
or from the `(uid, time)` key a COPY meets, that the batch may be stored and merges it
with `ON CONFLICT DO NOTHING` instead, so the re-send stores nothing twice: exactly once.
While the central store is unreachable it retries with exponential back-off
(`egress_agent_fleet_connected` 0, errors counted by reason).

A batch that is not full waits up to `database.forward_linger` for more events: a small
batch costs the central store ≈ 1.5 ms of backend CPU whatever its size (docs/fleet.md),
so each host sends about one per linger instead of one per writer flush.

An attempt that hangs is abandoned after `database.forward_timeout`
(agent/store/attempt.py). At stop it keeps forwarding for at most
`database.forward_stop_seconds`; what is left stays in the spool for the next start.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import psycopg
import sqlalchemy.exc
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from agent import metrics
from agent.backoff import Backoff
from agent.events import Event
from agent.store import rows_pipeline, spool_rows
from agent.store.attempt import AttemptGuard
from agent.store.bulk import Mark, copy_batch, copy_direct, copy_rows, is_bulk
from agent.store.db import StoreError, register_host, upgrade
from agent.store.spool import Spool, SpooledEvent, events_in, split
from agent.store.spool_ahead import Batch, SpoolAhead

log = logging.getLogger(__name__)

# errors about the data itself (a NUL in a text, a value out of range, a NOT NULL): they
# come back on every retry, so the forwarder isolates the event instead of retrying
_REJECTED = (
    sqlalchemy.exc.DataError,
    sqlalchemy.exc.IntegrityError,
    psycopg.DataError,
    psycopg.IntegrityError,
)

_T = TypeVar("_T")
WriteFn = Callable[[Engine, str, Sequence[Event]], Mapping[str, int]]


class Forwarder:
    """One thread draining the spool into the central store."""

    def __init__(
        self,
        spool: Spool,
        engine: Engine,
        host_id: str,
        hostname: str,
        *,
        batch_size: int = 5000,
        write: WriteFn = copy_direct,
        timeout: float = 30.0,
        backoff_max: float = 30.0,
        stop_seconds: float = 5.0,
        auto_upgrade: bool = True,
        linger: float = 0.0,
    ) -> None:
        self.spool = spool
        self.engine = engine
        self.host_id = host_id
        self.hostname = hostname
        self.batch_size = batch_size
        self.timeout = timeout
        self.backoff_max = backoff_max
        self.stop_seconds = stop_seconds
        self.auto_upgrade = auto_upgrade
        self.linger = linger
        # when the first event after the last send was spooled (None: send at once)
        self._pending_since: float | None = None
        self._write = write
        # the bulk paths also keep this spool's progress centrally (forward_marks)
        self._marks = write in (copy_direct, copy_batch)
        # and have the writer spool COPY rows, so that forwarding does no per-event work
        self._as_rows = self._marks and is_bulk(engine)
        self._guard = AttemptGuard(engine)
        # the next run read (and opened) ahead, committed runs deleted behind
        self.runs = SpoolAhead(
            spool, engine, batch_size, with_rows=self._marks, open_rows=self._as_rows
        )
        self._prepared = False
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._interrupt = threading.Event()
        self._stop_by = float("inf")
        self._thread: threading.Thread | None = None
        self.forwarded = 0
        self.connected = False
        self.last_error: str | None = None
        metrics.FLEET_CONNECTED.set(0)

    # --- the writer's side ---------------------------------------------------------
    def commit(self, events: Sequence[Event]) -> dict[str, int]:
        """`StoreWriter(commit=...)`: spool the batch and wake the forwarder.

        No table rows yet (the forwarder counts those); `events_kept` tells the writer
        how many the spool took.
        """
        kept = self.spool.append(self.host_id, events, as_rows=self._as_rows)
        if self._pending_since is None:
            self._pending_since = time.monotonic()
        self._wake.set()
        return {"events_kept": kept}

    # --- lifecycle -----------------------------------------------------------------
    def start(self, wait: float = 0.0) -> bool:
        """Start forwarding; wait up to `wait` s for the first connection. True if connected."""
        self._thread = threading.Thread(target=self._run, name="store-forwarder")
        self._thread.start()
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and not self._prepared and self.last_error is None:
            time.sleep(0.02)
        return self._prepared

    def stop(self) -> None:
        """Forward for at most `stop_seconds` more, then join; the spool keeps the rest."""
        if self._thread is None:
            return
        self._stop_by = time.monotonic() + self.stop_seconds
        self._stopping.set()
        self._interrupt.set()
        self._wake.set()
        self._thread.join()
        self._thread = None
        left = len(self.spool)
        if left:
            log.warning(
                "stopped forwarding with %d events spooled; the next start sends them", left
            )

    def close(self) -> None:
        self.stop()
        self.runs.close()
        self.spool.close()
        self.engine.dispose()

    def status(self) -> dict[str, object]:
        st = self.spool.stats()
        return {
            "connected": self.connected,
            "spool_events": st.events,
            "spool_bytes": st.bytes,
            "spool_max_bytes": st.max_bytes,
            "spool_dropped": st.dropped,
            "forwarded": self.forwarded,
            "last_error": self.last_error,
        }

    # --- the forwarding loop ------------------------------------------------------
    def _time_left(self) -> float:
        return self._stop_by - time.monotonic()

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            self.runs.discard()  # a batch opened ahead is rolled back: it stays spooled
            with contextlib.suppress(Exception):  # a failed delete: the batch is merged again
                self.runs.settle()

    def _loop(self) -> None:
        # jittered: after an outage a fleet must not come back to the store in lockstep
        delays = Backoff(initial=0.1, maximum=self.backoff_max)
        while True:
            if self._stopping.is_set() and (self._time_left() <= 0 or not len(self.spool)):
                return
            self._wake.clear()  # before looking: an append from now on wakes the wait below
            linger = self._linger_left()
            if linger > 0:
                self._wake.wait(linger)  # an append wakes it to look again: a full batch goes
                continue
            self._pending_since = None  # what is appended from here waits for the next send
            try:
                with self._guard.deadline(min(self.timeout, self._time_left())):
                    if not self._prepared:
                        self.prepare()
                    sent = self.forward_once()
            except Exception as e:
                self._failed(e)
                self._sleep(delays.next())
                continue
            delays.reset()
            if not self.connected:
                log.info("central store reachable: forwarding %d spooled events", len(self.spool))
            self.connected, self.last_error = True, None
            metrics.FLEET_CONNECTED.set(1)
            if sent == 0 and not self._stopping.is_set():
                self._wake.wait(1.0)

    def _linger_left(self) -> float:
        """Seconds to wait for more events before sending a batch that is not full.

        Errs toward sending: no pending time known (a backlog at start, an append that
        raced the last send), a stop, or a full batch spooled all mean 0.
        """
        since = self._pending_since
        if since is None or self.linger <= 0 or self._stopping.is_set():
            return 0.0
        if self.runs.ahead is not None or len(self.spool) >= self.batch_size:
            return 0.0  # a batch read (or opened) ahead, or a full one: no reason to wait
        return self.linger - (time.monotonic() - since)

    def _sleep(self, seconds: float) -> None:
        if self._stopping.is_set():
            time.sleep(min(seconds, max(self._time_left(), 0)))
        else:
            self._interrupt.wait(seconds)  # stop() cuts a long back-off short

    def _failed(self, e: Exception) -> None:
        orig = getattr(e, "orig", None) or e
        reason = "timeout" if self._guard.fired else type(orig).__name__
        metrics.FLEET_ERRORS.labels(reason).inc()
        metrics.FLEET_CONNECTED.set(0)
        first_line = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
        if self.connected or self.last_error is None:
            log.warning(
                "central store unavailable (%s: %s); spooling and retrying", reason, first_line
            )
        if not isinstance(e, SQLAlchemyError | psycopg.Error | OSError | StoreError):
            log.exception("forwarding failed (retrying)")
        self.connected, self.last_error = False, f"{reason}: {first_line}"
        # drop pooled connections: after a cut they are all dead, and a reused dead one
        # would fail the next attempt for nothing
        self.engine.dispose()

    def prepare(self) -> None:
        """Schema (when auto_upgrade) and this host's row in the central store."""
        if self.auto_upgrade:
            upgrade(self.engine)
        register_host(self.engine, self.host_id, self.hostname)
        self._prepared = True

    def forward_once(self) -> int:
        """Commit the oldest spooled batch (one host's run of it) and acknowledge it."""
        try:
            self.runs.delete_committed()
            batch = self.runs.next()
        except BaseException:
            self.runs.discard()
            raise
        run, events, corrupt = batch.run, batch.events, batch.corrupt
        if not run:
            return 0
        host = run[0].host_id
        started = time.perf_counter()
        try:
            opened = batch.opened
            if opened is not None and not opened.merge:
                # pipelined: the next batch is opened while this one is finished
                self._guard.watch(opened.dbapi())
                self.runs.read_next(run, open_it=True)
                counts = self._finish_opened(opened, host, run)
            elif batch.spooled_rows is not None:
                counts = self._write_spooled_rows(host, batch.spooled_rows, run)
                self.runs.read_next(run, open_it=True)
            else:
                self.runs.read_next(run, open_it=False)
                try:
                    counts = dict(self._write_run(host, batch, run[-1].seq)) if events else {}
                except _REJECTED:
                    counts = self._write_isolating(host, events)
            metrics.FLEET_FORWARD_SECONDS.observe(time.perf_counter() - started)
            self.runs.acknowledge(run, later=opened is not None and not opened.merge)
        except BaseException:
            self.runs.discard()  # the same batch goes again: what follows is not next
            if batch.opened is not None:
                batch.opened.discard()
            raise
        if corrupt:
            metrics.DROPPED.labels("spool", "corrupt").inc(corrupt)
        stored = counts.pop("_stored", len(events))
        for table, n in counts.items():
            if n:
                metrics.STORE_ROWS.labels(table).inc(n)
        metrics.FLEET_FORWARDED.inc(stored)
        metrics.FLEET_LAST_FORWARD.set_to_current_time()
        metrics.STORE_LAST_WRITE.set_to_current_time()
        self.forwarded += stored
        return events_in(run)

    def _finish_opened(
        self, opened: rows_pipeline.Opened, host: str, run: Sequence[SpooledEvent]
    ) -> dict[str, int]:
        """Commit a batch opened ahead; one the store refuses as data is bisected."""
        try:
            return {**rows_pipeline.finish(opened, host), "_stored": events_in(run)}
        except _REJECTED:
            # roll the next batch back first: this one is written again (see read_next)
            self.runs.discard()
            counts = self._write_spooled_rows(host, opened.rows, run)
            self.runs.read_next(run, open_it=True)
            return counts

    def _write_run(self, host: str, batch: Batch, last_seq: int) -> Mapping[str, int]:
        if self._marks:
            mark = Mark(self.spool.spool_id, last_seq)
            return self._write(  # type: ignore[call-arg]
                self.engine, host, batch.events, mark, batch.rows
            )
        return self._write(self.engine, host, batch.events)

    def _write_spooled_rows(
        self, host: str, rows: spool_rows.RowsBatch, run: Sequence[SpooledEvent]
    ) -> dict[str, int]:
        """A run spooled as COPY rows: one transaction, or bisected as events are."""
        try:
            counts = copy_rows(self.engine, host, rows, Mark(self.spool.spool_id, run[-1].seq))
        except _REJECTED:
            return self._bisecting(
                [e for r in run for e in split(r)],  # a record may hold several events
                lambda part: copy_rows(self.engine, host, self.runs.rows_of(part), None),
                lambda r: f"spooled as record {r.seq}",
            )
        return {**counts, "_stored": events_in(run)}

    def _write_isolating(self, host: str, events: Sequence[Event]) -> dict[str, int]:
        return self._bisecting(
            events, lambda part: self._write(self.engine, host, part), lambda e: e.uid
        )

    def _bisecting(
        self,
        items: Sequence[_T],
        write: Callable[[Sequence[_T]], Mapping[str, int]],
        name: Callable[[_T], str],
    ) -> dict[str, int]:
        """Bisect a batch the store refused as data, so one bad event cannot block the rest.

        Each half is its own (idempotent) transaction, without a mark; an event refused
        on its own is dropped, logged and counted as `reason="rejected"`. Connection
        errors still propagate, and the whole batch is retried later.
        """
        try:
            counts = dict(write(items))
        except _REJECTED as e:
            if len(items) > 1:
                half = len(items) // 2
                a = self._bisecting(items[:half], write, name)
                b = self._bisecting(items[half:], write, name)
                return {k: a.get(k, 0) + b.get(k, 0) for k in set(a) | set(b)}
            orig = getattr(e, "orig", None) or e
            log.error(
                "central store refused event %s and it is dropped: %s",
                name(items[0]),
                (str(orig).strip().splitlines() or [type(orig).__name__])[0],
            )
            metrics.DROPPED.labels("spool", "rejected").inc()
            return {"_stored": 0}
        counts["_stored"] = len(items)
        return counts
