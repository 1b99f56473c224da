"""Exact TCP byte counts and socket owners from the kernel: NETLINK_SOCK_DIAG (inet_diag).

Three uses, all over raw netlink sockets parsed with `struct`:
- `DestroyListener`: the socket-destroy multicast groups (SKNLGRP_INET_TCP_DESTROY and
  the IPv6 one; binding needs CAP_NET_ADMIN) deliver each TCP socket's final tcp_info.
  ENOBUFS (a full receive buffer: notifications were lost) is reported to the caller,
  who counts it and repairs with a dump.
- `SockDiag.dump()`: all live TCP sockets with tcp_info, uid and inode (every few
  seconds while flows are open: long uploads become visible before they end; owners
  for the cookie join). A `want(src, sport, dst, dport)` predicate is asked before a
  socket's message is parsed past its addresses: on a server with thousands of
  accepted connections, only the sockets the sensor follows or may adopt cost more.
- `SockDiag.lookup()`: the one socket of a 4-tuple (on a captured outbound SYN).
Messages are per network namespace: the sockets serve the namespace they were opened in.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Callable
from typing import NamedTuple

from agent.sensors.network.netwatch import Multicast

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
INET_DIAG_INFO = 2
SKNLGRP_INET_TCP_DESTROY = 1
SKNLGRP_INET6_TCP_DESTROY = 3
NOCOOKIE = 0xFFFFFFFFFFFFFFFF
REPLY_TIMEOUT = 2  # seconds a request waits for the kernel's answer (then OSError EAGAIN)

# TCP states worth dumping: everything with a full socket except LISTEN and SYN_RECV.
_STATES = sum(1 << s for s in (1, 2, 4, 5, 7, 8, 9, 11))

_nlmsghdr = struct.Struct("=IHHII")
_req = struct.Struct("=BBBxI")  # family, protocol, extensions, states
_sockid = struct.Struct("!HH16s16s")  # sport, dport, src, dst (network order)
_diag_msg = struct.Struct("=BBBB")
_tail = struct.Struct("=IQIIIII")  # if, cookie, expires, rqueue, wqueue, uid, inode
_rtattr = struct.Struct("=HH")
Want = Callable[[bytes, int, bytes, int], bool]  # (src, sport, dst, dport) -> parse it?


class DiagSocket(NamedTuple):
    """One socket as inet_diag reports it. Byte counts are None without INET_DIAG_INFO."""

    family: int
    state: int
    src: bytes  # packed, 4 or 16 bytes
    sport: int
    dst: bytes
    dport: int
    cookie: int
    uid: int
    inode: int
    bytes_acked: int | None = None
    bytes_received: int | None = None
    bytes_sent: int | None = None
    bytes_retrans: int | None = None

    @property
    def payload_out(self) -> int:
        """Payload bytes the peer acknowledged: bytes_acked counts the SYN (and FIN when
        acked) too; bytes_sent − bytes_retrans is the unique payload sent, which caps it."""
        acked = max(0, (self.bytes_acked or 0) - 1)
        if self.bytes_sent is None or self.bytes_retrans is None:
            return acked
        return min(acked, max(0, self.bytes_sent - self.bytes_retrans))


def _addr(raw: bytes, family: int) -> bytes:
    return raw[:4] if family == socket.AF_INET else raw


def parse_messages(data: bytes, want: Want | None = None) -> tuple[list[DiagSocket], bool, int]:
    """Parse a netlink datagram: (sockets, done, error errno or 0). Never raises.
    With `want`, sockets it declines are skipped after their addresses are read."""
    out: list[DiagSocket] = []
    off = 0
    n = len(data)
    while off + 16 <= n:
        length, mtype, _flags, _seq, _pid = _nlmsghdr.unpack_from(data, off)
        if length < 16 or off + length > n:
            break
        body = off + 16
        end = off + length
        if mtype == NLMSG_DONE:
            return out, True, 0
        if mtype == NLMSG_ERROR:
            err = -struct.unpack_from("=i", data, body)[0] if end - body >= 4 else errno.EIO
            return out, True, err
        if mtype == SOCK_DIAG_BY_FAMILY and end - body >= 72:
            if want is not None:
                family = data[body]
                sport, dport, src, dst = _sockid.unpack_from(data, body + 4)
                if not want(_addr(src, family), sport, _addr(dst, family), dport):
                    off += (length + 3) & ~3
                    continue
            out.append(_parse_diag(data, body, end))
        off += (length + 3) & ~3
    return out, False, 0


def _parse_diag(data: bytes, p: int, end: int) -> DiagSocket:
    family, state, _timer, _retrans = _diag_msg.unpack_from(data, p)
    sport, dport, src, dst = _sockid.unpack_from(data, p + 4)
    _if, cookie, _exp, _rq, _wq, uid, inode = _tail.unpack_from(data, p + 40)
    info = None
    a = p + 72
    while a + 4 <= end:
        alen, atype = _rtattr.unpack_from(data, a)
        if alen < 4 or a + alen > end:
            break
        if atype == INET_DIAG_INFO:
            info = data[a + 4 : a + alen]
        a += (alen + 3) & ~3
    acked = received = sent = retrans = None
    if info is not None and len(info) >= 136:
        acked, received = struct.unpack_from("=QQ", info, 120)
        if len(info) >= 216:
            sent, retrans = struct.unpack_from("=QQ", info, 200)
    return DiagSocket(
        family,
        state,
        _addr(src, family),
        sport,
        _addr(dst, family),
        dport,
        cookie,
        uid,
        inode,
        acked,
        received,
        sent,
        retrans,
    )


def _request(
    family: int, flags: int, states: int, sock_id: bytes, seq: int, proto: int = socket.IPPROTO_TCP
) -> bytes:
    body = _req.pack(family, proto, 1 << (INET_DIAG_INFO - 1), states) + sock_id
    return _nlmsghdr.pack(16 + len(body), SOCK_DIAG_BY_FAMILY, flags, seq, 0) + body


def _sock_id(src: bytes, sport: int, dst: bytes, dport: int) -> bytes:
    return _sockid.pack(sport, dport, src.ljust(16, b"\0"), dst.ljust(16, b"\0")) + struct.pack(
        "=IQ", 0, NOCOOKIE
    )


class SockDiag:
    """Request/response sock_diag socket: dumps and exact lookups."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
        self.sock.bind((0, 0))
        # a kernel-side receive timeout, not settimeout(): Python polls before every
        # send and recv of a socket with a timeout, two more syscalls per lookup (per SYN)
        self.sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", REPLY_TIMEOUT, 0)
        )
        self._seq = 0

    def _ask(self, msg: bytes, dump: bool, want: Want | None = None) -> list[DiagSocket]:
        self.sock.send(msg)
        found: list[DiagSocket] = []
        while True:
            socks, done, err = parse_messages(self.sock.recv(1 << 16), want)
            found.extend(socks)
            if err and err != errno.ENOENT:
                raise OSError(err, os.strerror(err))
            if done or not dump:  # an exact lookup answers with one message
                return found

    def dump(self, want: Want | None = None) -> list[DiagSocket]:
        """Every live TCP socket (IPv4 and IPv6) with its tcp_info (those `want`
        accepts, when given)."""
        out: list[DiagSocket] = []
        for family in (socket.AF_INET, socket.AF_INET6):
            self._seq += 1
            zero = b"\0" * 48
            out.extend(
                self._ask(
                    _request(family, NLM_F_REQUEST | NLM_F_DUMP, _STATES, zero, self._seq),
                    True,
                    want,
                )
            )
        return out

    def lookup(self, src: bytes, sport: int, dst: bytes, dport: int) -> DiagSocket | None:
        """The TCP socket with this exact 4-tuple (local side first), or None."""
        family = socket.AF_INET if len(src) == 4 else socket.AF_INET6
        self._seq += 1
        msg = _request(
            family, NLM_F_REQUEST, 0xFFFFFFFF, _sock_id(src, sport, dst, dport), self._seq
        )
        try:
            found = self._ask(msg, False)
        except OSError:
            return None
        return found[0] if found else None

    def lookup_udp(self, src: bytes, sport: int, dst: bytes, dport: int) -> DiagSocket | None:
        """The UDP socket that sends from src:sport to dst:dport (connected or not).

        The kernel finds UDP sockets as a receiver would, so the request names the
        remote end first; the answer's inode and uid are the sender's."""
        family = socket.AF_INET if len(src) == 4 else socket.AF_INET6
        self._seq += 1
        msg = _request(
            family,
            NLM_F_REQUEST,
            0xFFFFFFFF,
            _sock_id(dst, dport, src, sport),
            self._seq,
            socket.IPPROTO_UDP,
        )
        try:
            found = self._ask(msg, False)
        except OSError:
            return None
        return found[0] if found else None

    def close(self) -> None:
        self.sock.close()


class DestroyListener(Multicast):
    """Receives the final tcp_info of every TCP socket freed in this namespace."""

    def __init__(self, buffer_bytes: int = 4 << 20) -> None:
        groups = (1 << (SKNLGRP_INET_TCP_DESTROY - 1)) | (1 << (SKNLGRP_INET6_TCP_DESTROY - 1))
        super().__init__(NETLINK_SOCK_DIAG, groups, buffer_bytes)

    def read(self) -> tuple[list[DiagSocket], bool]:
        """Pending notifications, and whether some were lost (ENOBUFS) since last read."""
        datagrams, lost = self._drain()
        return [s for data in datagrams for s in parse_messages(data)[0]], lost
