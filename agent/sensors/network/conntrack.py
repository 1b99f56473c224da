"""UDP volume from the kernel's connection tracking (nf_conntrack accounting).

The capture filter keeps UDP bulk data away from Python, so a QUIC upload or any other
UDP conversation gets its byte counts from conntrack: a dump every few seconds (a
ctnetlink request) gives each conversation's original-direction and reply byte
counters. They are IP-level bytes, headers included (`byte_source="conntrack_l3"`),
and need `net.netfilter.nf_conntrack_acct=1` plus conntrack active in the namespace
(any firewall rule that uses it). The last seconds of a conversation that ends between
two dumps are not counted: a small undercount, never an overcount.
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path
from typing import NamedTuple

from agent.sensors.network import nldump

IPPROTO_UDP = 17
ACCT_SYSCTL = Path("/proc/sys/net/netfilter/nf_conntrack_acct")
NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW = 0
IPCTNL_MSG_CT_GET = 1
CT_NEW = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW
CT_GET = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET
# attribute numbers (linux/netfilter/nfnetlink_conntrack.h)
CTA_TUPLE_ORIG, CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY = 1, 9, 10
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_COUNTERS_BYTES = 2
_nfgenmsg = struct.Struct("=BBH")  # family, version (NFNETLINK_V0), resource id


class ConntrackEntry(NamedTuple):
    proto: int
    src: bytes
    sport: int
    dst: bytes
    dport: int
    bytes_orig: int
    bytes_reply: int


def _address(data: bytes, ip: dict[int, tuple[int, int]], v4: int, v6: int) -> bytes | None:
    for kind, size in ((v4, 4), (v6, 16)):
        span = ip.get(kind)
        if span is not None:
            return data[span[0] : span[1]] if span[1] - span[0] == size else None
    return None


def _int(data: bytes, span: tuple[int, int] | None, size: int) -> int | None:
    """A big-endian (network order) integer attribute of exactly `size` bytes."""
    if span is None or span[1] - span[0] != size:
        return None
    return int.from_bytes(data[span[0] : span[1]], "big")


def _counter(data: bytes, top: dict[int, tuple[int, int]], kind: int) -> int:
    span = top.get(kind)
    if span is None:
        return -1
    value = _int(data, nldump.attrs(data, *span).get(CTA_COUNTERS_BYTES), 8)
    return -1 if value is None else value


def entry_from_message(data: bytes, start: int, end: int) -> ConntrackEntry | None:
    """One ctnetlink message body (after the netlink header: nfgenmsg, then attributes)
    → entry, or None when its original tuple lacks an address, the protocol or a port.
    Byte counters missing (accounting off) are -1."""
    start, end = max(start, 0), min(end, len(data))
    if end - start < _nfgenmsg.size:
        return None
    top = nldump.attrs(data, start + _nfgenmsg.size, end)
    orig = top.get(CTA_TUPLE_ORIG)
    if orig is None:
        return None
    tuple_orig = nldump.attrs(data, *orig)
    ip_span, proto_span = tuple_orig.get(CTA_TUPLE_IP), tuple_orig.get(CTA_TUPLE_PROTO)
    if ip_span is None or proto_span is None:
        return None
    ip = nldump.attrs(data, *ip_span)
    src = _address(data, ip, CTA_IP_V4_SRC, CTA_IP_V6_SRC)
    dst = _address(data, ip, CTA_IP_V4_DST, CTA_IP_V6_DST)
    proto = nldump.attrs(data, *proto_span)
    num = _int(data, proto.get(CTA_PROTO_NUM), 1)
    sport = _int(data, proto.get(CTA_PROTO_SRC_PORT), 2)
    dport = _int(data, proto.get(CTA_PROTO_DST_PORT), 2)
    if src is None or dst is None or num is None or sport is None or dport is None:
        return None
    return ConntrackEntry(
        num,
        src,
        sport,
        dst,
        dport,
        _counter(data, top, CTA_COUNTERS_ORIG),
        _counter(data, top, CTA_COUNTERS_REPLY),
    )


class Conntrack:
    """Dumps UDP conntrack entries with their byte counters."""

    def __init__(self) -> None:
        try:
            acct = ACCT_SYSCTL.read_text().strip()
        except OSError:
            acct = ""
        if acct != "1":
            raise OSError("accounting is off (sysctl net.netfilter.nf_conntrack_acct=0)")
        self._sock = nldump.DumpSocket(NETLINK_NETFILTER)

    def dump(self) -> list[ConntrackEntry]:
        out = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for data, kind, start, end in self._sock.dump(CT_GET, _nfgenmsg.pack(family, 0, 0)):
                if kind != CT_NEW:
                    continue
                e = entry_from_message(data, start, end)
                if e is not None and e.proto == IPPROTO_UDP and e.bytes_orig >= 0:
                    out.append(e)
        return out

    def close(self) -> None:
        self._sock.close()
