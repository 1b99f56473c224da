"""The forwarder's spool side: the next run read ahead, committed runs deleted behind.

The forwarder (agent/store/forwarder.py) commits one run of spooled records at a time.
Around each commit this keeps the spool busy on threads of its own:

- ahead: the run after the current one is read (and, spooled as COPY rows, opened on a
  second connection: rows_pipeline.py) in the `store-ahead` thread while the current one
  is merged and committed, and the run after that is read in the `store-read` thread
  while the opening's COPY runs. Reading and decoding is Python work that overlaps the
  server's (the GIL is free while psycopg waits for it). A run read ahead is only valid
  once the current one is acknowledged: any failure throws it away (`discard`).
- behind: a committed run is deleted from the spool in the `store-ack` thread (once a
  fifth of the wall time on the forwarding thread; far less since a run is a few
  records and a deletion neither zeroes its pages nor waits for an fsync), in order, each
  deletion waiting for the one before. A deletion that failed surfaces at the next
  acknowledgement or read; its run is kept in `committed` and deleted before the spool
  is read again, never sent again (a later run may have committed since).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from sqlalchemy import Connection, Engine

from agent.events import Event
from agent.store import codec, rows_pipeline, spool_rows
from agent.store.bulk import Mark
from agent.store.spool import Spool, SpooledEvent, events_in
from agent.store.writer import BatchRows, batch_rows

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Batch:
    """One host's run of spooled records of one form, made ready ahead of its commit."""

    run: list[SpooledEvent]
    events: list[Event]  # decoded, from a run spooled as JSON
    corrupt: int
    rows: BatchRows | None  # the bulk paths' table rows, built ahead with the decode
    spooled_rows: spool_rows.RowsBatch | None = None  # a run spooled as COPY rows
    opened: rows_pipeline.Opened | None = None  # its event rows COPYed, not committed
    whole: bool = False  # records follow it in the spool: the run cannot grow


