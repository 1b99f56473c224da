"""Content fingerprints: streaming SHA-256 and a persistent cache so nothing is hashed twice.

`sha256_fd` hashes an open file with OpenSSL's SHA-256 through `hashlib`
(`agent.fingerprint`, which the CLI can import before everything else) and counts the
bytes in the metrics. `HashCache` is a small SQLite file
(`classify.hash_cache`, default state_dir/hashcache.db) with two tables: file identity
(device, inode, size, mtime_ns, ctime_ns) → sha256, and sha256 → the classification
result. An unchanged file is therefore never re-read, even across restarts. The ctime is
in the key because the mtime is not evidence: a rewrite in place that keeps the size and
puts the mtime back (`touch -d`, utimensat) would otherwise be recorded with the old
content's hash. The price is that a rename, chmod or chown (which also move the ctime)
re-reads the bytes once; the result cache by hash still spares the classification. The
cache holds hashes and tags only, never content.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial
from pathlib import Path
from typing import Any

from agent import fingerprint, metrics
from agent.fingerprint import BIG_BUF_SIZE, BUF_SIZE, FileChanged

__all__ = ["BIG_BUF_SIZE", "BUF_SIZE", "FileChanged", "HashCache", "claimed_sha256", "sha256_fd"]

log = logging.getLogger(__name__)


def _counted(hashed: Callable[[], tuple[str, int]]) -> str:
    """The digest `hashed()` returns, its bytes counted in
    `egress_agent_hashed_bytes_total` (also when the file changed under it)."""
    try:
        sha, read = hashed()
    except FileChanged as e:
        metrics.HASHED_BYTES.inc(e.read)
        raise
    metrics.HASHED_BYTES.inc(read)
    return sha


def sha256_fd(
    fd: int,
    expected_size: int | None = None,
    buf_size: int = BUF_SIZE,
    stop: threading.Event | None = None,
) -> str:
    """SHA-256 of the file behind `fd` (see `agent.fingerprint.sha256_fd`), counted.
    Raises FileChanged when the size is not the one expected, and
    `agent.fingerprint.Abandoned` soon after `stop` is set (the agent is stopping)."""
    return _counted(partial(fingerprint.sha256_fd, fd, expected_size, buf_size, stop))


def claimed_sha256(future: Future[tuple[str, int]]) -> str:
    """The result of a hash started ahead (`agent.fingerprint.HashAhead`), counted."""
    return _counted(future.result)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    device INTEGER NOT NULL, inode INTEGER NOT NULL, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL, seen REAL NOT NULL,
    ctime_ns INTEGER NOT NULL DEFAULT -1,
    PRIMARY KEY (device, inode)
);
CREATE TABLE IF NOT EXISTS results (
    sha256 TEXT NOT NULL, version TEXT NOT NULL, categories TEXT NOT NULL,
    result TEXT NOT NULL, PRIMARY KEY (sha256, version, categories)
);
"""
_INSERT_FILE = (
    "INSERT OR REPLACE INTO files (device, inode, size, mtime_ns, sha256, seen, ctime_ns)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def _add_ctime(db: sqlite3.Connection) -> None:
    """A cache written before the ctime was in the key gets the column, its rows -1: no
    file's ctime is -1, so each of them is hashed once more and then known again."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(files)")}
    if "ctime_ns" not in columns:
        try:
            db.execute("ALTER TABLE files ADD COLUMN ctime_ns INTEGER NOT NULL DEFAULT -1")
        except sqlite3.OperationalError as e:  # another process added it first
            if "duplicate column" not in str(e):
                raise


# json.dumps(doc, ensure_ascii=False, default=str), built once: dumps makes a new encoder
# on every call that passes options (a few µs of each small file's result)
_encode_result = json.JSONEncoder(ensure_ascii=False, default=str).encode
# the hit and miss counters, looked up once (a `labels()` call takes a lock and a tuple)
_HIT = metrics.HASH_CACHE.labels("hit")
_MISS = metrics.HASH_CACHE.labels("miss")


class HashCache:
    """(device, inode, size, mtime_ns, ctime_ns) → sha256, and sha256 → result, in SQLite.

    Thread-safe (one connection behind a lock; statements take microseconds). Writes
    are committed in small batches: losing the last second of cache entries in a crash
    only costs a re-hash.

    `buffered=True` (scan's worker processes, several writers on one file) keeps the
    writes in memory, where lookups see them, until `flush()` writes them in one
    `BEGIN IMMEDIATE` transaction: a deferred transaction held open across reads fails
    at once (SQLITE_BUSY_SNAPSHOT) when another process committed meanwhile, and one
    statement per row costs more than the small file it describes. Its reads go through
    a second connection that holds one read transaction from the start: they see the
    cache as it was before the scan (and this process's own writes, from memory), never
    what another worker wrote meanwhile, so what a worker concludes does not depend on
    which worker happened to be faster.
    """

    def __init__(
        self, path: Path | str | None, commit_every: int = 256, buffered: bool = False
    ) -> None:
        self.path = str(path) if path is not None else ":memory:"
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        _add_ctime(self._db)
        self._pending = 0
        self._commit_every = commit_every
        self._timer: threading.Timer | None = None
        self._closed = False
        self._buffered = buffered
        self._reader = self._db
        # which tables the snapshot has no row in: no query can find one there (a first scan)
        self._empty = (False, False)
        if buffered and path is not None:
            self._reader = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._reader.execute("BEGIN")  # the snapshot starts with the first read
            files, results = self._reader.execute(
                "SELECT NOT EXISTS (SELECT 1 FROM files), NOT EXISTS (SELECT 1 FROM results)"
            ).fetchone()
            self._empty = (files == 1, results == 1)
        self._files: dict[tuple[int, int], tuple[int, int, int, int, str, float, int]] = {}
        self._results: dict[tuple[str, str, str], str] = {}

    # --- file identity → hash ------------------------------------------------------
    def lookup(
        self, device: int, inode: int, size: int, mtime_ns: int, ctime_ns: int
    ) -> str | None:
        held = self._files.get((device, inode)) if self._buffered else None
        if held is not None and (held[2], held[3], held[6]) == (size, mtime_ns, ctime_ns):
            _HIT.inc()
            return held[4]
        row = (
            None
            if self._empty[0]
            else self._read(
                "SELECT sha256 FROM files WHERE device=? AND inode=? AND size=? AND mtime_ns=?"
                " AND ctime_ns=?",
                (device, inode, size, mtime_ns, ctime_ns),
            )
        )
        (_HIT if row else _MISS).inc()
        return str(row[0]) if row else None

    def store(
        self, device: int, inode: int, size: int, mtime_ns: int, ctime_ns: int, sha256: str
    ) -> None:
        row = (device, inode, size, mtime_ns, sha256, time.time(), ctime_ns)
        if self._buffered:
            with self._lock:
                self._files[(device, inode)] = row
            self._held()
            return
        self._write(_INSERT_FILE, row)

    # --- hash → classification result -----------------------------------------------
    def result(self, sha256: str, version: str, categories: str) -> dict[str, Any] | None:
        held = self._results.get((sha256, version, categories)) if self._buffered else None
        if held is not None:
            row: Any = (held,)
        elif self._empty[1]:
            row = None
        else:
            row = self._read(
                "SELECT result FROM results WHERE sha256=? AND version=? AND categories=?",
                (sha256, version, categories),
            )
        if row is None:
            return None
        try:
            doc = json.loads(row[0])
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None

    def store_result(
        self, sha256: str, version: str, categories: str, result: dict[str, Any]
    ) -> None:
        text = _encode_result(result)
        if self._buffered:
            with self._lock:
                self._results[(sha256, version, categories)] = text
            self._held()
            return
        self._write(
            "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?)",
            (sha256, version, categories, text),
        )

    # --- housekeeping ---------------------------------------------------------------
    def prune(self, older_than_days: float = 90.0) -> int:
        """Forget identities not stored for a while, and results no identity points to.

        Keeps the file bounded on hosts where files come and go; the cost of forgetting
        an unchanged file is one re-hash.
        """
        cutoff = time.time() - older_than_days * 86400
        with self._lock:
            if self._closed:
                return 0
            try:
                self._commit()
                with self._db:
                    n = self._db.execute("DELETE FROM files WHERE seen < ?", (cutoff,)).rowcount
                    self._db.execute(
                        "DELETE FROM results WHERE sha256 NOT IN (SELECT sha256 FROM files)"
                    )
            except sqlite3.Error as e:
                log.warning("hash cache %s: prune failed: %s", self.path, e)
                return 0
        return int(n)

    def _read(self, sql: str, args: tuple[Any, ...]) -> Any:
        """One row, or None — also when the cache is unusable (it is only a cache)."""
        with self._lock:
            if self._closed:
                return None
            try:
                return self._reader.execute(sql, args).fetchone()
            except sqlite3.Error as e:
                metrics.CLASSIFY_SKIPPED.labels("hash_cache_error").inc()
                log.warning("hash cache %s: read failed: %s", self.path, e)
                return None

    def _write(self, sql: str, args: tuple[Any, ...]) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                self._begin()
                self._db.execute(sql, args)
            except sqlite3.Error as e:  # busy past the timeout, disk full: lose the entry only
                metrics.CLASSIFY_SKIPPED.labels("hash_cache_error").inc()
                log.warning("hash cache %s: write failed: %s", self.path, e)
                return
            self._wrote()

    def _begin(self) -> None:
        # called with the lock held, before a write: batch writes in one transaction
        if not self._db.in_transaction:
            self._db.execute("BEGIN")

    def _wrote(self) -> None:
        self._pending += 1
        if self._pending >= self._commit_every:
            self._commit()
        elif self._timer is None:
            # never hold the write lock for long: another process may share the file
            self._timer = threading.Timer(1.0, self.flush)
            self._timer.start()

    def _commit(self) -> None:
        try:
            if self._db.in_transaction:
                self._db.execute("COMMIT")
        except sqlite3.OperationalError as e:
            log.warning("hash cache %s: commit failed: %s", self.path, e)
            self._db.rollback()
        self._pending = 0

    def _held(self) -> None:
        if len(self._files) + len(self._results) >= 4 * self._commit_every:
            self.flush()

    def _write_held(self) -> None:
        """The buffered writes in one transaction (lock held); lost, with a warning, when
        the file stays busy past the timeout or the disk is full (only a cache)."""
        files, self._files = list(self._files.values()), {}
        results = [(*k, v) for k, v in self._results.items()]
        self._results = {}
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(_INSERT_FILE, files)
                self._db.executemany("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?)", results)
                self._db.execute("COMMIT")
            except sqlite3.Error:
                self._db.rollback()
                raise
        except sqlite3.Error as e:
            metrics.CLASSIFY_SKIPPED.labels("hash_cache_error").inc()
            log.warning("hash cache %s: write of %d entries failed: %s", self.path, len(files), e)

    def flush(self) -> None:
        with self._lock:
            if (self._files or self._results) and not self._closed:
                self._write_held()
            timer, self._timer = self._timer, None
            if timer is not None and timer is not threading.current_thread():
                timer.cancel()  # a pending timer would keep the process alive for a second
            if self._pending and not self._closed:
                self._commit()

    def close(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if not self._closed:
                if self._files or self._results:
                    self._write_held()
                self._commit()
                self._db.close()
                if self._reader is not self._db:
                    self._reader.close()
            self._closed = True
