"""The local spool of store-and-forward: a bounded, durable, ordered SQLite queue.

When `database.url` names a central (non-SQLite) database, the store writer commits each
batch here instead (agent/store/writer.py, `commit=`), so the agent never waits on the
network; the forwarder (agent/store/forwarder.py) reads the oldest events, commits them
to the central store and only then deletes them here. Each event is kept with the
host id it belongs to: as its COPY-ready table rows (agent/store/spool_rows.py, `layout`
names their columns) when the forwarder takes the PostgreSQL bulk path, else as JSON
(agent/store/codec.py; also the form of an event whose text is not UTF-8, and of spools
written before the rows form). Events spooled as rows are kept as one record per run of
an appended batch (`n` events, their texts joined by `spool_rows.SECTION`, which is
what the forwarder's `spool_rows.batch` joins them by anyway): reading and deleting
are then per record, not per event (2.6 and 2.3 µs of the forwarder's CPU an event
before, 0.25 and 0.03 now, the deletion's with `secure_delete=FAST` too).
Every event still has its own position: a record's `seq` is its last event's, the
ones before it count down from there (`n` NULL: one event, as every record a version
before this wrote). `seq` is AUTOINCREMENT so order survives restarts and emptying.
The bound is on the serialised bytes held
(`database.spool_max_bytes`; the file is that plus SQLite's page overhead): past it the
newest events are dropped, counted in `egress_agent_events_dropped_total{queue="spool",
reason="spool_full"}` and logged once per episode.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import starmap
from operator import itemgetter
from pathlib import Path
from typing import NamedTuple

from agent import metrics
from agent.events import Event
from agent.store import codec, spool_rows

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    host_id TEXT NOT NULL,
    event TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS spool_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# added with the rows form; a spool from before gets them on open (NULL: a JSON record)
_COLUMNS = {"layout": "INTEGER", "at": "REAL", "n": "INTEGER"}
# the freed pages a drained spool keeps for its next backlog rather than give back (a
# quarter of its bound at most): a live forwarder empties the spool after nearly every
# batch, and compacting each time cost 0.24 s of its wall time per 50,000 events (0.05
# s with the records of a batch and `secure_delete=FAST`, still all on the ack thread)
KEEP_FREE_BYTES = 32 << 20
_RECORD = "SELECT seq, host_id, event, layout, at, coalesce(n, 1) FROM spool"


class SpooledEvent(NamedTuple):
    """One spooled record: its position, the host it belongs to and its text.

    `layout` None: the text is the event as JSON; else the COPY rows of `events` events
    (joined by `spool_rows.SECTION`), in the columns `Spool.layouts[layout]`; `seq` is
    the last one's position. `at`: the (oldest) event's time (UNIX seconds), for the lag.
    A named tuple, not a frozen dataclass: made for every record the forwarder reads,
    and a frozen dataclass's `__init__` cost 1.2 µs more per record (a tenth of the
    forwarder's CPU per row).
    """

    seq: int
    host_id: str
    text: str
    layout: int | None = None
    at: float | None = None
    events: int = 1

    @property
    def first_seq(self) -> int:
        return self.seq - self.events + 1


_SEQ, _TEXT, _EVENTS = itemgetter(0), itemgetter(2), itemgetter(5)  # read without Python
_WIDTH = len(spool_rows.TABLES)  # sections of one event's rows text


def events_in(records: Sequence[SpooledEvent]) -> int:
    """How many events the records hold."""
    return sum(map(_EVENTS, records))


def split(record: SpooledEvent) -> list[SpooledEvent]:
    """A record of several events as one record per event (to isolate a refused one)."""
    if record.events == 1:
        return [record]
    parts = record.text.split(spool_rows.SECTION)
    first = record.first_seq
    return [
        record._replace(
            seq=first + i,
            text=spool_rows.SECTION.join(parts[i * _WIDTH : (i + 1) * _WIDTH]),
            events=1,
        )
        for i in range(record.events)
    ]


@dataclass(frozen=True, slots=True)
class SpoolStats:
    events: int
    bytes: int
    max_bytes: int
    dropped: int


class Spool:
    """A SQLite file of events waiting for the central store; safe to share between threads.

    The writer thread appends, the forwarder thread peeks and acknowledges; one lock
    serialises them (each call is a short transaction) so both see consistent counters.
    Appends commit with `synchronous=FULL`: the spool holds the only copy of an event
    until the central store has it, so it must survive a power cut, not just a crash.
    Deletions need not (see `acknowledge`). A run of `peek` may hold more events than
    its limit when its first record alone does (a writer's batch, 1,000 by default).
    """

    def __init__(self, path: Path, max_bytes: int, keep_free: int = KEEP_FREE_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep_free = min(keep_free, max_bytes // 4)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            str(path), timeout=30, isolation_level=None, check_same_thread=False
        )
        # set before the first table exists: lets a drained spool give its pages back
        self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        # this build of SQLite zeroes every freed page (SQLITE_SECURE_DELETE) and journals
        # it: a deletion wrote a run's whole size again, 0.9 µs a forwarded event. FAST
        # still zeroes the records on the pages that are written anyway
        self._db.execute("PRAGMA secure_delete=FAST")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA journal_size_limit=67108864")
        self._db.executescript(_SCHEMA)
        have = {r[1] for r in self._db.execute("PRAGMA table_info(spool)")}
        for name, kind in _COLUMNS.items():
            if name not in have:
                self._db.execute(f"ALTER TABLE spool ADD COLUMN {name} {kind}")
        # this file's identity: its seqs mean something only together with it (a new file
        # starts at 1 again), so the central store's progress marks are kept per spool id
        self._db.execute(
            "INSERT OR IGNORE INTO spool_meta (key, value) VALUES ('spool_id', ?)",
            (uuid.uuid4().hex,),
        )
        self.spool_id = str(
            self._db.execute("SELECT value FROM spool_meta WHERE key = 'spool_id'").fetchone()[0]
        )
        self.layouts = self._layouts()
        self._layout_id = self._this_layout()
        n, size = self._db.execute(
            "SELECT coalesce(sum(coalesce(n, 1)), 0), coalesce(sum(length(event)), 0) FROM spool"
        ).fetchone()
        self._events = int(n)
        self._bytes = int(size)
        self._full = False
        self._dropped_in_episode = 0
        self.dropped = 0
        metrics.SPOOL_CAPACITY.set(max_bytes)
        self._publish()

    def _layouts(self) -> dict[int, dict[str, tuple[str, ...]]]:
        rows = self._db.execute("SELECT key, value FROM spool_meta WHERE key LIKE 'layout:%'")
        return {
            int(k.split(":", 1)[1]): {t: tuple(c) for t, c in json.loads(v).items()}
            for k, v in rows
        }

    def _this_layout(self) -> int:
        """The id of this version's column lists, registered the first time it spools."""
        mine = spool_rows.layout()
        for n, cols in self.layouts.items():
            if cols == mine:
                return n
        n = max(self.layouts, default=0) + 1
        self._db.execute(
            "INSERT INTO spool_meta (key, value) VALUES (?, ?)",
            (f"layout:{n}", json.dumps(mine)),
        )
        self.layouts[n] = mine
        return n

    def _publish(self) -> None:
        metrics.SPOOL_EVENTS.set(self._events)
        metrics.SPOOL_BYTES.set(self._bytes)

    def append(self, host_id: str, events: Sequence[Event], *, as_rows: bool = False) -> int:
        """Commit events in order; returns how many were kept (the rest are counted drops).

        `as_rows`: spool COPY rows (the forwarder's bulk path) instead of JSON.
        """
        records = [self._record(host_id, e, as_rows) for e in events]
        with self._lock:
            room = self.max_bytes - self._bytes
            kept = 0
            size = 0
            for r in records:
                if size + len(r[1]) > room:
                    break
                kept += 1
                size += len(r[1])
            if kept:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    rows = _joined(records[:kept], self._last_seq_used())
                    self._db.executemany(
                        "INSERT INTO spool (seq, host_id, event, layout, at, n) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        rows,
                    )
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._events += kept
                self._bytes += sum(len(r[2]) for r in rows)
                self._publish()
            self._account(len(records) - kept)
        return kept

    def _last_seq_used(self) -> int:
        """The last position handed out (AUTOINCREMENT's own record of it, which outlives
        the rows): a record's seq is set here, as its last event's, so positions stay
        unique and ascending. Read in the append's transaction."""
        found = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'spool'").fetchone()
        return int(found[0]) if found else 0

    def _record(
        self, host_id: str, event: Event, as_rows: bool
    ) -> tuple[str, str, int | None, float]:
        at = event.time.timestamp()
        if as_rows:
            text = spool_rows.encode(host_id, event)
            if text is not None:
                return host_id, text, self._layout_id, at
        return host_id, codec.encode(event), None, at

    def _account(self, dropped: int) -> None:
        if dropped:
            metrics.DROPPED.labels("spool", "spool_full").inc(dropped)
            self.dropped += dropped
            self._dropped_in_episode += dropped
            if not self._full:
                self._full = True
                log.error(
                    "spool %s is full (%d bytes, database.spool_max_bytes=%d): dropping new "
                    "events until the central store takes some",
                    self.path,
                    self._bytes,
                    self.max_bytes,
                )
        elif self._full:
            log.warning(
                "spool %s has room again; %d events were dropped while it was full",
                self.path,
                self._dropped_in_episode,
            )
            self._full = False
            self._dropped_in_episode = 0

    def peek(self, limit: int, after: int = 0) -> list[SpooledEvent]:
        """The oldest records past seq `after`, in order, without removing them: as many
        as hold at most `limit` events (at least one record)."""
        return self.read(limit, after)[0]

    def read(self, limit: int, after: int = 0) -> tuple[list[SpooledEvent], bool]:
        """`peek`, and whether a record past them is spooled (they cannot grow)."""
        rows: list[tuple[int, str, str, int | None, float | None, int]] = []
        more = False
        held = 0
        with self._lock:
            cur = self._db.execute(f"{_RECORD} WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit))
            try:
                for row in cur:
                    held += row[5]
                    if held > limit and rows:
                        more = True
                        break
                    rows.append(row)
                    if held >= limit:
                        more = cur.fetchone() is not None
                        break
            finally:
                cur.close()
        # starmap calls the tuple's own __new__: 0.26 µs a record against 1.5 for _make
        return list(starmap(SpooledEvent, rows)), more

    def acknowledge(self, records: Sequence[SpooledEvent]) -> None:
        """Delete records the central store has committed (a run `peek` returned).

        Only the run's own seqs go, so the counters stay exact even if an earlier run's
        delete failed (that run stays spooled and is sent, and merged, again).
        """
        if not records:
            return
        seqs = list(map(_SEQ, records))
        size = sum(map(len, map(_TEXT, records)))  # C loops: this runs per batch of 5,000
        with self._lock:
            # not fsynced (the next append's commit is): a deletion lost in a power cut
            # only sends its run again, and the central store's mark merges it
            self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._db.execute(
                    "DELETE FROM spool WHERE seq BETWEEN ? AND ?", (min(seqs), max(seqs))
                )
                self._events -= events_in(records)
                self._bytes -= size
                if self._events == 0:  # an outage's backlog is gone: shrink the file again
                    self._compact()
            finally:
                self._db.execute("PRAGMA synchronous=FULL")
            self._publish()

    def _compact(self) -> None:
        """Give a drained spool's freed pages back, all but `keep_free` bytes of them."""
        free = int(self._db.execute("PRAGMA freelist_count").fetchone()[0])
        extra = free - self.keep_free // int(self._db.execute("PRAGMA page_size").fetchone()[0])
        if extra > 0:
            self._db.executescript(f"PRAGMA incremental_vacuum({extra});")  # steps to the end

    def stats(self) -> SpoolStats:
        with self._lock:
            return SpoolStats(self._events, self._bytes, self.max_bytes, self.dropped)

    def __len__(self) -> int:
        return self._events

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _joined(
    records: list[tuple[str, str, int | None, float]], seq: int
) -> list[tuple[int, str, str, int | None, float, int | None]]:
    """Consecutive rows records as one record each, a JSON one alone; seqs assigned
    from past `seq`: each record's is its last event's."""
    out: list[tuple[int, str, str, int | None, float, int | None]] = []
    i = 0
    while i < len(records):
        host_id, text, layout, at = records[i]
        j = i + 1
        if layout is not None:
            while j < len(records) and records[j][2] == layout:
                j += 1
        if j - i == 1:
            seq += 1
            out.append((seq, host_id, text, layout, at, None))
        else:
            run = records[i:j]
            seq += j - i
            text = spool_rows.SECTION.join([r[1] for r in run])
            out.append((seq, host_id, text, layout, min(r[3] for r in run), j - i))
        i = j
    return out


def read_stats(path: Path) -> SpoolStats | None:
    """Counts of a spool file without opening it for writing (for `egress-agent status`)."""
    if not path.exists():
        return None
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return None
    try:
        have = {r[1] for r in db.execute("PRAGMA table_info(spool)")}
        count = "coalesce(n, 1)" if "n" in have else "1"  # a spool from before `n`
        n, size = db.execute(
            f"SELECT coalesce(sum({count}), 0), coalesce(sum(length(event)), 0) FROM spool"
        ).fetchone()
    except sqlite3.Error:
        return None
    finally:
        db.close()
    return SpoolStats(int(n), int(size), 0, 0)
