"""Kernel notifications that let the network sensor sleep instead of polling.

A quiet host must cost the sensor nothing, so the two facts it used to poll for arrive
as netlink multicast messages instead, and its loop sleeps until one of them (or a
packet, or a deadline of its own) is due:
- `AddressWatch` (rtnetlink, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR): an address was
  added or removed (DHCP, a VPN coming up), so the set of local addresses that tells
  outbound from inbound is re-read — instead of every 30 s.
- `ConntrackEvents` (NETLINK_NETFILTER, NFNLGRP_CONNTRACK_NEW): a new conntrack entry.
  A UDP conversation that the capture filter never shows Python (no DNS, no QUIC
  Initial) is adopted from a conntrack dump; the event says when a dump is worth doing,
  instead of dumping every 3 s on a quiet host. Only UDP entries matter (TCP has
  sock_diag), so messages are parsed just far enough to find the protocol number.
Both are optional: when a socket cannot be opened, the sensor falls back to polling.
"""

from __future__ import annotations

import errno
import socket

from agent.sensors.network.nldump import attrs, messages
from agent.sensors.network.sockbuf import set_receive_buffer

NETLINK_ROUTE = 0
NETLINK_NETFILTER = 12
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100
NFNLGRP_CONNTRACK_NEW = 1
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW = 0
CTA_TUPLE_ORIG = 1
CTA_TUPLE_PROTO = 2
CTA_PROTO_NUM = 1
_CT_NEW = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW
_NFGENMSG = 4


class Multicast:
    """A non-blocking netlink socket joined to some multicast groups (also the base of
    sock_diag's destroy listener)."""

    def __init__(self, protocol: int, groups: int, buffer_bytes: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
        if buffer_bytes is not None:  # a burst of notifications must not overflow it
            set_receive_buffer(self.sock, buffer_bytes)
        try:
            self.sock.bind((0, groups))  # some groups need CAP_NET_ADMIN
        except OSError:
            self.sock.close()
            raise
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def _drain(self) -> tuple[list[bytes], bool]:
        """Every datagram queued now, and whether some were lost (ENOBUFS)."""
        out: list[bytes] = []
        lost = False
        while True:
            try:
                out.append(self.sock.recv(1 << 16))
            except BlockingIOError:
                return out, lost
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                lost = True

    def close(self) -> None:
        self.sock.close()


class AddressWatch(Multicast):
    """Wakes the sensor when an interface address is added or removed."""

    def __init__(self) -> None:
        super().__init__(NETLINK_ROUTE, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR)

    def changed(self) -> bool:
        """Whether anything arrived (the messages themselves do not matter: the caller
        re-reads the whole address list, which also covers lost messages)."""
        datagrams, lost = self._drain()
        return bool(datagrams) or lost


class ConntrackEvents(Multicast):
    """New conntrack entries; `udp_started()` says whether a UDP one was among them."""

    def __init__(self) -> None:
        super().__init__(NETLINK_NETFILTER, 1 << (NFNLGRP_CONNTRACK_NEW - 1))

    def udp_started(self) -> bool:
        """True if a new UDP conversation (or a lost message, which might have been one)
        was reported since the last call."""
        datagrams, lost = self._drain()
        return lost or any(new_protocols(d) & {socket.IPPROTO_UDP} for d in datagrams)


def new_protocols(data: bytes) -> set[int]:
    """Transport protocol numbers of the conntrack NEW messages in one netlink datagram.

    Reads only the original tuple's CTA_PROTO_NUM; anything malformed is skipped, never
    raised on (the kernel writes these, but a parser stays bounded anyway)."""
    out: set[int] = set()
    for mtype, body, end in messages(data):
        if mtype != _CT_NEW:
            continue
        tuple_orig = attrs(data, body + _NFGENMSG, end).get(CTA_TUPLE_ORIG)
        if tuple_orig is not None:
            proto = attrs(data, *tuple_orig).get(CTA_TUPLE_PROTO)
            if proto is not None:
                num = attrs(data, *proto).get(CTA_PROTO_NUM)
                if num is not None and num[1] > num[0]:
                    out.add(data[num[0]])
    return out
