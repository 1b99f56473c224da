"""Process ancestry for correlation: is the uploading process a child of the reader?

Events carry `ProcessInfo.ppid` where the sensor knew it; what they do not say is read
from `/proc/<pid>/stat` once and cached (bounded). Processes that have exited are
remembered from what events said about them while they lived, which is what makes a
short-lived `tar` → `curl` story linkable after the fact.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

MAX_DEPTH = 32


class Ancestry:
    """pid -> parent pid, learned from events and (optionally) from /proc."""

    def __init__(self, proc: Path | None = Path("/proc"), capacity: int = 65_536) -> None:
        self._proc = proc
        self._capacity = capacity
        self._parent: OrderedDict[int, int] = OrderedDict()

    def learn(self, pid: int | None, ppid: int | None) -> None:
        if pid is None or ppid is None or pid == ppid:
            return
        self._parent[pid] = ppid
        self._parent.move_to_end(pid)
        while len(self._parent) > self._capacity:
            self._parent.popitem(last=False)

    def parent(self, pid: int) -> int | None:
        ppid = self._parent.get(pid)
        if ppid is None and self._proc is not None:
            ppid = read_ppid(self._proc, pid)
            if ppid is not None:
                self.learn(pid, ppid)
        return ppid

    def ancestors(self, pid: int) -> list[int]:
        """Parent, grandparent, ... up to init (cycle- and depth-guarded)."""
        out: list[int] = []
        seen = {pid}
        cur = pid
        for _ in range(MAX_DEPTH):
            ppid = self.parent(cur)
            if ppid is None or ppid in seen or ppid <= 0:
                break
            out.append(ppid)
            seen.add(ppid)
            cur = ppid
        return out


def read_ppid(proc: Path, pid: int) -> int | None:
    """The parent pid from /proc/<pid>/stat; the command name may hold spaces and ')'."""
    try:
        raw = (proc / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    _, sep, rest = raw.rpartition(b")")
    fields = rest.split()
    if not sep or len(fields) < 2:
        return None
    try:
        return int(fields[1])
    except ValueError:
        return None
