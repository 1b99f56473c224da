"""The watch tree: inotify records in, normalised file changes out.

Holds the map from watch descriptor to directory and turns raw records into the
sensor's four actions: `created`, `written` (one per IN_CLOSE_WRITE), `moved` (paired
by cookie, also across roots: all roots share one inotify instance) and `deleted`.

New directories are watched first and scanned second: a directory filled before its
watch existed (`tar x`, `cp -r`, a burst) still yields a `written` for every file in it.
A file the scan finds is reported `scan_defer` seconds later unless its own close
arrives first — a file still being written when its directory was scanned is then
reported once, with its final size, not twice. Moves that cross the edge of the watched area become
`written` (moved in: a complete file arrived) or `moved` with no destination (moved
out). Overflow (`wd == -1`) and an exhausted watch limit are reported to `lost`; the
sensor counts them and runs a reconciling rescan.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from agent.events import FileAction, Origin
from agent.sensors.files import _inotify as I

log = logging.getLogger(__name__)

StatKey = tuple[int, int, int]  # inode, size, mtime_ns
MAX_DEFERRED = 10_000  # files found by scans that wait for their own close, at most
RECENT_DIR_MOVES = 64  # directory moves remembered for files gone before their walk
DIR_MOVE_MEMORY = 2.0  # seconds: the records queued before a walk are read by then


def stat_key(st: os.stat_result) -> StatKey:
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None


def join(directory: str, name: str) -> str:
    return directory + name if directory.endswith("/") else directory + "/" + name


def appeared(st: os.stat_result | None) -> FileAction:
    """The action for a file that is simply there: content for regular files, else created."""
    return FileAction.WRITTEN if st is not None and stat.S_ISREG(st.st_mode) else FileAction.CREATED


@dataclass(frozen=True, slots=True)
class Change:
    action: FileAction
    path: str
    dest_path: str | None
    st: os.stat_result | None
    origin: Origin = Origin.WATCH


@dataclass(slots=True)
class DirMove:
    """A directory moved inside the watched area, and the files known under its new name.

    A directory move is reported file by file from a walk of its new place, done when
    the move is read. A file deleted or moved away between the move and that walk is not
    there to be found, and its own record then names it under the new path only: without
    a `moved` first, its old path would stay in the store for ever. `known` holds what the
    walk reported and what appeared there since; any other file that leaves is one of those.
    """

    src: str
    dst: str
    known: set[str]
    at: float  # monotonic time of the walk

    def old_path(self, path: str) -> str | None:
        """`path`'s name before the move when it is under the moved directory and unknown."""
        if path in self.known or not path.startswith(self.dst + "/"):
            return None
        return self.src + path[len(self.dst) :]


