"""Facts about this host's network namespace that the live sensor needs.

Which addresses are local (to tell outbound from inbound), which ports are ephemeral
(to adopt connections older than the agent), and what is loopback (never reported).
"""

from __future__ import annotations

import socket
import struct

from agent.sensors.network import nldump

_LOOPBACK6 = socket.inet_pton(socket.AF_INET6, "::1")
NETLINK_ROUTE = 0
RTM_NEWADDR = 20
RTM_GETADDR = 22
IFA_ADDRESS = 1
IFA_LOCAL = 2
_ifaddrmsg = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, interface index
_SIZES: dict[int, int] = {socket.AF_INET: 4, socket.AF_INET6: 16}


def is_loopback(address: bytes) -> bool:
    return address == _LOOPBACK6 or (len(address) == 4 and address[0] == 127)


def address_of(data: bytes, start: int, end: int) -> bytes | None:
    """The packed local address of one RTM_NEWADDR message body (IFA_LOCAL, else
    IFA_ADDRESS: on a point-to-point link IFA_ADDRESS is the peer's), None when it has
    none of its family's size."""
    start, end = max(start, 0), min(end, len(data))
    if end - start < _ifaddrmsg.size:
        return None
    family = data[start]
    size = _SIZES.get(family)
    found = nldump.attrs(data, start + _ifaddrmsg.size, end)
    for kind in (IFA_LOCAL, IFA_ADDRESS):
        span = found.get(kind)
        if span is not None and span[1] - span[0] == size:
            return data[span[0] : span[1]]
    return None


def local_addresses() -> set[bytes]:
    """Packed addresses of this network namespace's interfaces (an rtnetlink dump)."""
    out: set[bytes] = set()
    dumper = nldump.DumpSocket(NETLINK_ROUTE)
    try:
        for data, kind, start, end in dumper.dump(
            RTM_GETADDR, _ifaddrmsg.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        ):
            if kind == RTM_NEWADDR:
                addr = address_of(data, start, end)
                if addr is not None:
                    out.add(addr)
    finally:
        dumper.close()
    return out


def ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = f.read().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999
