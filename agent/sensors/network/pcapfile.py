"""A plain pcap / pcapng reader over mmap, for `egress-agent replay`.

Yields `(timestamp, linktype, buffer, offset, end)` per captured frame without copying
frame bytes; the flow logic decodes headers in place. Malformed files give a
`PcapError` naming the file and byte offset when nothing can be read. Damage inside a
file is counted, never an uncaught exception: after a record header or block that makes
no sense, reading resumes at the next confirmed one (`pcapresync`; `PcapStats.resyncs`,
`.skipped_bytes`); when there is none, the rest is a counted skip (`.truncated`,
`.bad_blocks`). scapy's PcapReader builds an object per packet; this does not.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from agent.errors import UserFacingError
from agent.sensors.network.pcapresync import (
    ClassicLayout,
    find_block,
    find_record,
    record_ok,
)

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_RAW_ALT = 12
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL = 113
LINKTYPE_LINUX_SLL2 = 276
SUPPORTED_LINKTYPES = frozenset(
    (
        LINKTYPE_NULL,
        LINKTYPE_ETHERNET,
        LINKTYPE_RAW,
        LINKTYPE_RAW_ALT,
        LINKTYPE_IPV4,
        LINKTYPE_IPV6,
        LINKTYPE_LINUX_SLL,
        LINKTYPE_LINUX_SLL2,
    )
)

_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
_PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
Frame = tuple[float, int, mmap.mmap, int, int]
# pcapng timestamps are 64-bit; one past what classic pcap can hold (year 2106) is damage,
# and would not fit a datetime further on
MAX_TIMESTAMP = float(1 << 32)


class PcapError(UserFacingError):
    """The file is not a capture we can read; the message says why and where."""


@dataclass(slots=True)
class PcapStats:
    frames: int = 0
    truncated: int = 0  # a record cut off at the end of the file, or an unframeable rest
    bad_blocks: int = 0  # pcapng blocks that made no sense (skipped)
    unsupported_linktype: int = 0
    resyncs: int = 0  # damaged places after which reading resumed at a confirmed record
    skipped_bytes: int = 0  # bytes not read as records: damage, an unframeable rest


class ClassicHeader(NamedTuple):
    endian: str  # struct byte order of every header field
    unit: float  # seconds per tick of the sub-second field
    linktype: int
    snaplen: int

    @property
    def layout(self) -> ClassicLayout:
        return ClassicLayout(self.endian, self.unit < 1e-6, self.snaplen)


def _file_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a directory"),
    ):
        if test(mode):
            return kind
    return "not a file"


@contextlib.contextmanager
def mapped(path: Path) -> Iterator[mmap.mmap]:
    """The capture file mapped read-only, after checking it starts like one.

    Only a regular file is read: a FIFO, a socket or a device has no size to map, and
    opening a FIFO without O_NONBLOCK waits for a writer for ever (replay of a FIFO used
    to hang). A stream is saved to a file first, then replayed.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise PcapError(f"{path}: cannot open: {e.strerror}") from None
    f = os.fdopen(fd, "rb")
    with f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PcapError(
                f"{path}: not a regular file ({_file_kind(st.st_mode)}); replay reads a saved "
                "capture: save the stream to a file first"
            )
        size = st.st_size
        if size < 24:
            raise PcapError(f"{path}: too short to be a pcap or pcapng file ({size} bytes)")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            magic = mm[:4]
            if magic not in _PCAP_MAGICS and magic != _PCAPNG_SHB:
                raise PcapError(f"{path}: not a pcap or pcapng file (magic {magic.hex()})")
            yield mm


def classic_header(path: Path, mm: mmap.mmap) -> ClassicHeader | None:
    """The global header of a classic pcap; None for pcapng."""
    if mm[:4] not in _PCAP_MAGICS:
        return None
    endian, unit = _PCAP_MAGICS[mm[:4]]
    snaplen, linktype = struct.unpack_from(endian + "II", mm, 16)
    linktype &= 0x0FFFFFFF
    if linktype not in SUPPORTED_LINKTYPES:
        raise PcapError(f"{path}: link type {linktype} is not supported")
    return ClassicHeader(endian, unit, linktype, snaplen)


def resume_classic(
    mm: mmap.mmap, off: int, layout: ClassicLayout, last_sec: int | None, stats: PcapStats
) -> int | None:
    """Where framing resumes after the bad record header at `off`, counted in `stats`;
    None when it cannot (the rest of the file is counted as skipped)."""
    size = len(mm)
    found = find_record(mm, off + 1, size, layout, last_sec)
    if found is None:
        stats.truncated += 1
        stats.skipped_bytes += size - off
        return None
    stats.resyncs += 1
    stats.skipped_bytes += found - off
    return found


