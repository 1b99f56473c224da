"""A reconciling rescan's plan: what the file system holds against what the store knows.

After lost events (queue overflow, watch limit, a full pipeline) or on the inventory
schedule, a root is walked and each file's (inode, size, mtime_ns) compared with the
`file_state` table — the writer keeps it from every stored event — overlaid with the
sensor's memory of events emitted but perhaps not yet committed. The differences come
out as events with `origin=rescan`: a file the agent never saw or saw differently is
`written` (`created` for what is not a regular file), a file the agent knew and that is
gone is `deleted` (or `moved` with no destination, when its directory left the watched
area). `Comparison` holds both sides on disk and yields the difference; the store's side
comes from `agent.store.filestate`. No threads and no events sent here: the worker that
runs rescans and emits their steps is `rescan_worker.py`.
"""

from __future__ import annotations

import contextlib
import glob
import os
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from agent.events import FileAction
from agent.store.filestate import StatKey
from agent.store.rows import storable_text

UNSEEN: StatKey = (-1, -1, -1)  # a name whose content was not seen: never equal to a stat


@dataclass(frozen=True, slots=True)
class OnDisk:
    path: str  # the real path (surrogate escapes for non-UTF-8 bytes)
    key: StatKey
    regular: bool


@dataclass(frozen=True, slots=True)
class Step:
    action: FileAction
    path: str  # real path when on disk, else the stored text
    entry: OnDisk | None


def store_key(path: str) -> str:
    """The form a path takes in the store (non-UTF-8 bytes as `\\xNN`)."""
    return storable_text(path) or ""


def under(path: str, prefix: str) -> bool:
    p = prefix.rstrip("/")
    return path == prefix or path.startswith(p + "/")


