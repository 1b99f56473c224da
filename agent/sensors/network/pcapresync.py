"""Finding the next good record after damage in a capture file, for `egress-agent replay`.

Captures handed to analysts are cut by full disks, bad copies and truncated transfers.
A record header that claims an impossible length used to end the framing, losing every
packet after it. These functions look for the next offset where framing can resume:
a candidate header must be plausible on its own (lengths within the snaplen, the
original length at least the captured one, a timestamp near the last good record's)
*and* be followed by another plausible header or end exactly at the end of the file,
so that random bytes pass by chance far less than once in a 100 MB file. pcapng blocks
carry their length at both ends, which makes a candidate block almost self-checking.

The scan is bounded (`MAX_SCAN` bytes from the damage) and goes through a regular
expression built from the bounds first, so that it runs at C speed over random bytes and
zero-filled holes; only the rare prefilter hits are checked in Python. Everything here
is pure over a buffer (bytes or mmap).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from agent.sensors.network.packets import Buffer

MAX_CAPLEN = 0x4000000  # a record claiming more is corrupt
MAX_SCAN = 64 << 20  # bytes looked through after one damaged header before giving up
WINDOW = 86_400  # seconds a resumed record may lie from the last good one
MAX_ORIGLEN = 1 << 20  # a candidate claiming a longer original packet is not believed
# libpcap reads records longer than the file's snaplen up to this (its MAXIMUM_SNAPLEN)
LIBPCAP_MAX_SNAPLEN = 262_144

_PCAPNG_SHB = 0x0A0D0D0A
_PCAPNG_TYPES = (1, 2, 3, 4, 5, 6, 0x0A)  # IDB, old packet, SPB, NRB, ISB, EPB, DSB


@dataclass(frozen=True, slots=True)
class ClassicLayout:
    """What a classic pcap's global header says about its record headers."""

    endian: str  # "<" or ">"
    nanos: bool  # the sub-second field counts nanoseconds, not microseconds
    snaplen: int

    @property
    def frac_limit(self) -> int:
        return 1_000_000_000 if self.nanos else 1_000_000

    @property
    def read_limit(self) -> int:
        """The longest record framing accepts: libpcap also reads records a little past
        a too-small snaplen, so a valid-but-odd file is not cut."""
        return max(self.candidate_limit, LIBPCAP_MAX_SNAPLEN)

    @property
    def candidate_limit(self) -> int:
        """The longest record a resync candidate may claim: the snaplen, when sane."""
        return self.snaplen if 0 < self.snaplen <= MAX_CAPLEN else MAX_CAPLEN


def record_ok(caplen: int, origlen: int, limit: int) -> bool:
    """Whether framing may trust a record header's lengths (the data fitting in the file
    is the caller's check). No packet is 0 bytes long: a zero-filled hole is damage."""
    return caplen <= limit and caplen <= origlen <= MAX_CAPLEN and origlen > 0


def plausible_record(
    buf: Buffer, off: int, size: int, layout: ClassicLayout, around: int | None
) -> int | None:
    """The end of the record whose header is at `off` if that header is believable as the
    place to resume reading, else None. `around` is the last good record's seconds."""
    if off + 16 > size:
        return None
    sec, frac, caplen, origlen = struct.unpack_from(layout.endian + "IIII", buf, off)
    if not 0 < caplen <= layout.candidate_limit or not caplen <= origlen <= MAX_ORIGLEN:
        return None
    if frac >= layout.frac_limit:
        return None
    if around is not None and abs(sec - around) > WINDOW:
        return None
    end = off + 16 + caplen
    return end if end <= size else None


def find_record(
    buf: Buffer,
    start: int,
    size: int,
    layout: ClassicLayout,
    around: int | None,
    max_scan: int | None = None,
) -> int | None:
    """The first offset at or after `start` (and within `max_scan` bytes of it, default
    `MAX_SCAN`) holding a confirmed record header: plausible, and followed by another
    plausible header (near its own time) or by the end of the file. None when there is
    none. Headers near `around` (seconds) are looked for first; if there are none, any
    time will do: a capture may jump in time, and `around` may itself be damaged."""
    found = _scan_records(buf, start, size, layout, around, max_scan)
    if found is None and around is not None:
        found = _scan_records(buf, start, size, layout, None, max_scan)
    return found


def _scan_records(
    buf: Buffer,
    start: int,
    size: int,
    layout: ClassicLayout,
    around: int | None,
    max_scan: int | None,
) -> int | None:
    pattern, lead = _classic_prefilter(layout, around)
    stop = min(size, start + (MAX_SCAN if max_scan is None else max_scan) + 16)
    pos = start + lead
    while True:
        m = pattern.search(buf, pos, stop)
        if m is None:
            return None
        cand = m.start() - lead
        pos = m.start() + 1
        end = plausible_record(buf, cand, size, layout, around)
        if end is None:
            continue
        if end == size or end + 16 > size:
            return cand
        (sec,) = struct.unpack_from(layout.endian + "I", buf, cand)
        if plausible_record(buf, end, size, layout, sec) is not None or _cut_at_eof(
            buf, end, size, layout, sec
        ):
            return cand