def frames(path: Path, mm: mmap.mmap, stats: PcapStats) -> Iterator[Frame]:
    """Every frame of a mapped pcap or pcapng file."""
    header = classic_header(path, mm)
    if header is None:
        yield from _pcapng(path, mm, stats)
    else:
        yield from _pcap(mm, header, stats)


def _pcap(mm: mmap.mmap, header: ClassicHeader, stats: PcapStats) -> Iterator[Frame]:
    endian, unit, linktype, _ = header
    layout = header.layout
    limit = layout.read_limit
    unpack = struct.Struct(endian + "IIII").unpack_from
    off = 24
    size = len(mm)
    last_sec: int | None = None
    while off + 16 <= size:
        sec, frac, caplen, origlen = unpack(mm, off)
        start = off + 16
        end = start + caplen
        if end > size or not record_ok(caplen, origlen, limit):
            resumed = resume_classic(mm, off, layout, last_sec, stats)
            if resumed is None:
                return
            off = resumed
            continue
        stats.frames += 1
        last_sec = sec
        yield sec + frac * unit, linktype, mm, start, end
        off = end
    if off != size:
        stats.truncated += 1
        stats.skipped_bytes += size - off


def _pcapng(path: Path, mm: mmap.mmap, stats: PcapStats) -> Iterator[Frame]:
    size = len(mm)
    off = 0
    endian = "<"
    interfaces: list[tuple[int, float]] = []
    while off + 12 <= size:
        bad = False
        if mm[off : off + 4] == _PCAPNG_SHB:
            order = _byte_order(mm, off)
            if order is None and off == 0:
                raise PcapError(f"{path}: bad pcapng byte-order mark at offset {off}")
            bad = order is None
            if order is not None:
                endian = order
                interfaces = []  # a new section has its own interfaces
        btype, blen = struct.unpack_from(endian + "II", mm, off)
        cut = off + blen > size
        if bad or blen < 12 or blen % 4 or cut or _trailer(mm, off, blen, endian) != blen:
            resumed = find_block(mm, off + 1, size, endian)
            if resumed is None:
                if cut and blen >= 12 and not bad:
                    stats.truncated += 1
                else:
                    stats.bad_blocks += 1
                stats.skipped_bytes += size - off
                return
            stats.resyncs += 1
            stats.skipped_bytes += resumed - off
            off = resumed
            continue
        body = off + 8
        if btype == 1 and blen >= 20:  # interface description
            (linktype,) = struct.unpack_from(endian + "H", mm, body)
            interfaces.append((linktype, _tsresol(mm, body + 8, off + blen - 4, endian)))
        elif btype == 6 and blen >= 32:  # enhanced packet
            iface, ts_hi, ts_lo, caplen, _orig = struct.unpack_from(endian + "IIIII", mm, body)
            data = body + 20
            ts = ((ts_hi << 32) | ts_lo) * interfaces[iface][1] if iface < len(interfaces) else -1
            if 0 <= ts < MAX_TIMESTAMP and data + caplen <= off + blen - 4:
                stats.frames += 1
                yield ts, interfaces[iface][0], mm, data, data + caplen
            else:
                stats.bad_blocks += 1
        elif btype == 3 and blen >= 16 and interfaces:  # simple packet
            (orig,) = struct.unpack_from(endian + "I", mm, body)
            data = body + 4
            stop = min(data + orig, off + blen - 4)
            stats.frames += 1
            yield 0.0, interfaces[0][0], mm, data, stop
        off += blen


def _byte_order(mm: mmap.mmap, off: int) -> str | None:
    """The struct byte order a section header's byte-order mark names; None if neither."""
    return {b"\x4d\x3c\x2b\x1a": "<", b"\x1a\x2b\x3c\x4d": ">"}.get(mm[off + 8 : off + 12])


def _trailer(mm: mmap.mmap, off: int, blen: int, endian: str) -> int:
    """The block length repeated at the end of a pcapng block."""
    return int(struct.unpack_from(endian + "I", mm, off + blen - 4)[0])


def _tsresol(mm: mmap.mmap, p: int, stop: int, endian: str) -> float:
    """The if_tsresol option of an interface block (default microseconds)."""
    while p + 4 <= stop:
        code, length = struct.unpack_from(endian + "HH", mm, p)
        if code == 0:
            break
        if code == 9 and length >= 1 and p + 5 <= stop:
            v = mm[p + 4]
            return 2.0 ** -(v & 0x7F) if v & 0x80 else 10.0 ** -(v & 0x7F)
        p += 4 + ((length + 3) & ~3)
    return 1e-6
