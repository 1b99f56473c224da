"""Noticing a SQLite store swapped, removed or broken under the running daemon.

SQLite connections hold the database file open by descriptor: when the file is renamed
away, deleted or replaced (a restore, a careless `mv`, a tool that rewrites the file),
the agent goes on committing to the old inode — every write "succeeds" and nothing lands
in the file everyone reads. `StoreWatch.check()` compares the path's identity (st_dev,
st_ino) with the one opened; the writer calls it before each batch (one `stat`), and the
maintenance job calls `check_integrity()` (`PRAGMA quick_check`) as well. When the file
changed, or is broken, the watch says so once in the log, counts it once in
`egress_agent_store_reopened_total{reason}`, and reopens: the engine's pool is disposed
(its connections were on the old file), a broken file is moved aside with its WAL, the
schema is brought to head on the new file and the host registered again. A reopen that
fails (a file that is not a database) is retried at the next check and logged only when
its reason changes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from agent import metrics
from agent.store.db import StoreError, register_host, upgrade

log = logging.getLogger(__name__)

# the reasons counted in egress_agent_store_reopened_total
REPLACED = "replaced"  # another file (or an empty one) now at the path
MISSING = "missing"  # nothing at the path: a new store is created there
INTEGRITY = "integrity"  # quick_check failed: the file is moved aside

RETRY = 5.0  # seconds between attempts to reopen a store that could not be reopened
QUICK_CHECK_ROWS = 20  # quick_check stops after this many problems: enough to log


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """What names one file on this host, whatever its path: device and inode."""

    dev: int
    ino: int


def identity_of(path: Path) -> FileIdentity | None:
    """The identity of the file at `path` now, or None when there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return FileIdentity(st.st_dev, st.st_ino)


def sqlite_path(engine: Engine) -> Path | None:
    """The database file of a SQLite engine; None for other dialects and :memory:."""
    db = engine.url.database
    if engine.dialect.name != "sqlite" or not db or db == ":memory:" or db.startswith("file:"):
        return None
    return Path(db)


def change_reason(opened: FileIdentity | None, now: FileIdentity | None) -> str | None:
    """Why the store must be reopened (REPLACED, MISSING), or None when it has not moved."""
    if now is None:
        return MISSING
    if opened is not None and now != opened:
        return REPLACED
    return None


def quick_check_problems(rows: list[tuple[object, ...]]) -> list[str]:
    """quick_check's answer as a list of problems, one line each: empty when it said "ok".

    SQLite puts several problems in one row separated by newlines; each becomes its own
    entry (a log line must never carry a raw newline)."""
    out = [
        line
        for r in rows
        if r
        for line in str(r[0]).splitlines()
        if line.strip() and not line.startswith("*** in database")  # a heading, no problem
    ]
    if out == ["ok"]:
        return []
    return [" ".join(p.split())[:200] for p in out] or ["quick_check returned nothing"]


def quick_check(path: Path, busy_seconds: float = 30.0) -> list[str]:
    """`PRAGMA quick_check` of the file at `path`, read from disk: the problems found.

    A connection of its own, read-only and with an empty page cache: a pooled one in WAL
    mode trusts its cache while the WAL index says nothing changed, and so found a store
    overwritten in place "ok". "file is not a database" and "malformed" are problems; an
    OperationalError ("database is locked") is raised: the job fails and runs again.
    """
    conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=busy_seconds)
    try:
        rows = conn.execute(f"PRAGMA quick_check({QUICK_CHECK_ROWS})").fetchall()
    except sqlite3.OperationalError:
        raise
    except sqlite3.DatabaseError as e:
        return [" ".join(str(e).split())[:200]]
    finally:
        conn.close()
    return quick_check_problems([tuple(r) for r in rows])