def _cut_at_eof(buf: Buffer, off: int, size: int, layout: ClassicLayout, sec: int) -> bool:
    """A plausible header whose record the end of the file cut off also confirms."""
    f_sec, frac, caplen, origlen = struct.unpack_from(layout.endian + "IIII", buf, off)
    return (
        off + 16 + caplen > size
        and 0 < caplen <= layout.candidate_limit
        and caplen <= origlen <= MAX_ORIGLEN
        and frac < layout.frac_limit
        and abs(f_sec - sec) <= WINDOW
    )


def _classic_prefilter(layout: ClassicLayout, around: int | None) -> tuple[re.Pattern[bytes], int]:
    """A regular expression every plausible header matches, and how many bytes into the
    header it starts (it starts at its first constrained byte so the engine skips fast)."""
    secs = None
    if around is not None:
        secs = (max(0, around - WINDOW), min(0xFFFFFFFF, around + WINDOW))
    fields = (
        secs,
        (0, layout.frac_limit - 1),
        (1, layout.candidate_limit),
        (1, MAX_ORIGLEN),
    )
    classes: list[bytes] = []
    for bounds in fields:
        field = _field_classes(bounds)
        classes += field if layout.endian == ">" else field[::-1]
    lead = next(i for i, c in enumerate(classes) if c != b".")
    # a zero captured length is no candidate: zero-filled holes fail in C, not in Python
    classes.insert(8, b"(?!\\x00\\x00\\x00\\x00)")
    return re.compile(b"".join(classes[lead:]), re.DOTALL), lead


def _field_classes(bounds: tuple[int, int] | None) -> list[bytes]:
    """Per-byte character classes (most significant first) of a 32-bit field in a range:
    bytes above the first one where the bounds differ are fixed, that one is a range."""
    if bounds is None:
        return [b"."] * 4
    lo, hi = bounds
    out: list[bytes] = []
    for shift in (24, 16, 8, 0):
        a, b = (lo >> shift) & 0xFF, (hi >> shift) & 0xFF
        out.append(b"[\\x%02x-\\x%02x]" % (a, b))
        if a != b:
            break
    return out + [b"."] * (4 - len(out))


def plausible_block(buf: Buffer, off: int, size: int, endian: str) -> tuple[int, str] | None:
    """(end, byte order from there) of a pcapng block at `off` that could be real: a known
    type, a length that is a multiple of 4 and fits, and the same length at its end."""
    if off + 12 > size:
        return None
    if struct.unpack_from("<I", buf, off)[0] == _PCAPNG_SHB:
        bom = bytes(buf[off + 8 : off + 12])
        if bom == b"\x4d\x3c\x2b\x1a":
            endian = "<"
        elif bom == b"\x1a\x2b\x3c\x4d":
            endian = ">"
        else:
            return None
        minimum = 28
    else:
        btype = struct.unpack_from(endian + "I", buf, off)[0]
        if btype not in _PCAPNG_TYPES:
            return None
        minimum = 32 if btype == 6 else 16 if btype == 3 else 20 if btype == 1 else 12
    (blen,) = struct.unpack_from(endian + "I", buf, off + 4)
    if blen < minimum or blen % 4 or off + blen > size:
        return None
    if struct.unpack_from(endian + "I", buf, off + blen - 4)[0] != blen:
        return None
    return off + blen, endian


def find_block(
    buf: Buffer, start: int, size: int, endian: str, max_scan: int | None = None
) -> int | None:
    """The first offset at or after `start` (within `max_scan`, default `MAX_SCAN`) of a
    plausible pcapng block followed by another one or by the end of the file. None when
    there is none."""
    pattern = _BLOCK_PREFILTER[endian]
    stop = min(size, start + (MAX_SCAN if max_scan is None else max_scan) + 12)
    pos = start
    while True:
        m = pattern.search(buf, pos, stop)
        if m is None:
            return None
        cand = m.start()
        pos = cand + 1
        got = plausible_block(buf, cand, size, endian)
        if got is None:
            continue
        end, order = got
        if end == size or plausible_block(buf, end, size, order) is not None:
            return cand


def _block_prefilter(endian: str) -> re.Pattern[bytes]:
    """Known block types or the section header magic, written to start with a character
    class so the engine skips through non-candidates in C."""
    types = b"".join(b"\\x%02x" % t for t in _PCAPNG_TYPES)
    if endian == "<":
        return re.compile(b"[" + types + b"](?:\\x00\\x00\\x00|\\x0d\\x0d\\x0a)")
    return re.compile(b"[\\x00\\x0a](?:\\x00\\x00[" + types + b"]|\\x0d\\x0d\\x0a)")


_BLOCK_PREFILTER = {e: _block_prefilter(e) for e in "<>"}
