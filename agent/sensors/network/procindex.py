"""Socket inode → process: a cached index over /proc/<pid>/fd, for flow attribution.

sock_diag gives a connection's socket inode and uid; this finds the process holding
that inode. A lookup answers from the inode → pid map learned so far; a miss first
re-reads the fds of processes that recently owned sockets (cheap, and usually where the
next connection comes from: the fd of a process's last match is read first, then the
fds that are new since its last search, and the search stops at the inode). Only then,
and only if the socket still exists (`still_open`: a short connection often closes
before this search), does it walk all of /proc, within a CPU budget (a token bucket:
`budget` seconds of walking per second, ~2% of a core, in bursts of up to `burst`); a
walk records every socket inode it reads, for the next lookups. What /proc says of a
process is cached per incarnation (pid + start time) for PROCESS_TTL seconds. Best
effort: a process that already exited stays unknown (None), never guessed.
"""

from __future__ import annotations

import functools
import os
import pwd
import time
from collections import OrderedDict
from collections.abc import Callable

from agent.events import ProcessInfo

_MAX_CMDLINE = 1024
PROCESS_TTL = 10.0
_MAX_SEEN_FDS = 4096  # fds remembered per hot process (to order the next search)


def _socket_inode(pid: int, fd: str) -> int | None:
    """The inode of the socket that `fd` of `pid` holds, 0 when it holds something else,
    None when it cannot be read (closed meanwhile)."""
    try:
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return None
    return int(target[8:-1]) if target.startswith("socket:[") else 0


def _start_time(pid: int) -> bytes:
    """Field 22 of /proc/<pid>/stat, read once per flow: plain os calls, not a buffered
    file object (a third of the cost)."""
    fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
    try:
        stat = os.read(fd, 4096)
    finally:
        os.close(fd)
    return stat.rsplit(b")", 1)[1].split()[19]


@functools.lru_cache(maxsize=256)
def user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return None


def process_info(pid: int, uid: int | None = None) -> ProcessInfo:
    """What /proc says about `pid` now; unreadable fields stay None."""
    exe = cmdline = cwd = None
    ppid = None
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        pass
    try:  # where a git push works: the repository of the flow (classify/repository.py)
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read(_MAX_CMDLINE)
        cmdline = raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace") or None
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
    except (OSError, ValueError, IndexError):
        pass
    if uid is None:
        try:
            uid = os.stat(f"/proc/{pid}").st_uid
        except OSError:
            uid = None
    return ProcessInfo(
        pid=pid,
        exe=exe,
        cmdline=cmdline,
        uid=uid,
        user=user_name(uid) if uid is not None else None,
        ppid=ppid,
        cwd=cwd,
    )


def _likely_first(fds: list[str], seen: dict[str, int | None]) -> list[str]:
    """`fds` ordered so a new socket is met early: fds absent from the last search
    first (a new socket takes a free number), then those that held sockets (closed
    and reused), then the rest — every fd is still read if need be."""
    fresh, sockets, rest = [], [], []
    for fd in fds:
        if fd not in seen:
            fresh.append(fd)
        elif seen[fd] is not None:
            sockets.append(fd)
        else:
            rest.append(fd)
    return fresh + sockets + rest