class WatchTree:
    """Everything here runs under `lock`; the reader thread and rescans share it."""

    def __init__(
        self,
        ino: I.Inotify,
        excluded: Callable[[str], bool],
        out: Callable[[Change], None],
        lost: Callable[[str, str], None],
        dir_gone: Callable[[str], None],
        move_window: float = 0.1,
        scan_defer: float = 0.5,
    ) -> None:
        self.ino = ino
        self.excluded = excluded
        self.out = out
        self.lost = lost
        self.dir_gone = dir_gone
        self.move_window = move_window
        self.scan_defer = scan_defer
        self.lock = threading.RLock()
        self.wd_path: dict[int, str] = {}
        self.pending: dict[int, tuple[str, bool, float]] = {}  # cookie -> MOVED_FROM
        self.deferred: OrderedDict[str, tuple[Change, float]] = OrderedDict()
        self.unwatched: set[str] = set()  # directories left unwatched by the watch limit
        self.dir_moves: deque[DirMove] = deque(maxlen=RECENT_DIR_MOVES)
        self.denied = 0  # directories that could not be watched or listed
        self.generation = 0  # bumped whenever directories change path (for caches)

    # --- watches -----------------------------------------------------------------
    def watch_one(self, d: str) -> bool:
        try:
            wd = self.ino.add_watch(d)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                if d not in self.unwatched:  # count a directory once, not every retry
                    self.unwatched.add(d)
                    self.lost("watch_limit", d)
            elif e.errno in (errno.EACCES, errno.EPERM):
                self.denied += 1
                log.debug("cannot watch %r: %s", d, e.strerror)
            elif e.errno in (errno.ENOENT, errno.ENOTDIR):
                self.unwatched.discard(d)  # gone: nothing left to watch
            else:
                log.warning("cannot watch %r: %s", d, e)
            return False
        self.wd_path[wd] = d
        self.unwatched.discard(d)
        return True

    def walk(
        self,
        top: str,
        on_file: Callable[[str, os.stat_result], None] | None,
        watch: bool = True,
    ) -> None:
        """Watch `top` and every directory below it (watch first, then list), calling
        `on_file(path, lstat)` for each entry that is not a directory. Symlinks are never
        followed, so loops cannot recurse."""
        stack = [top]
        while stack:
            d = stack.pop()
            if self.excluded(d):
                continue
            with self.lock:
                if watch:
                    self.watch_one(d)
                try:
                    entries = list(os.scandir(d))
                except OSError as e:
                    if e.errno in (errno.EACCES, errno.EPERM):
                        self.denied += 1
                    continue
                for entry in entries:
                    try:
                        is_dir = entry.is_dir(follow_symlinks=False)
                    except OSError:
                        continue
                    if is_dir:
                        stack.append(entry.path)
                    elif on_file is not None and not self.excluded(entry.path):
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except OSError:
                            continue
                        on_file(entry.path, st)

    def add_tree(self, top: str, origin: Origin = Origin.WATCH, emit_files: bool = True) -> None:
        """Watch a new directory tree; report every file already in it as `written`."""
        if not emit_files:
            self.walk(top, None)
            return

        due = time.monotonic() + self.scan_defer

        def found(path: str, st: os.stat_result) -> None:
            ch = Change(appeared(st), path, None, st, origin)
            if stat.S_ISREG(st.st_mode):
                self.deferred[path] = (ch, due)
                if len(self.deferred) > MAX_DEFERRED:  # a huge tree: report the oldest now
                    self._release(self.deferred.popitem(last=False)[1][0])
            else:
                self.out(ch)

        self.walk(top, found)

    def drop_under(self, prefix: str) -> int:
        """Forget (and remove) every watch at or below `prefix`."""
        n = 0
        with self.lock:
            for wd, p in list(self.wd_path.items()):
                if p == prefix or p.startswith(prefix.rstrip("/") + "/"):
                    del self.wd_path[wd]
                    self.ino.rm_watch(wd)
                    n += 1
            self.generation += 1
        return n

    def _rename(self, old: str, new: str) -> None:
        for wd, p in list(self.wd_path.items()):
            if p == old or p.startswith(old + "/"):
                self.wd_path[wd] = new + p[len(old) :]
        self.generation += 1

    # --- records -> changes ---------------------------------------------------------
    def handle(self, events: list[I.RawEvent]) -> None:
        with self.lock:
            for ev in events:
                try:
                    self._one(ev)
                except Exception:  # a bug or an odd file must not end the reader
                    log.exception("files: cannot handle inotify record %r", ev)
                    self.lost("sensor_error", self.wd_path.get(ev.wd, ""))

    def _one(self, ev: I.RawEvent) -> None:
        m = ev.mask
        if ev.wd == -1:
            if m & I.IN_Q_OVERFLOW:
                self.lost("queue_overflow", "")
            return
        d = self.wd_path.get(ev.wd)
        if d is None:
            return
        if m & I.IN_IGNORED:
            del self.wd_path[ev.wd]
            return
        if not ev.name:  # DELETE_SELF / MOVE_SELF / UNMOUNT: the parent reports it
            return
        path = join(d, os.fsdecode(ev.name))
        is_dir = bool(m & I.IN_ISDIR)
        if path in self.deferred:
            if m & I.IN_CLOSE_WRITE:
                del self.deferred[path]  # its own close reports it, with the final size
            elif m & (I.IN_DELETE | I.IN_MOVED_FROM):
                self._release(self.deferred.pop(path)[0])  # it existed: report it first
        if self.dir_moves and not is_dir:
            self._settle_dir_move(path, leaving=bool(m & (I.IN_DELETE | I.IN_MOVED_FROM)))
        if m & I.IN_MOVED_FROM:
            self.pending[ev.cookie] = (path, is_dir, time.monotonic())
            return
        if m & I.IN_MOVED_TO:
            src = self.pending.pop(ev.cookie, None)
            self._moved(src[0] if src else None, path, is_dir)
            return
        if self.excluded(path):
            return
        if m & I.IN_CREATE:
            if is_dir:
                self.add_tree(path)
            else:
                self.out(Change(FileAction.CREATED, path, None, lstat(path)))
        elif m & I.IN_CLOSE_WRITE:
            self.out(Change(FileAction.WRITTEN, path, None, lstat(path)))
        elif m & I.IN_DELETE and not is_dir:
            self.out(Change(FileAction.DELETED, path, None, None))

    def _moved(self, src: str | None, dst: str, is_dir: bool) -> None:
        if src is not None and self.excluded(src):
            src = None
        if self.excluded(dst):
            if src is not None:
                self._moved_out(src, is_dir)
            return
        if src is None:
            self._moved_in(dst, is_dir)
            return
        if not is_dir:
            self.out(Change(FileAction.MOVED, src, dst, lstat(dst)))
            return
        self._release_under(src)
        self._rename(src, dst)
        prefix = len(dst)
        record = DirMove(src, dst, set(), 0.0)

        def moved(path: str, st: os.stat_result) -> None:
            record.known.add(path)
            self.out(Change(FileAction.MOVED, src + path[prefix:], path, st))

        self.walk(dst, moved, watch=True)
        record.at = time.monotonic()
        self.dir_moves.append(record)

    def _settle_dir_move(self, path: str, leaving: bool) -> None:
        """A file record under a recently moved directory: one that leaves and that its
        walk did not report moved first, from its old name (see `DirMove`)."""
        for record in reversed(self.dir_moves):
            if not path.startswith(record.dst + "/"):
                continue
            old = record.old_path(path)
            record.known.add(path)
            if leaving and old is not None and not self.excluded(path):
                self.out(Change(FileAction.MOVED, old, path, None))
            return

    def _moved_in(self, dst: str, is_dir: bool) -> None:
        if is_dir:
            self.add_tree(dst)
        else:
            st = lstat(dst)  # None when it has already moved on: still a file that arrived
            self.out(Change(appeared(st) if st else FileAction.WRITTEN, dst, None, st))

    def _moved_out(self, src: str, is_dir: bool) -> None:
        if is_dir:
            self._release_under(src)
            self.drop_under(src)
            self.dir_gone(src)
        else:
            self.out(Change(FileAction.MOVED, src, None, None))

    def flush(self, now: float | None = None) -> None:
        """Settle moves whose other half never came (moved out), and age the scan memory."""
        now = time.monotonic() if now is None else now
        with self.lock:
            while self.dir_moves and now - self.dir_moves[0].at >= DIR_MOVE_MEMORY:
                self.dir_moves.popleft()
            for cookie, (path, is_dir, t) in list(self.pending.items()):
                if now - t >= self.move_window:
                    del self.pending[cookie]
                    if not self.excluded(path):
                        self._moved_out(path, is_dir)
            deferred = self.deferred
            while deferred:
                path, (ch, due) = next(iter(deferred.items()))
                if due > now:
                    break
                del deferred[path]
                self._release(ch)

    def _release(self, ch: Change) -> None:
        """Report a file found by a scan, as it is now."""
        st = lstat(ch.path)
        self.out(Change(ch.action, ch.path, None, st or ch.st, ch.origin))

    def _release_under(self, prefix: str) -> None:
        head = prefix.rstrip("/") + "/"
        for path in [p for p in self.deferred if p.startswith(head)]:
            self._release(self.deferred.pop(path)[0])
