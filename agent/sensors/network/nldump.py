"""Netlink request/dump sockets parsed with `struct`: what the sensor asked pyroute2 for.

The sensor's start used pyroute2 for two dumps (the namespace's addresses, RTM_GETADDR;
conntrack's UDP entries, IPCTNL_MSG_CT_GET), and importing pyroute2 costs 0.09 s of CPU:
its package imports IPDB, NDB, IPRoute and the whole rtnl message catalogue. Both dumps
are a request and a run of messages of a fixed layout, read here like sock_diag's
(sockdiag.py) and conntrack's NEW events (netwatch.py). Parsers never raise on what they
read: a message cut short or an attribute running past its message ends the walk.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
REPLY_TIMEOUT = 2  # seconds a dump waits for the kernel's next datagram (then OSError)
_NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER
_MAX_MESSAGES = 4096  # per datagram: a bound for hostile input, far above what one holds

nlmsghdr = struct.Struct("=IHHII")
_nlattr = struct.Struct("=HH")


def attrs(data: bytes, start: int, end: int) -> dict[int, tuple[int, int]]:
    """Netlink attributes in data[start:end]: type -> (payload start, payload end); the
    first of a repeated type wins."""
    found: dict[int, tuple[int, int]] = {}
    a, end = max(start, 0), min(end, len(data))
    while a + 4 <= end:
        alen, atype = _nlattr.unpack_from(data, a)
        if alen < 4 or a + alen > end:
            break
        found.setdefault(atype & _NLA_TYPE_MASK, (a + 4, a + alen))
        a += (alen + 3) & ~3
    return found


def messages(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(type, body start, end) of each whole message in one datagram, in order."""
    off, n = 0, len(data)
    for _ in range(_MAX_MESSAGES):
        if off + 16 > n:
            return
        length, mtype, _flags, _seq, _pid = nlmsghdr.unpack_from(data, off)
        if length < 16 or off + length > n:
            return
        yield mtype, off + 16, off + length
        off += (length + 3) & ~3


class DumpSocket:
    """A netlink socket that sends a dump request and collects the messages it answers."""

    def __init__(self, protocol: int) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
        try:
            self.sock.bind((0, 0))
            # a kernel-side timeout: a dump that never ends is an error, not a hang
            self.sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", REPLY_TIMEOUT, 0)
            )
        except OSError:
            self.sock.close()
            raise
        self._seq = 0

    def dump(self, mtype: int, body: bytes) -> list[tuple[bytes, int, int, int]]:
        """Send one dump request; (datagram, type, body start, end) of every answer up to
        NLMSG_DONE. An NLMSG_ERROR answer raises OSError with its errno."""
        self._seq += 1
        seq = self._seq
        flags = NLM_F_REQUEST | NLM_F_DUMP
        self.sock.send(nlmsghdr.pack(16 + len(body), mtype, flags, seq, 0) + body)
        out: list[tuple[bytes, int, int, int]] = []
        while True:
            data = self.sock.recv(1 << 16)
            for kind, start, end in messages(data):
                if nlmsghdr.unpack_from(data, start - 16)[3] != seq:
                    continue  # the answer to an earlier, abandoned request
                if kind == NLMSG_DONE:
                    return out
                if kind == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", data, start)[0] if end - start >= 4 else 0
                    if err:
                        raise OSError(err, os.strerror(err))
                    return out  # an acknowledgement
                out.append((data, kind, start, end))
            if not data:
                raise OSError(errno.EIO, "netlink socket closed during a dump")

    def close(self) -> None:
        self.sock.close()
