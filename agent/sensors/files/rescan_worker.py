"""The file sensor's rescan worker: dirty roots in, reconciling rescans out.

Lost-event conditions, refused emits, new mounts and directories that left the watched
area mark paths dirty here; one thread waits until the burst has been quiet for half a
second (at most 5 s), then reconciles each dirty path with the store, sending the steps
that `rescan_plan.py` works out. It also keeps `Recent`, the sensor's memory of what it
emitted in the last two minutes — what the store will believe once the pipeline has
delivered it — so a rescan does not report again what is merely still on its way.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

from agent import metrics
from agent.backoff import Backoff
from agent.events import FileAction, Origin
from agent.sensors.files import rescan_plan as R
from agent.sensors.files.tree import Change, stat_key
from agent.store import filestate

if TYPE_CHECKING:
    from agent.sensors.files.sensor import FileSensor

log = logging.getLogger(__name__)

RECENT_TTL = 120.0  # seconds an emitted event is assumed to need to reach the store
RECENT_MAX = 500_000  # bounds memory; past it a rescan may report a file twice


class Recent:
    """store key -> (state the store will hold, None = gone; when it was emitted)."""

    def __init__(self) -> None:
        self._d: OrderedDict[str, tuple[R.StatKey | None, float]] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, ch: Change, content: bool) -> None:
        now = time.monotonic()
        entries: list[tuple[str, R.StatKey | None]] = []
        if ch.action in (FileAction.DELETED, FileAction.MOVED):
            entries.append((ch.path, None))
        if ch.action != FileAction.DELETED and not (
            ch.action == FileAction.MOVED and ch.dest_path is None
        ):
            current = ch.dest_path if ch.dest_path is not None else ch.path
            seen = stat_key(ch.st) if content and ch.st is not None else R.UNSEEN
            entries.append((current, seen))
        with self._lock:
            for path, state in entries:
                k = R.store_key(path)
                self._d[k] = (state, now)
                self._d.move_to_end(k)

    def prune(self) -> None:
        cutoff = time.monotonic() - RECENT_TTL
        with self._lock:
            d = self._d
            while d:
                _, (_, t) = next(iter(d.items()))
                if t > cutoff and len(d) < RECENT_MAX:
                    break
                d.popitem(last=False)

    def next_expiry(self) -> float | None:
        """When (monotonic) the oldest entry is due to be pruned; None when empty."""
        with self._lock:
            if not self._d:
                return None
            return next(iter(self._d.values()))[1] + RECENT_TTL

    def under(self, prefix: str) -> list[tuple[str, tuple[R.StatKey | None, float]]]:
        with self._lock:
            return [(k, v) for k, v in self._d.items() if R.under(k, prefix)]


class Rescans:
    def __init__(self, sensor: FileSensor) -> None:
        self.sensor = sensor
        self.recent = Recent()
        self.count = 0
        self.last_full: float | None = None  # monotonic time of the last whole-root rescan
        self.idle = threading.Event()  # set by the reader when it has nothing left to report
        self._dirty: set[str] = set()
        self._gone: list[str] = []
        self._reason = "dirty"
        self._lock = threading.Lock()
        self._dirty_at = 0.0
        self._wake = threading.Event()
        self._serial = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._backoff = Backoff(initial=1.0, maximum=60.0)
        self._check_interval = 60.0  # seconds between looks for what is not watched

    @property
    def check_interval(self) -> float:
        return self._check_interval

    @check_interval.setter
    def check_interval(self, seconds: float) -> None:
        self._check_interval = seconds
        self._wake.set()  # the thread may be asleep until the old interval's end

    @property
    def dirty(self) -> list[str]:
        with self._lock:
            return sorted(self._dirty)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="files-rescans")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def mark_dirty(self, paths: list[str], reason: str) -> None:
        with self._lock:
            self._dirty.update(paths)
            self._dirty_at = time.monotonic()
            self._reason = reason
        self._wake.set()

    def gone_dir(self, path: str) -> None:
        """A watched directory moved out of the roots: its known files moved away."""
        with self._lock:
            self._gone.append(path)
            self._dirty_at = time.monotonic()
        self._wake.set()

    def _run(self) -> None:
        s = self.sensor
        last_check = time.monotonic()
        while not self._stop.is_set():
            # asleep until marked dirty, stopped, or the next look at what is not watched
            due = last_check + self.check_interval - time.monotonic()
            if not self._wake.wait(max(due, 0.0)):
                last_check = time.monotonic()
                self._check()
                continue
            first = time.monotonic()
            while not self._stop.is_set():
                now = time.monotonic()
                if now - self._dirty_at >= 0.5 or now - first > 5:
                    break
                self._stop.wait(0.1)
            if self._stop.is_set():
                return
            with self._lock:
                self._wake.clear()
                dirty, self._dirty = self._dirty, set()
                gone, self._gone = self._gone, []
                reason = self._reason
            refused = False
            for path in gone:
                ok = self._safely(path, "moved_out", gone_action=FileAction.MOVED, walk=False)
                refused |= not ok
            for path in sorted(dirty):
                if s.under_root(path) and not self._stop.is_set():
                    refused |= not self._safely(path, reason)
            if refused:
                # the pipeline or the store is not keeping up: back off before retrying
                self._stop.wait(self._backoff.next())
            else:
                self._backoff.reset()

    def _safely(self, path: str, reason: str, **kw: object) -> bool:
        """Reconcile; False (and the path dirty again) when it could not finish."""
        try:
            n = self.reconcile(path, reason, **kw)  # type: ignore[arg-type]
        except Exception:  # e.g. the store is unreachable: try again later
            log.exception("files: rescan of %s failed; it will be retried", path)
            n = -1
        if n < 0:
            if kw.get("gone_action") == FileAction.MOVED:
                self.gone_dir(path)
            else:
                self.mark_dirty([path], reason)
            return False
        return True

    def _check(self) -> None:
        """Retry what is not watched: directories the watch limit refused, and roots
        that were deleted (and perhaps made again) — each with a rescan of its root."""
        s = self.sensor
        if s.tree is None:
            return
        unwatched = list(s.tree.unwatched)
        if unwatched:
            self.mark_dirty([r for d in unwatched if (r := s.root_of(d))], "watch_limit")
        with s.tree.lock:
            watched = set(s.tree.wd_path.values())
        lost = [r for r in s.roots if r not in watched and os.path.isdir(r)]
        if lost:
            log.warning("files: watched root(s) %s were replaced; watching them again", lost)
            self.mark_dirty(lost, "root_lost")

    def reconcile(
        self,
        prefix: str,
        reason: str,
        gone_action: FileAction = FileAction.DELETED,
        walk: bool = True,
    ) -> int:
        """Compare `prefix` on disk with the store and emit the difference (origin=rescan).

        Returns the events emitted, or -1 when `emit` refused one (the rest is left for
        the retry, which finds it again)."""
        s = self.sensor
        if s.engine is None or s.tree is None:
            return 0
        with self._serial, R.Comparison(s.scratch_dir) as cmp:
            started = time.monotonic()

            def found(path: str, st: os.stat_result) -> None:
                cmp.add_disk(R.OnDisk(path, stat_key(st), stat.S_ISREG(st.st_mode)))

            if walk:
                s.tree.walk(prefix, found)
            # wait until the watch has reported everything the kernel queued during the
            # walk: what it reports from now on is newer than the walk and wins over it
            self.idle.clear()
            s.poke()  # the reader sleeps while nothing is due: make it look now
            deadline = time.monotonic() + 10.0
            while not self.idle.wait(0.05) and time.monotonic() < deadline:
                if self._stop.is_set():
                    return 0
            for k, state in filestate.known_under(s.engine, s.host_id, R.store_key(prefix)):
                cmp.add_known(k, R.UNSEEN if state is None else state)
            for k, (state, t) in self.recent.under(R.store_key(prefix)):
                cmp.overlay(k, state, fresh=t >= started)
            cmp.drop_known(lambda k: not (s.excluded(k) or s.mounts.departed(k)))
            n = 0
            for step in cmp.steps(gone_action):
                if self._stop.is_set():
                    break
                st = None
                if step.entry is not None:
                    try:
                        st = os.lstat(step.entry.path)
                    except OSError:
                        continue
                if not s.send(Change(step.action, step.path, None, st, Origin.RESCAN), None):
                    n = -1
                    break
                metrics.FILE_RESCAN_FOUND.labels(str(step.action)).inc()
                n += 1
            metrics.FILE_RESCANS.labels(reason).inc()
            self.count += 1
            if walk and prefix in s.roots:
                self.last_full = time.monotonic()
            if n < 0:
                log.warning("files: rescan of %s (%s) stopped: events refused", prefix, reason)
            else:
                log.info("files: rescan of %s (%s) found %d missing event(s)", prefix, reason, n)
            return n