def quarantine(
    path: Path, suffixes: tuple[str, ...] = ("", "-wal", "-shm"), now: float | None = None
) -> Path:
    """Move a broken database and its -wal/-shm aside; returns the new name of the file."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now if now is not None else time.time()))
    target = path.with_name(f"{path.name}.broken-{stamp}")
    for suffix in suffixes:
        src = Path(str(path) + suffix)
        try:
            os.replace(src, Path(str(target) + suffix))
        except FileNotFoundError:
            pass
    return target


class StoreWatch:
    """The identity of the open SQLite store, checked cheaply and reopened when it moves.

    Thread-safe: the writer and the maintenance job both call in; one reopen at a time.
    """

    def __init__(
        self,
        engine: Engine,
        path: Path,
        host_id: str,
        hostname: str,
        auto_upgrade: bool = True,
        min_interval: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.path = path
        self.host_id = host_id
        self.hostname = hostname
        self.auto_upgrade = auto_upgrade
        self.min_interval = min_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._opened = identity_of(path)
        self._wal = identity_of(self.wal)  # the open store's WAL, while it is at the path
        self._last_check = clock()
        self._failing: str | None = None  # the reason last logged for a failed reopen
        self._retry_at = 0.0
        self.reopened = 0

    @property
    def wal(self) -> Path:
        return Path(f"{self.path}-wal")

    @classmethod
    def for_engine(
        cls, engine: Engine, host_id: str, hostname: str, auto_upgrade: bool = True
    ) -> StoreWatch | None:
        """A watch on a SQLite file store; None for other stores (nothing to watch)."""
        path = sqlite_path(engine)
        if path is None:
            return None
        return cls(engine, path, host_id, hostname, auto_upgrade)

    def check(self) -> bool:
        """Reopen the store if the file at its path is not the one opened; True if it did."""
        with self._lock:
            return self._check()

    @contextlib.contextmanager
    def writing(self) -> Iterator[bool]:
        """Check, then hold off any reopen while the caller writes one batch.

        A reopen from another thread (the maintenance job) in the middle of a commit
        would checkpoint and unlink the old WAL while the commit still appends to it:
        the batch would be in neither file. Yields whether a reopen just happened.
        """
        with self._lock:
            yield self._check()

    def _check(self) -> bool:
        now = self._clock()
        if self.min_interval and now - self._last_check < self.min_interval:
            return False
        self._last_check = now
        reason = change_reason(self._opened, identity_of(self.path))
        if self._failing is not None:  # a reopen failed: retried every RETRY seconds
            if now < self._retry_at:
                return False
            return self._reopen(reason or self._failing)
        if reason is None:
            self._wal = identity_of(self.wal)
            return False
        return self._reopen(reason)

    def check_integrity(self) -> list[str]:
        """`PRAGMA quick_check`; a broken store is moved aside and a new one opened.

        Returns the problems found (empty when the store is sound).
        """
        self.check()
        problems = quick_check(self.path)
        if not problems:
            return []
        with self._lock:
            self.engine.dispose()
            moved = quarantine(self.path)
            log.error(
                "store %s failed its integrity check (%s); moved it to %s and opening a new one",
                self.path,
                "; ".join(problems[:3]),
                moved.name,
            )
            self._reopen(INTEGRITY, logged=True)
        return problems

    def _reopen(self, reason: str, logged: bool = False) -> bool:
        if self._failing is None:  # noticed now (a retry was said and counted already)
            metrics.STORE_REOPENED.labels(reason).inc()
            if not logged:
                log.warning(
                    "store %s was %s under the running agent; reopening it",
                    self.path,
                    "removed" if reason == MISSING else "replaced by another file",
                )
        if reason in (REPLACED, MISSING):
            self._settle_old_wal()
        self.engine.dispose()  # its connections were on the old file
        try:
            if self.auto_upgrade:
                upgrade(self.engine)
            register_host(self.engine, self.host_id, self.hostname)
        except (StoreError, SQLAlchemyError) as e:
            if self._failing != reason:
                log.error("cannot reopen the store at %s: %s; will retry", self.path, e)
            self._failing = reason
            self._retry_at = self._clock() + RETRY
            self.engine.dispose()
            return False
        self._opened = identity_of(self.path)
        self._wal = identity_of(self.wal)
        if self._failing is not None:
            log.info("store %s reopened", self.path)
        self._failing = None
        self.reopened += 1
        return True

    def _settle_old_wal(self) -> None:
        """Fold the old store's WAL into the old file and take its -wal/-shm off the path.

        SQLite names the WAL and its index after the path: a store renamed away leaves
        `<path>-wal` and `<path>-shm` behind, which SQLite will not checkpoint or remove
        once the file has moved — and which connections to the new file would then share
        with the old connections still open (the new store's frames checkpointed into
        the old file: both broken). An idle pooled connection still has the old file
        open: it checkpoints the WAL into the old file, then the pair is unlinked (open
        descriptors keep them for whoever still holds one). When the checkpoint cannot
        run, the old WAL is moved aside under a name that says so, not lost.
        """
        if self._wal is None or identity_of(self.wal) != self._wal:
            return  # no WAL of the old store at the path (the new file may bring its own)
        if self.engine.pool.checkedin() > 0:  # type: ignore[attr-defined]
            try:
                with self.engine.connect() as conn:  # the pool hands back an idle one
                    conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            except SQLAlchemyError as e:
                log.warning("cannot checkpoint the old store's WAL: %s", e)
        try:
            emptied = self.wal.stat().st_size == 0
        except FileNotFoundError:
            return
        if emptied:
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{self.path}{suffix}")
            return
        orphan = quarantine(self.path, suffixes=("-wal", "-shm"))
        log.warning(
            "the old store's last commits stay in %s-wal (moved aside; it belongs beside the "
            "old database file)",
            orphan,
        )
