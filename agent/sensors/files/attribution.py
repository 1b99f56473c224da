"""Who wrote or read a file: the fanotify side of the file sensor, in one thread.

`Attribution` owns the fanotify group (see `fanotify.py`). It remembers, for a couple
of seconds, which process last wrote, made, removed or renamed each path under a watched
root, so the sensor can attach that `ProcessInfo` to its own event (a best-effort join
by action and path: the two kernel interfaces deliver separately). For the "paths of interest" that
later stages name with `watch_reads()`, it reports each open as a `read` through
`on_read`, at most once per process and path every `read_dedup` seconds. Without the
privilege (or with `files.fanotify: off`) nothing runs and `reason` says why.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from agent import metrics
from agent.events import ProcessInfo
from agent.sensors.files.fanotify import (
    FAN_CLOSE_WRITE,
    FAN_CREATE,
    FAN_DELETE,
    FAN_MOVED_FROM,
    FAN_MOVED_TO,
    FAN_OPEN,
    FAN_Q_OVERFLOW,
    FanEvent,
    Fanotify,
)
from agent.sensors.files.process import ProcessCache
from agent.wakepipe import close_pipe, wake_then_join

log = logging.getLogger(__name__)

MAX_INTERESTING = 100_000
GATHER = 0.02  # seconds records gather after the first before one read takes them all
KINDS = (
    (FAN_CLOSE_WRITE, "written"),
    (FAN_CREATE, "created"),
    (FAN_DELETE, "deleted"),
    (FAN_MOVED_TO, "moved"),  # keyed by the new path
    (FAN_MOVED_FROM, "moved_out"),  # keyed by the old path
)
CAP_DAC_READ_SEARCH = 2
CAP_SYS_ADMIN = 21


def missing_capabilities(status_path: str = "/proc/self/status") -> list[str]:
    """The capabilities attribution needs that this process lacks (effective set)."""
    try:
        with open(status_path, "rb") as f:
            for line in f:
                if line.startswith(b"CapEff:"):
                    eff = int(line.split()[1], 16)
                    break
            else:
                return []
    except (OSError, ValueError, IndexError):
        return []
    need = {"CAP_SYS_ADMIN": CAP_SYS_ADMIN, "CAP_DAC_READ_SEARCH": CAP_DAC_READ_SEARCH}
    return [name for name, bit in need.items() if not eff & (1 << bit)]


class Attribution:
    def __init__(
        self,
        mode: str,
        under_root: Callable[[str], bool],
        generation: Callable[[], int],
        on_read: Callable[[str, ProcessInfo], None],
        join_window: float = 2.0,
        read_dedup: float = 2.0,
    ) -> None:
        self.mode = mode
        self.under_root = under_root
        self.generation = generation
        self.on_read = on_read
        self.join_window = join_window
        self.read_dedup = read_dedup
        self.fan: Fanotify | None = None
        self.reason = "off: files.fanotify is off" if mode == "off" else "not started"
        self.procs = ProcessCache()
        self._lock = threading.Lock()
        # (kind, path) -> who did it, when; kinds are those of `KINDS`
        self._writers: OrderedDict[tuple[str, str], tuple[ProcessInfo, float]] = OrderedDict()
        self._interesting: set[str] = set()
        self._last_read: dict[tuple[int, str], float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake_r = self._wake_w = -1  # stop() writes here to end the thread's wait
        self._own_pid = os.getpid()
        self.joined = 0
        self.reads = 0

    @property
    def active(self) -> bool:
        return self.fan is not None

    def start(self) -> None:
        if self.mode == "off":
            return
        missing = missing_capabilities()
        if missing:
            # unprivileged fanotify exists, but without filesystem marks and file handles
            need = f"fanotify needs {' and '.join(missing)}"
            self.reason = f"off: {need}"
            if self.mode == "on":
                raise OSError(errno.EPERM, need)
            log.info("process attribution %s", self.reason)
            return
        try:
            self.fan = Fanotify()
        except OSError as e:
            why = "needs CAP_SYS_ADMIN" if e.errno in (errno.EPERM, errno.EACCES) else str(e)
            self.reason = f"off: fanotify unavailable ({why})"
            if self.mode == "on":
                raise
            log.info("process attribution off: %s", self.reason)
            return
        self.reason = "fanotify"
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._run, name="files-fanotify")
        self._thread.start()

    def mark_filesystem(self, path: str) -> None:
        if self.fan is None:
            return
        try:
            self.fan.mark_filesystem(path)
        except OSError as e:
            # e.g. a file system without file handles: writes there stay unattributed
            log.info("no process attribution for %s: %s", path, e.strerror or e)

    def forget_filesystem(self, path: str) -> None:
        if self.fan is not None:
            with self._lock:
                self.fan.forget_filesystem(path)

    # --- paths of interest -----------------------------------------------------------
    @property
    def interesting_paths(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._interesting)

    def watch_reads(self, path: str) -> bool:
        """Report opens of `path` as `read` events (needs fanotify; True if marked)."""
        with self._lock:
            if path not in self._interesting and len(self._interesting) >= MAX_INTERESTING:
                return False
            self._interesting.add(path)
            return self.fan.mark_reads(path) if self.fan is not None else False

    def unwatch_reads(self, path: str) -> None:
        with self._lock:
            if path in self._interesting:
                self._interesting.discard(path)
                if self.fan is not None:
                    self.fan.mark_reads(path, add=False)

    def path_changed(self, old: str | None, new: str) -> None:
        """A path of interest got new content or a new name: mark its (new) inode."""
        with self._lock:
            if old is not None and old in self._interesting:
                self._interesting.discard(old)
                self._interesting.add(new)
            if new in self._interesting and self.fan is not None:
                self.fan.mark_reads(new)

    # --- the join ------------------------------------------------------------------
    def process_of(self, kind: str, path: str) -> ProcessInfo | None:
        """Who did `kind` (written, created, deleted, moved, moved_out) to `path` lately."""
        with self._lock:
            hit = self._writers.pop((kind, path), None)
        if hit is None or time.monotonic() - hit[1] > self.join_window:
            return None
        self.joined += 1
        return hit[0]

    # --- the reader thread -----------------------------------------------------------
    def _run(self) -> None:
        fan = self.fan
        assert fan is not None
        poller = select.poll()
        poller.register(fan.fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self._stop.is_set():
            poller.poll()  # until the kernel has records or stop() writes the wake pipe
            if self._stop.is_set():
                return
            # let records gather: writes anywhere on a marked file system come here, and
            # on a busy host one read a GATHER is far cheaper than one per record; the
            # sensor holds its own events READ_HOLD (0.15 s) for the join, so pids still come
            self._stop.wait(GATHER)
            for ev in fan.read():
                try:
                    self._one(fan, ev)
                except Exception:  # one odd record must not end attribution
                    log.exception("fanotify record failed")

    def _one(self, fan: Fanotify, ev: FanEvent) -> None:
        mask, pid = ev.mask, ev.pid
        if mask & FAN_Q_OVERFLOW:
            metrics.FILE_LOST.labels("fanotify_overflow").inc()
            return
        if pid == self._own_pid:
            return
        with self._lock:
            d = fan.resolve_dir(ev, self.generation())
        if d is None:
            return
        path = os.path.join(d, os.fsdecode(ev.name))
        now = time.monotonic()
        kinds = [kind for bit, kind in KINDS if mask & bit]
        if kinds and self.under_root(path):
            info = self.procs.get(pid)
            with self._lock:
                for kind in kinds:
                    self._writers[(kind, path)] = (info, now)
                    self._writers.move_to_end((kind, path))
                while len(self._writers) > 65536:
                    self._writers.popitem(last=False)
        if mask & FAN_OPEN:
            with self._lock:
                if path not in self._interesting:
                    return
                last = self._last_read.get((pid, path))
                if last is not None and now - last < self.read_dedup:
                    return
                self._last_read[(pid, path)] = now
                if len(self._last_read) > 65536:
                    self._last_read.clear()
            self.reads += 1
            self.on_read(path, self.procs.get(pid))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            wake_then_join(self._thread, self._wake_w)
            self._thread = None
            close_pipe(self._wake_r, self._wake_w)
        if self.fan is not None:
            self.fan.close()
            self.fan = None
