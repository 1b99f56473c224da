"""Community ID v1: the flow hash Zeek, Suricata and Corelight put on every connection.

A SIEM joins our flow records with a Zeek `conn.log` or a Suricata `eve.json` on this one
string, so it must be bit-for-bit the reference's (https://github.com/corelight/community-id-spec):
SHA-1 over the 2-byte seed, the two addresses and ports ordered so both directions give
the same hash, the protocol number and a zero pad byte; base64 of the digest, prefixed
with "1:". A pure function of the flow key, computed once per exported record.
"""

from __future__ import annotations

import base64
import hashlib
import struct

_PORTED = {6, 17, 132}  # TCP, UDP, SCTP: ports are part of the hash


def community_id(proto: int, src: bytes, sport: int, dst: bytes, dport: int, seed: int = 0) -> str:
    """Community ID v1 of a flow; `src`/`dst` are packed addresses (4 or 16 bytes)."""
    ported = proto in _PORTED
    # the endpoint that sorts lower goes first, so both directions hash alike
    swap = (src, sport) > (dst, dport) if ported else src > dst
    if swap:
        src, sport, dst, dport = dst, dport, src, sport
    data = struct.pack("!H", seed & 0xFFFF) + src + dst + struct.pack("!BB", proto, 0)
    if ported:
        data += struct.pack("!HH", sport, dport)
    return "1:" + base64.b64encode(hashlib.sha1(data, usedforsecurity=False).digest()).decode()