class SpoolAhead:
    """Reads runs of `spool` ahead of the forwarder and deletes committed ones behind it.

    `with_rows`: build the bulk paths' table rows of a JSON run with its decode;
    `open_rows`: open a run spooled as COPY rows on a connection of `engine` as it is
    read ahead. Used by the forwarding thread only (the two threads are its helpers).
    """

    def __init__(
        self, spool: Spool, engine: Engine, batch_size: int, *, with_rows: bool, open_rows: bool
    ) -> None:
        self.spool = spool
        self.engine = engine
        self.batch_size = batch_size
        self.with_rows = with_rows
        self.open_rows = open_rows
        self.ahead: Future[Batch] | None = None
        # committed runs whose deletion failed, oldest first: deleted before anything is
        # read again, never sent again (a later batch may have committed since)
        self.committed: list[Sequence[SpooledEvent]] = []
        self._acking: Future[None] | None = None  # a committed run being deleted
        self._acking_run: Sequence[SpooledEvent] = ()
        # the run after `ahead`, read (not opened) while `ahead` is opened: (after, run)
        self._further: tuple[int, Future[Batch]] | None = None
        self._reader: ThreadPoolExecutor | None = None
        self._further_reader: ThreadPoolExecutor | None = None
        self._acks: ThreadPoolExecutor | None = None

    def close(self) -> None:
        """Roll back what was opened ahead and stop the threads."""
        self.discard()
        for pool in (self._reader, self._further_reader, self._acks):
            if pool is not None:
                pool.shutdown()
        self._reader = self._further_reader = self._acks = None

    # --- ahead -----------------------------------------------------------------------
    def read(self, after: int = 0) -> Batch:
        """The oldest spooled run of one host and form past seq `after`, ready to send."""
        records, more = self.spool.read(self.batch_size, after)
        run: list[SpooledEvent] = []
        for r in records:
            if r.host_id != records[0].host_id or r.layout != records[0].layout:
                break
            run.append(r)
        whole = more or len(run) < len(records)
        if run and run[0].layout is not None:
            return Batch(run, [], 0, None, self.rows_of(run), whole=whole)
        events: list[Event] = []
        corrupt = 0
        for r in run:
            try:
                events.append(codec.decode(r.text))
            except codec.CodecError as e:
                corrupt += 1
                log.error("spool record %d cannot be read and is skipped: %s", r.seq, e)
        rows = batch_rows(run[0].host_id, events) if self.with_rows and events else None
        return Batch(run, events, corrupt, rows, whole=whole)

    def rows_of(self, run: Sequence[SpooledEvent]) -> spool_rows.RowsBatch:
        layout = run[0].layout
        assert layout is not None
        return spool_rows.batch([r.text for r in run], self.spool.layouts[layout], run[0].first_seq)

    def next(self) -> Batch:
        """The run read ahead while the last one was being committed, or a fresh read."""
        ahead, self.ahead = self.ahead, None
        if ahead is not None:
            batch = ahead.result()
            if batch.run:
                return batch
        self.settle()  # a read from the start must not see a committed run again
        return self.read()

    def read_next(self, run: Sequence[SpooledEvent], open_it: bool) -> None:
        """Read (and with `open_it`, open) the run after `run` in the reader thread.

        Only open it once `run`'s event rows are in the store (committed, or in the open
        transaction that commits first): its COPY may then wait for `run`'s commit, never
        the reverse, so the two cannot block each other.
        """
        if len(self.spool) <= events_in(run):  # nothing spooled past it (yet)
            return
        conn = rows_pipeline.checkout(self.engine) if open_it and self.open_rows else None
        if self._reader is None:
            self._reader = ThreadPoolExecutor(1, thread_name_prefix="store-ahead")
        self.ahead = self._reader.submit(self._read_ahead, run[-1].seq, conn)

    def _read_ahead(self, after: int, conn: Connection | None) -> Batch:
        """`read`, and with `conn` the run opened on it (rows_pipeline.open_rows).

        The run is usually read already (`_read_further`), and the one after it is read
        while this one is opened: reading the spool is then off the path that bounds
        the rate (the reader waits for its COPY; the forwarding thread for the reader).
        """
        try:
            batch = self._read_further(after)
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        if conn is None:
            return batch
        if batch.spooled_rows is None or not batch.run:
            conn.close()
            return batch
        mark = Mark(self.spool.spool_id, batch.run[-1].seq)
        opened = rows_pipeline.open_rows(conn, batch.spooled_rows, mark)
        return dataclasses.replace(batch, opened=opened)

    def _read_further(self, after: int) -> Batch:
        """The run past `after`, as read before if it was (and was whole: one that ended
        at the spool's end may have grown since), and the reading of the run after it
        started."""
        further, self._further = self._further, None
        batch = None
        if further is not None and further[0] == after:
            with contextlib.suppress(Exception):  # a failed read is read again here
                batch = further[1].result()
        if batch is None or not batch.whole:
            batch = self.read(after)
        if batch.whole:
            if self._further_reader is None:
                self._further_reader = ThreadPoolExecutor(1, thread_name_prefix="store-read")
            last = batch.run[-1].seq
            self._further = (last, self._further_reader.submit(self.read, last))
        return batch

    def discard(self) -> None:
        """Throw away the runs read ahead; one opened is rolled back (it stays spooled)."""
        ahead, self.ahead = self.ahead, None
        if ahead is not None:
            with contextlib.suppress(Exception):
                batch = ahead.result()
                if batch.opened is not None:
                    batch.opened.discard()
        # only read, never opened; set by the reader before `ahead` is done
        self._further = None

    # --- behind ----------------------------------------------------------------------
    def acknowledge(self, run: Sequence[SpooledEvent], later: bool) -> None:
        """Delete a committed run from the spool; `later`: in the ack thread.

        On the pipelined path the deletion overlaps the next run's commit. One that
        failed surfaces here, after the next run has committed too: both runs are kept
        in `committed` and deleted before the spool is read again. Sending the first
        again instead would merge its file state over the second's (an older state
        last); a crash meanwhile re-sends both, in order, which is right.
        """
        try:
            self.settle()
        except BaseException:
            self.committed.append(run)
            raise
        if not later:
            # a failure here sends the run again, merged: nothing after it has committed
            self.spool.acknowledge(run)
            return
        if self._acks is None:
            self._acks = ThreadPoolExecutor(1, thread_name_prefix="store-ack")
        self._acking, self._acking_run = self._acks.submit(self.spool.acknowledge, run), run

    def settle(self) -> None:
        """Wait for the deletion in flight; raise what it raised (its run kept to delete)."""
        acking, self._acking = self._acking, None
        if acking is not None:
            try:
                acking.result()
            except BaseException:
                self.committed.append(self._acking_run)
                raise

    def delete_committed(self) -> None:
        """Delete the committed runs a failed deletion left, oldest first.

        A deletion in flight is not waited for: it overlaps the next run's commit, and
        a failure of it surfaces at that run's acknowledgement (or before a fresh read),
        which keeps both runs here. While runs are kept nothing is in flight.
        """
        if not self.committed:
            return
        self.settle()
        while self.committed:
            self.spool.acknowledge(self.committed[0])
            self.committed.pop(0)
