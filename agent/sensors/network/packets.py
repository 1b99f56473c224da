"""Header parsing for the few packets the network sensor looks at: pure `struct` code.

Both the live capture (frames the kernel BPF filter let through) and `egress-agent
replay` (every frame of a pcap) call `decode_ethernet` / `decode_ip`, which return one
`Packet` tuple or None for anything that is not IPv4/IPv6 TCP/UDP or is too short to
trust. No function here raises on hostile input: lengths are checked before every read
and the payload is described by offsets into the caller's buffer, never copied.
"""

from __future__ import annotations

import mmap
import struct
from typing import NamedTuple, TypeAlias

Buffer: TypeAlias = bytes | bytearray | memoryview | mmap.mmap
"""Anything frames are read from: a capture buffer, or the mmap of a pcap file."""

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
IPPROTO_TCP = 6
IPPROTO_UDP = 17

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10

# IPv6 extension headers we step over to find TCP/UDP (hop-by-hop, routing, dest opts).
_IPV6_EXT = frozenset((0, 43, 60))

_u16 = struct.Struct("!H")
_ipv4 = struct.Struct("!BxHHHBB2x4s4s")  # ver/ihl, total len, id, frag, ttl, proto, src, dst
_ipv6 = struct.Struct("!4xHBB16s16s")  # payload len, next header, hop limit, src, dst
_tcp = struct.Struct("!HHIIBB")  # sport, dport, seq, ack, data offset, flags
_udp = struct.Struct("!HHH")  # sport, dport, length


class Packet(NamedTuple):
    """One decoded transport header. Addresses are packed bytes (4 or 16 long).

    `payload_off` indexes the caller's buffer; `payload_len` is what the IP header
    says was sent (it may exceed what a snaplen-truncated capture holds: the caller
    checks against its own buffer before reading payload bytes).
    """

    proto: int
    src: bytes
    dst: bytes
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    payload_off: int
    payload_len: int


def decode_ethernet(buf: Buffer, off: int = 0, end: int | None = None) -> Packet | None:
    """Decode an Ethernet II frame (with up to two VLAN tags) starting at `off`."""
    if end is None:
        end = len(buf)
    if end - off < 14:
        return None
    (etype,) = _u16.unpack_from(buf, off + 12)
    off += 14
    for _ in range(2):
        if etype not in (ETH_P_8021Q, ETH_P_8021AD):
            break
        if end - off < 4:
            return None
        (etype,) = _u16.unpack_from(buf, off + 2)
        off += 4
    if etype in (ETH_P_IP, ETH_P_IPV6):
        return decode_ip(buf, off, end)
    return None


def decode_ip(buf: Buffer, off: int = 0, end: int | None = None) -> Packet | None:
    """Decode an IPv4 or IPv6 packet starting at `off` (raw IP link type)."""
    if end is None:
        end = len(buf)
    if end - off < 20:
        return None
    version = buf[off] >> 4
    if version == 4:
        vihl, total, _id, frag, _ttl, proto, src, dst = _ipv4.unpack_from(buf, off)
        ihl = (vihl & 0x0F) * 4
        if ihl < 20 or total < ihl or end - off < ihl:
            return None
        if frag & 0x1FFF:  # a later fragment carries no transport header
            return None
        l4 = off + ihl
        l4_len = total - ihl
    elif version == 6:
        if end - off < 40:
            return None
        plen, proto, _hops, src, dst = _ipv6.unpack_from(buf, off)
        l4 = off + 40
        l4_len = plen
        for _ in range(4):
            if proto not in _IPV6_EXT:
                break
            if end - l4 < 8:
                return None
            proto = buf[l4]
            ext_len = (buf[l4 + 1] + 1) * 8
            l4 += ext_len
            l4_len -= ext_len
        if l4_len < 0:
            return None
    else:
        return None
    if proto == IPPROTO_TCP:
        if end - l4 < 14:
            return None
        sport, dport, seq, ack, doff, flags = _tcp.unpack_from(buf, l4)
        hlen = (doff >> 4) * 4
        if hlen < 20 or hlen > l4_len:
            return None
        return Packet(proto, src, dst, sport, dport, seq, ack, flags, l4 + hlen, l4_len - hlen)
    if proto == IPPROTO_UDP:
        if end - l4 < 8:
            return None
        sport, dport, _ulen = _udp.unpack_from(buf, l4)
        if l4_len < 8:
            return None
        return Packet(proto, src, dst, sport, dport, 0, 0, 0, l4 + 8, l4_len - 8)
    return None


def payload_bytes(buf: Buffer, pkt: Packet, end: int, limit: int = 4096) -> bytes:
    """The captured part of the payload (at most `limit` bytes)."""
    stop = min(end, pkt.payload_off + pkt.payload_len, pkt.payload_off + limit)
    if stop <= pkt.payload_off:
        return b""
    return bytes(buf[pkt.payload_off : stop])