class Comparison:
    """Both sides of a reconcile, kept in a private SQLite file rather than in memory.

    A root holding a million files made two dicts of a million paths each: 795 MiB at
    peak, and the agent's RSS stayed near 400 MiB afterwards because freed small objects
    do not go back to the system. Here each side streams into a table (batched inserts,
    a bounded page cache) and one join yields the difference, so the cost is a few MiB
    of memory and a temporary file in `directory` (the state directory under systemd,
    where the rest of the file system is read-only), deleted on `close`.

    `disk` rows are what a walk found (store key -> real path and stat key); `known`
    rows are what the store and the sensor's recent emits believe (store key -> stat
    key). `steps` yields, in path order, the events that make `known` equal `disk`.
    """

    _BATCH = 5000

    def __init__(self, directory: str | None = None, cache_kib: int = 4096) -> None:
        if directory is not None:
            os.makedirs(directory, exist_ok=True)
        fd, self._path = tempfile.mkstemp(prefix="rescan-", suffix=".db", dir=directory)
        os.close(fd)
        try:
            self._db = self._open(self._path, cache_kib)
        except BaseException:  # no object to close: the file would stay until a restart
            with contextlib.suppress(OSError):
                os.unlink(self._path)
            raise
        self._disk: list[tuple[str, bytes, int, int, int, bool]] = []
        self._known: list[tuple[str, int, int, int]] = []

    @staticmethod
    def _open(path: str, cache_kib: int) -> sqlite3.Connection:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            for pragma in (
                "journal_mode = OFF",
                "synchronous = OFF",
                "temp_store = FILE",
                f"cache_size = -{cache_kib}",
            ):
                db.execute(f"PRAGMA {pragma}")
            db.execute(
                "CREATE TABLE disk (k TEXT PRIMARY KEY, raw BLOB NOT NULL, ino INTEGER, "
                "size INTEGER, mtime INTEGER, regular INTEGER) WITHOUT ROWID"
            )
            db.execute(
                "CREATE TABLE known (k TEXT PRIMARY KEY, ino INTEGER, size INTEGER, "
                "mtime INTEGER) WITHOUT ROWID"
            )
            # one transaction for the comparison's whole life: a commit per statement
            # cost 12 s per million rows; nothing here needs to outlive the process
            db.execute("BEGIN")
        except BaseException:
            db.close()
            raise
        return db

    def __enter__(self) -> Comparison:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()
        with contextlib.suppress(OSError):
            os.unlink(self._path)

    def add_disk(self, entry: OnDisk) -> None:
        ino, size, mtime = entry.key
        raw = os.fsencode(entry.path)
        self._disk.append((store_key(entry.path), raw, _i64(ino), size, mtime, entry.regular))
        if len(self._disk) >= self._BATCH:
            self._flush()

    def add_known(self, key: str, state: StatKey) -> None:
        self._known.append((key, _i64(state[0]), state[1], state[2]))
        if len(self._known) >= self._BATCH:
            self._flush()

    def overlay(self, key: str, state: StatKey | None, fresh: bool) -> None:
        """What the sensor emitted lately, not yet in the store for sure: `fresh` (reported
        while this rescan ran, so newer than the walk) drops the path from both sides;
        otherwise the store will hold `state` (None: the path is gone)."""
        self._flush()
        if fresh:
            self._db.execute("DELETE FROM disk WHERE k = ?", (key,))
        if fresh or state is None:
            self._db.execute("DELETE FROM known WHERE k = ?", (key,))
        else:
            row = (key, _i64(state[0]), state[1], state[2])
            self._db.execute("INSERT OR REPLACE INTO known VALUES (?, ?, ?, ?)", row)

    def drop_known(self, keep: Callable[[str], bool]) -> None:
        """Forget the known paths `keep` refuses (excluded, on a departed mount)."""
        self._flush()
        gone = [(k,) for (k,) in self._db.execute("SELECT k FROM known ORDER BY k") if not keep(k)]
        self._db.executemany("DELETE FROM known WHERE k = ?", gone)

    def steps(self, gone_action: FileAction = FileAction.DELETED) -> Iterator[Step]:
        self._flush()
        changed = self._db.execute(
            "SELECT d.raw, d.ino, d.size, d.mtime, d.regular, n.k IS NULL FROM disk d "
            "LEFT JOIN known n ON n.k = d.k "
            "WHERE n.k IS NULL OR n.ino != d.ino OR n.size != d.size OR n.mtime != d.mtime "
            "ORDER BY d.k"
        )
        for raw, ino, size, mtime, regular, new in changed:
            entry = OnDisk(os.fsdecode(raw), (_u64(ino), size, mtime), bool(regular))
            action = FileAction.CREATED if new and not regular else FileAction.WRITTEN
            yield Step(action, entry.path, entry)
        gone = self._db.execute(
            "SELECT k FROM known n WHERE NOT EXISTS (SELECT 1 FROM disk d WHERE d.k = n.k) "
            "ORDER BY k"
        )
        for (k,) in gone:
            yield Step(gone_action, k, None)

    def _flush(self) -> None:
        # a store key is unique per path, so a repeat (a file met twice) replaces
        if self._disk:
            self._db.executemany("INSERT OR REPLACE INTO disk VALUES (?,?,?,?,?,?)", self._disk)
            self._disk = []
        if self._known:
            self._db.executemany("INSERT OR REPLACE INTO known VALUES (?,?,?,?)", self._known)
            self._known = []


def remove_leftovers(directory: str) -> int:
    """Delete comparison files a killed agent left in `directory`; returns how many.

    Safe even if another process still used one: an unlinked file stays readable
    through the descriptors already open on it."""
    n = 0
    # the comparison file and any SQLite side file of it (-journal, -wal) a crash left
    for path in glob.glob(os.path.join(glob.escape(directory), "rescan-*.db*")):
        with contextlib.suppress(OSError):
            os.unlink(path)
            n += 1
    return n


def _i64(n: int) -> int:
    """SQLite integers are signed 64-bit; some file systems hand out inodes above 2**63."""
    return n - (1 << 64) if n >= 1 << 63 else n


def _u64(n: int) -> int:
    return n + (1 << 64) if n < 0 else n
