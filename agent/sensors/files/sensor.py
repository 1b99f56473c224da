"""The file sensor: every file movement under the watched roots, with channel and process.

It sits at the head of the pipeline: `start(emit)` arms one inotify instance over the
roots (`files.roots`, `files.removable`, `files.cloud_sync`, and — with
`files.follow_mounts` — removable media and network shares as they are mounted) and
hands `FileEvent`s to `emit`. Threads, all joined on `stop()`:

- reader: inotify records → `WatchTree` → events (held briefly when fanotify is on, so
  the writer's pid can be joined to `written` events; `handover.py` makes and emits them);
- rescans (`rescan_worker.py`; what each one emits is planned in `rescan_plan.py`):
  reconciling rescans of roots marked dirty by a lost-event condition (queue overflow,
  watch limit) or a dropped emit, of new mounts, and of directories that left the
  watched area;
- mounts: polls /proc/self/mountinfo and follows mounts and unmounts;
- fanotify (optional, `attribution.py`): pids of writers, reads of paths of interest.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from agent import metrics
from agent.config import FilesSection
from agent.globs import compile_excludes
from agent.liveness import HEARTBEATS, Heartbeat, supervised
from agent.sensors import Emit, SensorUnavailable
from agent.sensors.files import _inotify as I
from agent.sensors.files import rescan_plan as R
from agent.sensors.files.attribution import Attribution
from agent.sensors.files.handover import HandOver
from agent.sensors.files.mounts import MountFollower
from agent.sensors.files.rescan_worker import Rescans
from agent.sensors.files.tree import Change, WatchTree
from agent.wakepipe import wake

if TYPE_CHECKING:
    from agent.runtime import JobSpec, Runtime

log = logging.getLogger(__name__)

BUSY_POLL_MS = 50  # while moves wait for their pair or reads are held
IDLE_POLL_MS = 1000  # shortest idle wait while recent events wait to be pruned
# While records keep coming (fewer than GATHER_MOST a read), they gather GATHER seconds
# between reads: at most 20,000 a second then, so the kernel queue
# (fs.inotify.max_queued_events, 16,384 by default) is far from full; `written` events
# wait READ_HOLD (0.15 s) for attribution anyway
GATHER = 0.05
GATHER_MOST = 1000


class FileSensor(HandOver):
    name = "files"

    def __init__(
        self,
        settings: FilesSection,
        engine: Engine | None = None,
        host_id: str = "",
        rescan_on_start: bool = True,
        mountinfo: str = "/proc/self/mountinfo",
        sys_root: str = "/sys",
        scratch_dir: str | None = None,
    ) -> None:
        self.settings = settings
        # where a rescan keeps its comparison file (None: the system's temporary directory;
        # the daemon passes its state directory, writable under ProtectSystem=strict)
        self.scratch_dir = scratch_dir
        self.engine = engine
        self.host_id = host_id
        self.rescan_on_start = rescan_on_start and engine is not None
        user_excluded = compile_excludes(settings.exclude)
        self.mounts = MountFollower(self, settings, mountinfo, sys_root)
        # the agent's own state directory is never watched: its store writes would come
        # back as file events, and those as more store writes
        own = os.path.abspath(scratch_dir) if scratch_dir is not None else None
        self.excluded = lambda p: (
            p in self.mounts.pseudo or user_excluded(p) or (own is not None and R.under(p, own))
        )
        # path -> why it is watched; replaced, never changed in place, so other threads
        # can read it without a lock
        self.roots: dict[str, str] = {}
        self.emitted = 0
        self.dropped = 0
        self.lost: dict[str, int] = {}
        self._emit: Emit | None = None
        self._stop = threading.Event()
        # drills and tests: stop reading and let the kernel queue fill
        self._paused = threading.Event()
        self._reader: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._beat = Heartbeat("sensor-files")
        self._hold: deque[tuple[float, Change]] = deque()
        self.rescans = Rescans(self)
        self._labels: dict[tuple[str, str], Any] = {}  # metric children, looked up once
        self._sent = metrics.SENSOR_EVENTS.labels(self.name)
        self.ino: I.Inotify | None = None
        self.tree: WatchTree | None = None
        self.attribution = Attribution(
            settings.fanotify, self.under_root, self._generation, self._on_read
        )

    # --- lifecycle -----------------------------------------------------------------
    def start(self, emit: Emit) -> None:
        try:
            self._start(emit)
        except BaseException:
            self.stop()  # whatever did start is joined: a failed start leaks no thread
            raise

    def _start(self, emit: Emit) -> None:
        self._emit = emit
        if self.scratch_dir is not None and R.remove_leftovers(self.scratch_dir):
            log.info("files: removed rescan files a previous run left in %s", self.scratch_dir)
        self.ino = I.Inotify()
        self.tree = WatchTree(
            self.ino, self.excluded, self._on_change, self._on_lost, self.rescans.gone_dir
        )
        try:
            self.attribution.start()
        except OSError as e:
            raise SensorUnavailable(f"files.fanotify is 'on' but {e.strerror or e}") from None
        wanted = [("root", p) for p in self.settings.roots]
        wanted += [("removable", p) for p in self.settings.removable]
        wanted += [("cloud_sync", p) for p in self.settings.cloud_sync]
        for why, p in wanted:
            path = os.path.abspath(os.fsdecode(p))
            if os.path.isdir(path):
                self.add_root(path, why)
            else:
                log.warning("files: %s %r is not a directory; not watched", why, path)
        self.mounts.start()
        self._beat = HEARTBEATS.add("sensor-files")
        loop = supervised(self._read_loop, self._beat, self._stop)
        self._reader = threading.Thread(target=loop, name="files-reader")
        self._reader.start()
        self.rescans.start()
        if self.rescan_on_start:
            self.mark_dirty(list(self.roots), "startup")

    def add_root(self, path: str, why: str) -> None:
        assert self.tree is not None
        if path in self.roots:
            return
        self.roots = {**self.roots, path: why}
        self.tree.add_tree(path, emit_files=False)
        self.attribution.mark_filesystem(path)
        log.info("files: watching %s (%s)", path, why)

    def remove_root(self, path: str) -> None:
        if path not in self.roots or self.tree is None:
            return
        self.roots = {r: why for r, why in self.roots.items() if r != path}
        self.tree.drop_under(path)
        self.attribution.forget_filesystem(path)
        if self.under_root(path) and os.path.isdir(path):
            self.tree.add_tree(path, emit_files=False)  # the directory a medium covered
        log.info("files: no longer watching %s", path)

    def stop(self) -> None:
        self._stop.set()
        self._paused.clear()
        self.poke()  # cut the reader's idle wait short
        self.mounts.stop()
        self.rescans.stop()
        if self._reader is not None:
            self._reader.join()
            self._reader = None
            HEARTBEATS.remove(self._beat.name)
        self.attribution.stop()
        if self.ino is not None:
            self.ino.close()
            self.ino = None
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1
        metrics.FILE_WATCHES.set(0)

    def status(self) -> dict[str, object]:
        tree = self.tree
        return {
            "backend": "inotify",
            "roots": dict(self.roots),
            "watches": len(tree.wd_path) if tree else 0,
            "unwatched_dirs": len(tree.unwatched) if tree else 0,
            "denied_dirs": tree.denied if tree else 0,
            "emitted": self.emitted,
            "dropped": self.dropped,
            "lost": dict(self.lost),
            "rescans": self.rescans.count,
            "dirty": self.rescans.dirty,
            "process_attribution": self.attribution.reason,
            "interesting_paths": len(self.attribution.interesting_paths),
        }

    # --- paths of interest (filled by later stages) -------------------------------------
    @property
    def interesting_paths(self) -> frozenset[str]:
        return self.attribution.interesting_paths

    def watch_reads(self, path: str) -> bool:
        return self.attribution.watch_reads(path)

    def unwatch_reads(self, path: str) -> None:
        self.attribution.unwatch_reads(path)

    # --- test and drill hooks ------------------------------------------------------
    def pause_reader(self) -> None:
        self._paused.set()
        self.poke()

    def poke(self) -> None:
        """Wake the reader now (it sleeps until the kernel has events when nothing is due):
        a stop, a pause, or a rescan waiting for it to report what is queued."""
        wake(self._wake_w)

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except OSError:  # empty (EAGAIN)
            pass

    def resume_reader(self) -> None:
        self._paused.clear()

    # --- helpers ---------------------------------------------------------------------
    def under_root(self, path: str) -> bool:
        return self.root_of(path) is not None

    def root_of(self, path: str) -> str | None:
        best: str | None = None
        for r in self.roots:
            if R.under(path, r) and (best is None or len(r) > len(best)):
                best = r
        return best

    def _generation(self) -> int:
        return self.tree.generation if self.tree is not None else 0

    # --- the reader thread -----------------------------------------------------------
    def _read_loop(self) -> None:
        ino, tree = self.ino, self.tree
        assert ino is not None and tree is not None
        poller = select.poll()
        poller.register(ino.fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        beat = self._beat.beat
        wait_ms = BUSY_POLL_MS
        gathering = False
        while not self._stop.is_set():
            beat()
            if self._paused.is_set():
                self._stop.wait(0.05)
                continue
            if gathering:
                # records keep coming at a modest rate: let them gather and take them in
                # one read, without waiting in poll() first. A wake-up costs 20-50 us of
                # CPU on a VM: poll() then a 5 ms gathering wait made two every 5 ms (the
                # reader's CPU in a 20,000-file burst over 33 s: 1.29 -> 0.53 s per 10k
                # files). A flood is read back to back: no sleep while the queue fills
                time.sleep(GATHER)
                wait_ms = 0
            ready = poller.poll(wait_ms)
            if any(fd == self._wake_r for fd, _ in ready):
                self._drain_wake()
                if self._paused.is_set():
                    gathering = False
                    continue
            busy = any(fd == ino.fd for fd, _ in ready)
            gathering = False
            if busy:
                records = ino.read()
                gathering = 0 < len(records) < GATHER_MOST
                tree.handle(records)
            tree.flush()
            self._release(time.monotonic())
            if busy or tree.deferred or tree.pending or self._hold:
                self.rescans.idle.clear()
                wait_ms = BUSY_POLL_MS  # moves to pair, reads held for attribution
            else:
                self.rescans.idle.set()
                # nothing due: sleep until the kernel has events, stop() writes the wake
                # pipe, or the memory of recent events is due for pruning
                wait_ms = self._idle_wait_ms()
            metrics.FILE_WATCHES.set(len(tree.wd_path))
            self.rescans.recent.prune()
        tree.handle(ino.read())  # what the kernel already queued is still reported
        tree.flush(now=float("inf"))
        self._release(float("inf"))

    def _idle_wait_ms(self) -> int:
        """-1 (no timeout) on a quiet host; else until `Recent`'s oldest entry expires."""
        expiry = self.rescans.recent.next_expiry()
        if expiry is None:
            return -1
        return max(IDLE_POLL_MS, int((expiry - time.monotonic()) * 1000) + 1)

    # --- lost events -> rescans ---------------------------------------------------------
    def _on_lost(self, reason: str, path: str) -> None:
        metrics.FILE_LOST.labels(reason).inc()
        first = reason not in self.lost
        self.lost[reason] = self.lost.get(reason, 0) + 1
        (log.warning if first else log.debug)(
            "files: events lost (%s%s); the affected roots will be rescanned",
            reason,
            f" at {path!r}" if path else "",
        )
        if reason == "queue_overflow" or not path:
            self.mark_dirty(list(self.roots), reason)
        else:
            root = self.root_of(path)
            self.mark_dirty([root] if root else [], reason)

    def mark_dirty(self, paths: list[str], reason: str) -> None:
        self.rescans.mark_dirty(paths, reason)

    def rescan_all(self, reason: str = "inventory") -> int:
        """Reconcile every root now (the inventory job calls this); returns events emitted."""
        return sum(max(0, self.rescans.reconcile(r, reason)) for r in list(self.roots))

    def reconcile(self, prefix: str, reason: str) -> int:
        return self.rescans.reconcile(prefix, reason)


def create(rt: Runtime) -> FileSensor:
    sensor = FileSensor(
        rt.settings.files, rt.engine, rt.host_id, scratch_dir=str(rt.settings.state_dir)
    )
    rt.attach_files_sensor(sensor)  # the inventory job, and incidents' read marks
    return sensor


def inventory_rescan_job(rt: Runtime) -> JobSpec | None:
    """The scheduled inventory rescan: reconcile every root with the store."""
    sensor = rt.files_sensor
    if sensor is None:
        return None
    interval = rt.settings.jobs.rescan_interval

    def run() -> None:
        last = sensor.rescans.last_full
        if last is not None and time.monotonic() - last < interval / 2:
            return  # the startup rescan has just done it
        sensor.rescan_all("inventory")

    return "files_rescan", interval, run
