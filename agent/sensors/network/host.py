"""Facts about this host's network namespace that the live sensor needs.

Which addresses are local (to tell outbound from inbound), which ports are ephemeral
(to adopt connections older than the agent), and what is loopback (never reported).
"""

from __future__ import annotations

import socket

_LOOPBACK6 = socket.inet_pton(socket.AF_INET6, "::1")


def is_loopback(address: bytes) -> bool:
    return address == _LOOPBACK6 or (len(address) == 4 and address[0] == 127)


def local_addresses() -> set[bytes]:
    """Packed addresses of this network namespace's interfaces."""
    from pyroute2 import IPRoute

    out: set[bytes] = set()
    with IPRoute() as ipr:
        for a in ipr.get_addr():
            addr = a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS")
            if addr:
                out.add(socket.inet_pton(a["family"], addr))
    return out


def ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = f.read().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999
