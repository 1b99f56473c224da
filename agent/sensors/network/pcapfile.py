"""A plain pcap / pcapng reader over mmap, for `egress-agent replay`.

Yields `(timestamp, linktype, buffer, offset, end)` per captured frame without copying
frame bytes; the flow logic decodes headers in place. Malformed files give a
`PcapError` naming the file and byte offset when nothing can be read, and a counted
skip (`PcapStats.truncated`, `.bad_blocks`) when a file ends mid-record — never an
uncaught exception. scapy's PcapReader builds an object per packet; this does not.
"""

from __future__ import annotations

import contextlib
import mmap
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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
MAX_CAPLEN = 0x4000000  # a record claiming more is corrupt


class PcapError(Exception):
    """The file is not a capture we can read; the message says why and where."""


@dataclass(slots=True)
class PcapStats:
    frames: int = 0
    truncated: int = 0  # a record cut off at the end of the file
    bad_blocks: int = 0  # pcapng blocks that made no sense (skipped)
    unsupported_linktype: int = 0


@contextlib.contextmanager
def mapped(path: Path) -> Iterator[mmap.mmap]:
    """The capture file mapped read-only, after checking it starts like one."""
    try:
        f = path.open("rb")
    except OSError as e:
        raise PcapError(f"{path}: cannot open: {e.strerror}") from None
    with f:
        size = path.stat().st_size
        if size < 24:
            raise PcapError(f"{path}: too short to be a pcap or pcapng file ({size} bytes)")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            magic = mm[:4]
            if magic not in _PCAP_MAGICS and magic != _PCAPNG_SHB:
                raise PcapError(f"{path}: not a pcap or pcapng file (magic {magic.hex()})")
            yield mm


def classic_header(path: Path, mm: mmap.mmap) -> tuple[str, float, int] | None:
    """(struct byte order, timestamp unit, link type) of a classic pcap; None for pcapng."""
    if mm[:4] not in _PCAP_MAGICS:
        return None
    endian, unit = _PCAP_MAGICS[mm[:4]]
    (linktype,) = struct.unpack_from(endian + "I", mm, 20)
    linktype &= 0x0FFFFFFF
    if linktype not in SUPPORTED_LINKTYPES:
        raise PcapError(f"{path}: link type {linktype} is not supported")
    return endian, unit, linktype


def frames(path: Path, mm: mmap.mmap, stats: PcapStats) -> Iterator[Frame]:
    """Every frame of a mapped pcap or pcapng file."""
    header = classic_header(path, mm)
    if header is None:
        yield from _pcapng(path, mm, stats)
    else:
        yield from _pcap(mm, header, stats)


def _pcap(mm: mmap.mmap, header: tuple[str, float, int], stats: PcapStats) -> Iterator[Frame]:
    endian, unit, linktype = header
    rec = struct.Struct(endian + "IIII")
    off = 24
    size = len(mm)
    unpack = rec.unpack_from
    frames = 0
    while off + 16 <= size:
        sec, frac, caplen, _origlen = unpack(mm, off)
        start = off + 16
        end = start + caplen
        if end > size or caplen > MAX_CAPLEN:
            stats.truncated += 1
            break
        frames += 1
        yield sec + frac * unit, linktype, mm, start, end
        off = end
    else:
        if off != size:
            stats.truncated += 1
    stats.frames += frames


def _pcapng(path: Path, mm: mmap.mmap, stats: PcapStats) -> Iterator[Frame]:
    size = len(mm)
    off = 0
    endian = "<"
    interfaces: list[tuple[int, float]] = []
    while off + 12 <= size:
        if mm[off : off + 4] == _PCAPNG_SHB:
            bom = mm[off + 8 : off + 12]
            if bom == b"\x4d\x3c\x2b\x1a":
                endian = "<"
            elif bom == b"\x1a\x2b\x3c\x4d":
                endian = ">"
            else:
                raise PcapError(f"{path}: bad pcapng byte-order mark at offset {off}")
            interfaces = []  # a new section has its own interfaces
        btype, blen = struct.unpack_from(endian + "II", mm, off)
        if blen < 12 or blen % 4 or off + blen > size:
            if off + blen > size and blen >= 12:
                stats.truncated += 1
            else:
                stats.bad_blocks += 1
            break
        body = off + 8
        if btype == 1 and blen >= 20:  # interface description
            (linktype,) = struct.unpack_from(endian + "H", mm, body)
            interfaces.append((linktype, _tsresol(mm, body + 8, off + blen - 4, endian)))
        elif btype == 6 and blen >= 32:  # enhanced packet
            iface, ts_hi, ts_lo, caplen, _orig = struct.unpack_from(endian + "IIIII", mm, body)
            data = body + 20
            if iface < len(interfaces) and data + caplen <= off + blen - 4:
                linktype, unit = interfaces[iface]
                stats.frames += 1
                yield ((ts_hi << 32) | ts_lo) * unit, linktype, mm, data, data + caplen
            else:
                stats.bad_blocks += 1
        elif btype == 3 and blen >= 16 and interfaces:  # simple packet
            (orig,) = struct.unpack_from(endian + "I", mm, body)
            data = body + 4
            stop = min(data + orig, off + blen - 4)
            stats.frames += 1
            yield 0.0, interfaces[0][0], mm, data, stop
        off += blen


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
