"""Destination names from the wire: TLS SNI, HTTP Host, DNS answers, and the name cache.

Pure parsers over untrusted bytes (hostile-input safe: every read is bounds-checked, a
malformed message yields None or an empty list, never an exception) plus `NameCache`,
the bounded address→name map that DNS answers fill and flows read. The flow table
calls these on the rare first-payload and DNS packets; nothing here runs per bulk packet.
"""

from __future__ import annotations

import re
import struct
import time
from collections import OrderedDict
from typing import NamedTuple

_HOST_RE = re.compile(rb"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})$")
_HTTP_METHODS = (
    b"GET ",
    b"POST ",
    b"PUT ",
    b"HEAD ",
    b"DELETE ",
    b"PATCH ",
    b"OPTIONS ",
    b"CONNECT ",
)
_HTTP_PREFIXES = tuple(m[:4] for m in _HTTP_METHODS)  # what the BPF filter matches on


def _hostname(raw: bytes) -> str | None:
    raw = raw.rstrip(b".")
    if not raw or len(raw) > 253 or not _HOST_RE.match(raw):
        return None
    return raw.decode("ascii").lower()


def tls_sni(data: bytes) -> str | None:
    """The server name of a TLS ClientHello record, or None.

    Works on the first segment only: when the hello is split, SNI is still found if it
    lies in the bytes given (it usually does; it is one of the first extensions).
    """
    n = len(data)
    if n < 9 or data[0] != 0x16 or data[1] != 0x03 or data[5] != 0x01:
        return None
    p = 9 + 2 + 32  # record header(5) + handshake header(4) + version + random
    if p >= n:
        return None
    p += 1 + data[p]  # session id
    if p + 2 > n:
        return None
    p += 2 + int.from_bytes(data[p : p + 2], "big")  # cipher suites
    if p >= n:
        return None
    p += 1 + data[p]  # compression methods
    if p + 2 > n:
        return None
    ext_end = min(n, p + 2 + int.from_bytes(data[p : p + 2], "big"))
    p += 2
    while p + 4 <= ext_end:
        etype = int.from_bytes(data[p : p + 2], "big")
        elen = int.from_bytes(data[p + 2 : p + 4], "big")
        p += 4
        if etype == 0:  # server_name
            q = p + 2  # server_name_list length
            stop = min(p + elen, ext_end)
            while q + 3 <= stop:
                ntype = data[q]
                nlen = int.from_bytes(data[q + 1 : q + 3], "big")
                if q + 3 + nlen > stop:
                    return None
                if ntype == 0:
                    return _hostname(data[q + 3 : q + 3 + nlen])
                q += 3 + nlen
            return None
        p += elen
    return None


def is_http_request(data: bytes) -> bool:
    return data[:4] in _HTTP_PREFIXES


def http_host(data: bytes) -> str | None:
    """The Host header of an HTTP/1.x request head, without its port, or None."""
    if not data.startswith(_HTTP_METHODS):
        return None
    head = data.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n")[1:64]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"host":
            value = value.strip()
            if value.startswith(b"["):  # [v6]:port
                return None
            return _hostname(value.rsplit(b":", 1)[0] if value.count(b":") == 1 else value)
    return None


class DnsAnswer(NamedTuple):
    address: bytes  # packed IPv4 or IPv6
    name: str  # the name the client asked for (start of any CNAME chain)
    ttl: int


_dns_header = struct.Struct("!HHHHHH")
_rr = struct.Struct("!HHIH")


def _read_name(msg: bytes, p: int) -> tuple[str | None, int]:
    """Decode a (possibly compressed) name at p; return it and the offset after it."""
    labels: list[bytes] = []
    after = -1
    jumps = 0
    n = len(msg)
    total = 0
    while True:
        if p >= n:
            return None, -1
        ln = msg[p]
        if ln == 0:
            p += 1
            break
        if ln & 0xC0 == 0xC0:
            if p + 1 >= n or jumps > 16:
                return None, -1
            if after < 0:
                after = p + 2
            p = ((ln & 0x3F) << 8) | msg[p + 1]
            jumps += 1
            continue
        if ln & 0xC0:
            return None, -1
        if p + 1 + ln > n:
            return None, -1
        labels.append(msg[p + 1 : p + 1 + ln])
        total += ln + 1
        if total > 255:
            return None, -1
        p += 1 + ln
    name = _hostname(b".".join(labels)) if labels else None
    return name, after if after >= 0 else p


def dns_answers(msg: bytes) -> list[DnsAnswer]:
    """Address records of a DNS response, each mapped to the question's name."""
    if len(msg) < 12:
        return []
    _id, flags, qd, an, _ns, _ar = _dns_header.unpack_from(msg, 0)
    if not flags & 0x8000 or flags & 0x000F or qd == 0 or an == 0:
        return []  # not a response, an error rcode, or nothing answered
    p = 12
    qname: str | None = None
    for _ in range(min(qd, 4)):
        name, p = _read_name(msg, p)
        if p < 0 or p + 4 > len(msg):
            return []
        qname = qname or name
        p += 4
    if qname is None:
        return []
    chain = {qname}  # names that lead to the question: CNAME targets join it
    out: list[DnsAnswer] = []
    for _ in range(min(an, 64)):
        owner, p = _read_name(msg, p)
        if p < 0 or p + 10 > len(msg):
            break
        rtype, _cls, ttl, rdlen = _rr.unpack_from(msg, p)
        p += 10
        if p + rdlen > len(msg):
            break
        if owner in chain:
            if (rtype == 1 and rdlen == 4) or (rtype == 28 and rdlen == 16):
                out.append(DnsAnswer(msg[p : p + rdlen], qname, ttl))
            elif rtype == 5:
                target, _ = _read_name(msg, p)
                if target:
                    chain.add(target)
        p += rdlen
    return out


class NameCache:
    """Address → name learned from DNS answers: bounded LRU, entries expire with their TTL.

    TTLs are clamped to [min_ttl, max_ttl] so a 0-second answer still names the
    connection that follows it, and a week-long one does not pin memory.
    """

    def __init__(self, size: int = 65536, min_ttl: float = 60.0, max_ttl: float = 86400.0) -> None:
        self.size = size
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self._map: OrderedDict[bytes, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._map)

    def add(self, address: bytes, name: str, ttl: float, now: float | None = None) -> None:
        now = time.time() if now is None else now
        ttl = min(max(ttl, self.min_ttl), self.max_ttl)
        self._map[address] = (name, now + ttl)
        self._map.move_to_end(address)
        while len(self._map) > self.size:
            self._map.popitem(last=False)

    def get(self, address: bytes, now: float | None = None) -> str | None:
        hit = self._map.get(address)
        if hit is None:
            return None
        name, expires = hit
        if (time.time() if now is None else now) > expires:
            del self._map[address]
            return None
        return name
