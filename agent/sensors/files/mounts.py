"""Following the mount table while the file sensor runs.

One thread waits on /proc/self/mountinfo (the kernel signals POLLPRI when the table
changes; `files.mount_poll_interval` is the poll period only where that cannot be used)
and, on a change, swaps in a new `ChannelMap` and tells the sensor which mounts appeared
and left. A new mount under a watched root, or — with `files.follow_mounts` — any
removable medium or network share, becomes a watched root and is reconciled (its files
are reported with `origin=rescan`, and only once: the store remembers them). An unmount
drops the watches without reporting the files as deleted: the medium left, its files did
not. Pseudo file systems (/proc, /sys, cgroup...) are never walked.
"""

from __future__ import annotations

import logging
import os
import select
import threading
from typing import TYPE_CHECKING

from agent.config import FilesSection
from agent.events import Channel
from agent.sensors.files.channels import ChannelMap, Mount, parse_mountinfo, read_mountinfo
from agent.wakepipe import close_pipe, wake_then_join

if TYPE_CHECKING:
    from agent.sensors.files.sensor import FileSensor

log = logging.getLogger(__name__)

PSEUDO_FSTYPES = frozenset(
    {
        "proc",
        "sysfs",
        "cgroup",
        "cgroup2",
        "devtmpfs",
        "devpts",
        "debugfs",
        "tracefs",
        "securityfs",
        "pstore",
        "bpf",
        "configfs",
        "fusectl",
        "mqueue",
        "hugetlbfs",
        "autofs",
        "binfmt_misc",
        "efivarfs",
        "nsfs",
        "rpc_pipefs",
    }
)


class MountFollower:
    def __init__(
        self, sensor: FileSensor, settings: FilesSection, mountinfo: str, sys_root: str
    ) -> None:
        self.sensor = sensor
        self.settings = settings
        self.path = mountinfo
        self.sys_root = sys_root
        self.pseudo: frozenset[str] = frozenset()
        self._departed: frozenset[str] = frozenset()  # replaced, never changed in place
        self._known: dict[int, Mount] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake_r = self._wake_w = -1  # stop() writes here to end the thread's wait
        self.channels = self._build(self._read())

    def _read(self) -> list[Mount]:
        try:
            return parse_mountinfo(read_mountinfo(self.path))
        except OSError as e:
            log.warning("files: cannot read %s: %s; channels from config only", self.path, e)
            return []

    def _build(self, mounts: list[Mount]) -> ChannelMap:
        self.pseudo = frozenset(m.mount_point for m in mounts if m.fstype in PSEUDO_FSTYPES)
        return ChannelMap(mounts, self.settings.removable, self.settings.cloud_sync, self.sys_root)

    def departed(self, path: str) -> bool:
        """True for a path on a medium that was unmounted while the agent ran."""
        return any(path == d or path.startswith(d.rstrip("/") + "/") for d in self._departed)

    def start(self) -> None:
        self._apply(self.channels.mounts)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._run, name="files-mounts")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            wake_then_join(self._thread, self._wake_w)
            self._thread = None

    def _wanted(self, m: Mount) -> bool:
        if m.fstype in PSEUDO_FSTYPES:
            return False
        if self.sensor.under_root(m.mount_point):
            return True
        return (
            self.settings.follow_mounts
            and self.channels.channel_of_dir(m.mount_point) != Channel.LOCAL
        )

    def _apply(self, mounts: list[Mount]) -> None:
        now = {m.mount_id: m for m in mounts}
        for mid, m in self._known.items():
            if mid in now or not self.sensor.under_root(m.mount_point):
                continue
            # the medium left, its files did not: never report them as deleted
            self._departed = self._departed | {m.mount_point}
            if self.sensor.roots.get(m.mount_point) == "mount":
                self.sensor.remove_root(m.mount_point)
        running = bool(self._known)  # else: the startup rescan covers what is mounted
        for mid, m in now.items():
            if mid in self._known or not self._wanted(m) or not os.path.isdir(m.mount_point):
                continue
            mp = m.mount_point
            self._departed = self._departed - {mp}
            if mp in self.sensor.roots:
                # mounted right on a configured root: watch the new file system's top
                if running and self.sensor.tree is not None:
                    self.sensor.tree.add_tree(mp, emit_files=False)
                    self.sensor.attribution.mark_filesystem(mp)
            else:
                self.sensor.add_root(mp, "mount")
            if running:
                self.sensor.mark_dirty([mp], "mount")
        self._known = now

    def _run(self) -> None:
        """Sleep until the kernel says the table changed (POLLPRI) or stop() writes the
        wake pipe; only without a pollable mountinfo read it every `mount_poll_interval`."""
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        fd = -1
        if self.path.startswith("/proc/"):  # a copy in a plain file is never signalled
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
                poller.register(fd, select.POLLPRI | select.POLLERR)
            except OSError:
                pass  # polling on the interval alone
        timeout_ms = None if fd >= 0 else int(self.settings.mount_poll_interval * 1000)
        try:
            armed = False
            while not self._stop.is_set():
                # the first look is right after arming: a mount made between start's read
                # and the open of the table would otherwise wait for the next change
                if armed:
                    poller.poll(timeout_ms)
                    if self._stop.is_set():
                        return
                armed = True
                mounts = self._read()
                if {m.mount_id for m in mounts} == set(self._known):
                    continue
                self.channels = self._build(mounts)
                try:
                    self._apply(mounts)
                except Exception:  # a mount that cannot be followed must not end the thread
                    log.exception("files: following the mount table failed")
        finally:
            if fd >= 0:
                os.close(fd)
            close_pipe(self._wake_r, self._wake_w)
