"""Process attribution with fanotify (needs CAP_SYS_ADMIN and CAP_DAC_READ_SEARCH).

One fanotify group in `FAN_REPORT_DFID_NAME` mode. A filesystem mark
(`FAN_MARK_FILESYSTEM`) with close-after-write, create, delete and rename events on each
watched file system says which pid wrote, made, removed or renamed a file. Inode marks
with `FAN_OPEN` — only on the "paths of interest" the later stages name — say which pid
opened a tagged artefact, so the kernel filters reads and the agent sees no other.
Events carry a directory handle and a name; handles are resolved with
`open_by_handle_at` on a short-lived fd of the mount (no fd is held open, so media can
still be unmounted) and cached per directory. `parse_events` is pure; `Fanotify` is the
ctypes shell.
"""

from __future__ import annotations

import ctypes
import os
import struct
from collections import OrderedDict
from dataclasses import dataclass

FAN_CLOEXEC = 0x1
FAN_NONBLOCK = 0x2
FAN_CLASS_NOTIF = 0x0
FAN_REPORT_DIR_FID = 0x400
FAN_REPORT_NAME = 0x800
FAN_REPORT_DFID_NAME = FAN_REPORT_DIR_FID | FAN_REPORT_NAME
FAN_MARK_ADD = 0x1
FAN_MARK_REMOVE = 0x2
FAN_MARK_FILESYSTEM = 0x100
FAN_OPEN = 0x20
FAN_CLOSE_WRITE = 0x8
FAN_MOVED_FROM = 0x40
FAN_MOVED_TO = 0x80
FAN_CREATE = 0x100
FAN_DELETE = 0x200
# what a filesystem mark reports: who wrote, made, removed and renamed files
FS_MASK = FAN_CLOSE_WRITE | FAN_CREATE | FAN_DELETE | FAN_MOVED_FROM | FAN_MOVED_TO
FAN_Q_OVERFLOW = 0x4000
FAN_EVENT_INFO_TYPE_DFID_NAME = 2
AT_FDCWD = -100

_META = struct.Struct("IBBHQii")  # event_len, vers, reserved, metadata_len, mask, fd, pid
_INFO = struct.Struct("BBH")
_FSID_HANDLE = struct.Struct("iiIi")  # fsid[2], handle_bytes, handle_type


@dataclass(frozen=True, slots=True)
class FanEvent:
    mask: int
    pid: int
    fsid: int  # as statvfs().f_fsid reports it
    handle: bytes  # struct file_handle (header + bytes), ready for open_by_handle_at
    name: bytes


def fsid_of(val0: int, val1: int) -> int:
    return (val0 & 0xFFFFFFFF) | ((val1 & 0xFFFFFFFF) << 32)


def parse_events(data: bytes) -> list[FanEvent]:
    """Records with a DFID_NAME info; others (and truncated ones) are skipped.
    An overflow comes out as a record with mask FAN_Q_OVERFLOW and no handle."""
    out: list[FanEvent] = []
    off = 0
    size = len(data)
    while off + _META.size <= size:
        ev_len, _vers, _r, meta_len, mask, fd, pid = _META.unpack_from(data, off)
        if ev_len < _META.size or off + ev_len > size:
            break
        end = off + ev_len
        if fd >= 0:
            os.close(fd)  # a classic-mode fd should never come; never leak one
        if mask & FAN_Q_OVERFLOW:
            out.append(FanEvent(mask, pid, 0, b"", b""))
        info = off + max(meta_len, _META.size)
        while info + _INFO.size <= end:
            itype, _pad, ilen = _INFO.unpack_from(data, info)
            if ilen < _INFO.size or info + ilen > end:
                break
            if itype == FAN_EVENT_INFO_TYPE_DFID_NAME and ilen >= 4 + _FSID_HANDLE.size:
                v0, v1, hbytes, _htype = _FSID_HANDLE.unpack_from(data, info + 4)
                hstart = info + 4 + 8
                hend = hstart + 8 + hbytes
                if hend <= info + ilen:
                    name = data[hend : info + ilen].split(b"\0", 1)[0]
                    out.append(FanEvent(mask, pid, fsid_of(v0, v1), data[hstart:hend], name))
            info += ilen
        off = end
    return out


_LIBC: ctypes.CDLL | None = None


def libc() -> ctypes.CDLL:
    global _LIBC
    if _LIBC is None:
        lib = ctypes.CDLL(None, use_errno=True)  # the process's libc (find_library runs ldconfig)
        lib.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
        lib.fanotify_mark.argtypes = [
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint64,
            ctypes.c_int,
            ctypes.c_char_p,
        ]
        lib.open_by_handle_at.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        _LIBC = lib
    return _LIBC


def _err(what: str) -> OSError:
    e = ctypes.get_errno()
    return OSError(e, f"{what}: {os.strerror(e)}")


class Fanotify:
    def __init__(self) -> None:
        flags = FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK | FAN_REPORT_DFID_NAME
        fd = libc().fanotify_init(flags, os.O_RDONLY | os.O_LARGEFILE)
        if fd < 0:
            raise _err("fanotify_init")
        self.fd: int = fd
        self.filesystems: dict[int, str] = {}  # fsid -> a path on it (to open handles)
        self._dirs: OrderedDict[tuple[int, bytes], str] = OrderedDict()
        self.generation = 0

    def mark_filesystem(self, path: str) -> None:
        flags = FAN_MARK_ADD | FAN_MARK_FILESYSTEM
        r = libc().fanotify_mark(self.fd, flags, FS_MASK, AT_FDCWD, os.fsencode(path))
        if r < 0:
            raise _err(f"fanotify_mark {path!r}")
        self.filesystems[os.statvfs(path).f_fsid] = path

    def forget_filesystem(self, path: str) -> None:
        for fsid, p in list(self.filesystems.items()):
            if p == path:
                del self.filesystems[fsid]
        self._dirs.clear()

    def mark_reads(self, path: str, add: bool = True) -> bool:
        """Report opens of this file (an inode mark); False if it cannot be marked."""
        op = FAN_MARK_ADD if add else FAN_MARK_REMOVE
        r = libc().fanotify_mark(self.fd, op, FAN_OPEN, AT_FDCWD, os.fsencode(path))
        if r < 0:
            return False
        if add:
            self.filesystems.setdefault(os.statvfs(path).f_fsid, os.path.dirname(path) or "/")
        return True

    def read(self, size: int = 1 << 18) -> list[FanEvent]:
        try:
            data = os.read(self.fd, size)
        except BlockingIOError:
            return []
        return parse_events(data)

    def resolve_dir(self, ev: FanEvent, generation: int) -> str | None:
        """The directory an event's handle names now (cached until directories move)."""
        if generation != self.generation:
            self._dirs.clear()
            self.generation = generation
        key = (ev.fsid, ev.handle)
        hit = self._dirs.get(key)
        if hit is not None:
            return hit
        base = self.filesystems.get(ev.fsid)
        if base is None:
            return None
        try:
            mfd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            hfd = libc().open_by_handle_at(mfd, ev.handle, os.O_PATH | os.O_CLOEXEC)
        finally:
            os.close(mfd)
        if hfd < 0:
            return None
        try:
            target = os.readlink(f"/proc/self/fd/{hfd}")
        except OSError:
            return None
        finally:
            os.close(hfd)
        if target.endswith(" (deleted)"):
            return None
        self._dirs[key] = target
        if len(self._dirs) > 16384:
            self._dirs.popitem(last=False)
        return target

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