class ProcIndex:
    """inode → pid, refreshed on a miss (rate-limited full scans)."""

    def __init__(self, budget: float = 0.02, burst: float = 0.1, hot_size: int = 64) -> None:
        self.budget = budget  # CPU seconds of /proc walking allowed per second
        self.burst = burst
        self._tokens = burst
        self._inode_pid: dict[int, int] = {}
        self._hot: OrderedDict[int, None] = OrderedDict()  # pids that recently owned sockets
        self._last_fd: dict[int, str] = {}  # hot pid -> the fd of its last matched socket
        # hot pid -> its fds at the last search, and what each held (None: no socket)
        self._seen_fds: dict[int, dict[str, int | None]] = {}
        self._hot_size = hot_size
        # (pid, start time, uid) -> (info, until): an exec keeps the start time, so
        # entries also expire after PROCESS_TTL seconds
        self._procs: OrderedDict[tuple[int, bytes, int | None], tuple[ProcessInfo, float]] = (
            OrderedDict()
        )
        self._last_refill = time.monotonic()
        self.full_scans = 0
        self.skipped_scans = 0  # walks not done: the socket had closed meanwhile

    def pid_of(self, inode: int, still_open: Callable[[], bool] | None = None) -> int | None:
        """The process holding socket `inode`. Before a walk of all of /proc,
        `still_open()` is asked whether the socket still exists: a short connection
        often closes between the SYN and this search, and then no walk can find it (on
        a busy host a walk reads thousands of fd links)."""
        if not inode:
            return None
        pid = self._inode_pid.get(inode)
        if pid is not None and os.path.exists(f"/proc/{pid}"):
            return pid
        for hot in list(self._hot):
            if self._index(hot, inode, early=True):
                return hot
        if still_open is not None and not still_open():
            self.skipped_scans += 1
            return None
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._last_refill) * self.budget)
        self._last_refill = now
        if self._tokens <= 0:
            return None
        self.full_scans += 1
        self._inode_pid.clear()
        found = None
        for name in os.listdir("/proc"):
            if name.isdigit() and self._index(int(name), inode):
                found = int(name)
                break
        self._tokens -= time.monotonic() - now
        return found

    def process(self, pid: int, uid: int | None) -> ProcessInfo:
        """`process_info`, cached per process incarnation (pid + start time)."""
        try:
            started = _start_time(pid)
        except (OSError, IndexError):
            return process_info(pid, uid)
        key = (pid, started, uid)
        now = time.monotonic()
        hit = self._procs.get(key)
        if hit is not None and hit[1] > now:
            return hit[0]
        info = process_info(pid, uid)
        self._procs[key] = (info, now + PROCESS_TTL)
        self._procs.move_to_end(key)
        if len(self._procs) > 1024:
            self._procs.popitem(last=False)
        return info

    def _index(self, pid: int, wanted: int, early: bool = False) -> bool:
        """Record `pid`'s socket inodes; True when `wanted` is one of them.

        `early` (a hot pid) first reads the fd that held its last matched socket, and
        otherwise stops at `wanted`: a process that closes a connection and opens the next
        one gets the same lowest free fd back, so one readlink usually finds it, without
        listing the fd directory or reading one link per fd. A full /proc walk reads
        every fd, so that the inodes it learns spare the next walk.
        """
        hint = self._last_fd.get(pid) if early else None
        hinted = _socket_inode(pid, hint) if hint is not None else None
        if hinted:
            self._inode_pid[hinted] = pid
            if hinted == wanted:  # no listing of the fd directory at all
                self._hot.move_to_end(pid)
                return True
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            fds = []
        if hint is not None and hint in fds:
            fds.remove(hint)  # read above: it holds another socket now, or none
        seen = self._seen_fds.get(pid) if early else None
        if seen is not None:
            fds = _likely_first(fds, seen)
        now_seen: dict[str, int | None] = {}
        sockets, found = bool(hinted), False
        for fd in fds:
            inode = _socket_inode(pid, fd)
            if inode is None:  # closed meanwhile (this listing's own fd, too): unknown
                continue
            now_seen[fd] = inode or None
            if not inode:
                continue
            sockets = True
            self._inode_pid[inode] = pid
            if inode == wanted:
                found = True
                self._last_fd[pid] = fd
                if early:
                    break
        if not sockets:
            self._hot.pop(pid, None)
            self._last_fd.pop(pid, None)
            self._seen_fds.pop(pid, None)
            return False
        if len(now_seen) < _MAX_SEEN_FDS:  # what was not read keeps its old answer
            self._seen_fds[pid] = {**(seen or {}), **now_seen} if early else now_seen
        if found:
            self._hot[pid] = None
            self._hot.move_to_end(pid)
            while len(self._hot) > self._hot_size:
                gone, _ = self._hot.popitem(last=False)
                self._last_fd.pop(gone, None)
                self._seen_fds.pop(gone, None)
        return found
