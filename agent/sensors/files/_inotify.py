"""The kernel edge of the file sensor: inotify through ctypes, and a pure event parser.

watchdog's reader drops the queue-overflow record (`wd == -1`); this one keeps every
record the kernel hands over, overflow included, so the watch tree above it can count
the loss and ask for a rescan. The flag values are the kernel's
(<sys/inotify.h>; watchdog's `InotifyConstants` has the same), written out so that
importing this module costs no watchdog import at start-up.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from dataclasses import dataclass

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000

# No IN_MODIFY: one event per close is what we report, and every record we do not ask
# for is room in the kernel queue (max_queued_events) for one we need.
WATCH_MASK = (
    IN_CREATE
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
    | IN_DONT_FOLLOW
    | IN_EXCL_UNLINK
)

_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len


@dataclass(frozen=True, slots=True)
class RawEvent:
    wd: int
    mask: int
    cookie: int
    name: bytes  # without the kernel's NUL padding; b"" for events on the watch itself


def parse_events(data: bytes) -> list[RawEvent]:
    """Split one read() of an inotify fd into records; a truncated tail is ignored."""
    out: list[RawEvent] = []
    off = 0
    size = len(data)
    hsize = _HEADER.size
    while off + hsize <= size:
        wd, mask, cookie, length = _HEADER.unpack_from(data, off)
        end = off + hsize + length
        if end > size:
            break
        name = data[off + hsize : end].split(b"\0", 1)[0] if length else b""
        out.append(RawEvent(wd, mask, cookie, name))
        off = end
    return out


def _libc() -> ctypes.CDLL:
    lib = ctypes.CDLL(None, use_errno=True)  # the process's libc (find_library runs ldconfig)
    lib.inotify_init1.argtypes = [ctypes.c_int]
    lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    lib.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    return lib


_LIBC: ctypes.CDLL | None = None


def libc() -> ctypes.CDLL:
    global _LIBC
    if _LIBC is None:
        _LIBC = _libc()
    return _LIBC


class Inotify:
    """One inotify instance (non-blocking, close-on-exec)."""

    def __init__(self) -> None:
        fd = libc().inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self.fd: int = fd

    def add_watch(self, path: str, mask: int = WATCH_MASK) -> int:
        """Watch a directory; raises OSError (ENOSPC = watch limit, EACCES, ENOENT, ENOTDIR)."""
        wd = libc().inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            err = ctypes.get_errno()
            if err == errno.ENOSPC:
                raise OSError(err, "inotify watch limit reached (fs.inotify.max_user_watches)")
            raise OSError(err, os.strerror(err), path)
        return int(wd)

    def rm_watch(self, wd: int) -> None:
        libc().inotify_rm_watch(self.fd, wd)  # EINVAL when already gone: nothing to do

    def read(self, size: int = 1 << 18) -> list[RawEvent]:
        try:
            data = os.read(self.fd, size)
        except BlockingIOError:
            return []
        return parse_events(data)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
