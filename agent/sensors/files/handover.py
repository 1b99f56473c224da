"""The file sensor's hand-over: a change becomes a `FileEvent` and goes to `emit`.

Split from `sensor` (the lifecycle, the reader loop, lost events) as the network
sensor's capture reading is: a mixin of `FileSensor`, sharing its attribution, mounts,
rescans and counters, run on the same threads as before (the reader, and the rescans
that report what they find). A change seen by inotify is held `READ_HOLD` seconds while
fanotify is on, so that the writer's pid can be joined to it; the event carries the
path's channel and, for `created`, no size or mtime. An emit the pipeline refuses marks
the path's root for a rescan; one it takes is counted and remembered for the rescans.
"""

from __future__ import annotations

import os
import stat
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from agent import metrics
from agent.events import FileAction, FileEvent, Origin, ProcessInfo
from agent.feedback import READ_HOLD
from agent.sensors import Emit
from agent.sensors.files.tree import Change

if TYPE_CHECKING:
    from agent.sensors.files.attribution import Attribution
    from agent.sensors.files.mounts import MountFollower
    from agent.sensors.files.rescan_worker import Rescans


class HandOver:
    """The emitting half of `FileSensor` (a mixin: it shares the sensor's attribution,
    mounts, rescans and counters)."""

    name: str
    attribution: Attribution
    mounts: MountFollower
    rescans: Rescans
    emitted: int
    dropped: int
    _emit: Emit | None
    _hold: deque[tuple[float, Change]]  # (due, change) waiting for fanotify's pid
    _labels: dict[tuple[str, str], Any]  # metric children, looked up once
    _sent: Any

    if TYPE_CHECKING:  # provided by FileSensor

        def root_of(self, path: str) -> str | None: ...

        def mark_dirty(self, paths: list[str], reason: str) -> None: ...

    def _on_change(self, ch: Change) -> None:
        if self.attribution.active:  # held for fanotify's pid (see agent/feedback.py)
            self._hold.append((time.monotonic() + READ_HOLD, ch))
        else:
            self.send(ch, None)

    def _release(self, now: float) -> None:
        hold = self._hold
        while hold and hold[0][0] <= now:
            ch = hold.popleft()[1]
            self.send(ch, self._process_of(ch))

    def _process_of(self, ch: Change) -> ProcessInfo | None:
        if ch.origin != Origin.WATCH:
            return None  # found by a scan: no process did it just now
        a = self.attribution
        if ch.action == FileAction.WRITTEN:  # or moved in from outside the roots
            return a.process_of("written", ch.path) or a.process_of("moved", ch.path)
        if ch.action == FileAction.MOVED:
            if ch.dest_path is None:
                return a.process_of("moved_out", ch.path)
            return a.process_of("moved", ch.dest_path)
        return a.process_of(str(ch.action), ch.path)  # created, deleted

    def _on_read(self, path: str, proc: ProcessInfo) -> None:
        try:
            st: os.stat_result | None = os.lstat(path)
        except OSError:
            st = None
        self.send(Change(FileAction.READ, path, None, st), proc)

    def send(self, ch: Change, proc: ProcessInfo | None) -> bool:
        st = ch.st
        current = ch.dest_path if ch.dest_path is not None else ch.path
        # `created` says a name appeared, not what it holds: a regular file's size and
        # mtime belong to its `written`, and a rescan must not take them as seen
        content = st is not None and not (
            ch.action == FileAction.CREATED and stat.S_ISREG(st.st_mode)
        )
        ev = FileEvent(
            action=ch.action,
            path=ch.path,
            channel=self.mounts.channels.channel(current),
            dest_path=ch.dest_path,
            size=st.st_size if content and st is not None else None,
            inode=st.st_ino if st is not None else None,
            device=st.st_dev if st is not None else None,
            mtime_ns=st.st_mtime_ns if content and st is not None else None,
            ctime_ns=st.st_ctime_ns if content and st is not None else None,
            process=proc,
            origin=ch.origin,
            sensor=self.name,
        )
        assert self._emit is not None
        if not self._emit(ev):
            self.dropped += 1
            root = self.root_of(current)
            if root is not None:
                self.mark_dirty([root], "dropped")
            return False
        self.emitted += 1
        key = (str(ev.action), str(ev.channel))
        counter = self._labels.get(key)
        if counter is None:
            counter = self._labels[key] = metrics.FILE_EVENTS.labels(*key)
        counter.inc()
        self._sent.inc()
        if ch.action != FileAction.READ:
            self.rescans.recent.remember(ch, content)
            if ch.action in (FileAction.WRITTEN, FileAction.MOVED) and ch.dest_path is not None:
                self.attribution.path_changed(ch.path, ch.dest_path)
        return True
