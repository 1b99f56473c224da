"""pid -> who: executable, command line, uid, user and parent, read from /proc.

Used by fanotify attribution. Answers are cached for a few seconds per pid, so a
process writing thousands of files costs one /proc read; a process that has already
exited leaves the fields it could not read as None (never a guess).
"""

from __future__ import annotations

import os
import pwd
import time
from collections import OrderedDict

from agent.events import ProcessInfo

MAX_CMDLINE = 4096


def _read(path: str, limit: int = 65536) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except OSError:
        return None


def parse_status(data: bytes) -> tuple[int | None, int | None]:
    """(real uid, ppid) from /proc/PID/status; None where the line is missing or odd."""
    uid: int | None = None
    ppid: int | None = None
    for line in data.split(b"\n"):
        try:
            if line.startswith(b"Uid:"):
                uid = int(line.split()[1])
            elif line.startswith(b"PPid:"):
                ppid = int(line.split()[1])
        except (IndexError, ValueError):
            continue
    return uid, ppid


def parse_cmdline(data: bytes) -> str:
    args = data[:MAX_CMDLINE].rstrip(b"\0").split(b"\0")
    return " ".join(os.fsdecode(a) for a in args)


class ProcessCache:
    def __init__(self, ttl: float = 5.0, size: int = 4096, proc: str = "/proc") -> None:
        self.ttl = ttl
        self.size = size
        self.proc = proc
        self._cache: OrderedDict[int, tuple[ProcessInfo, float]] = OrderedDict()
        self._users: dict[int, str | None] = {}

    def user(self, uid: int) -> str | None:
        if uid not in self._users:
            try:
                self._users[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                self._users[uid] = None
        return self._users[uid]

    def get(self, pid: int) -> ProcessInfo:
        now = time.monotonic()
        hit = self._cache.get(pid)
        if hit is not None and now - hit[1] < self.ttl:
            return hit[0]
        base = f"{self.proc}/{pid}"
        try:
            exe: str | None = os.readlink(base + "/exe")
        except OSError:
            exe = None
        raw = _read(base + "/cmdline", MAX_CMDLINE)
        cmdline = parse_cmdline(raw) if raw else None
        status = _read(base + "/status")
        uid, ppid = parse_status(status) if status else (None, None)
        info = ProcessInfo(
            pid=pid,
            exe=exe,
            cmdline=cmdline,
            uid=uid,
            user=self.user(uid) if uid is not None else None,
            ppid=ppid,
        )
        self._cache[pid] = (info, now)
        self._cache.move_to_end(pid)
        while len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return info
