"""sock_diag over real netlink on loopback, and the message parser on hostile bytes."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.sensors.network.procindex import ProcIndex, process_info
from agent.sensors.network.sockdiag import DestroyListener, DiagSocket, SockDiag, parse_messages

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="destroy notifications need root")


def _drain(srv: socket.socket, got: list[int]) -> None:
    conn, _ = srv.accept()
    n = 0
    with conn:
        while data := conn.recv(1 << 20):
            n += len(data)
    got.append(n)


def test_lookup_dump_and_destroy_on_loopback() -> None:
    diag, listener = SockDiag(), DestroyListener()
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    got: list[int] = []
    t = threading.Thread(target=_drain, args=(srv, got))
    t.start()
    c = socket.create_connection(srv.getsockname())
    c.sendall(b"p" * 2_345_678)
    lport, dport = c.getsockname()[1], srv.getsockname()[1]
    lo = socket.inet_aton("127.0.0.1")
    found = diag.lookup(lo, lport, lo, dport)
    assert found is not None and found.inode and found.uid == os.getuid()
    assert ProcIndex().pid_of(found.inode) == os.getpid()
    assert process_info(os.getpid()).exe
    assert any(s.sport == lport and s.cookie == found.cookie for s in diag.dump())
    assert diag.lookup(lo, 1, lo, 2) is None
    c.close()
    t.join(5)
    deadline = time.monotonic() + 5
    mine: list[DiagSocket] = []
    while not mine and time.monotonic() < deadline:
        mine = [s for s in listener.read()[0] if s.cookie == found.cookie]
        time.sleep(0.05)
    (final,) = mine
    assert final.payload_out == got[0] == 2_345_678
    assert final.inode == 0  # the kernel zeroes the owner in destroy messages
    srv.close()
    diag.close()
    listener.close()


def test_parser_on_truncated_real_messages() -> None:
    hdr = struct.pack("=IHHII", 16 + 72 + 4 + 232, 20, 2, 1, 0)
    body = bytes([2, 1, 0, 0]) + b"\0" * 68
    tcp_info = bytearray(232)
    struct.pack_into("=QQ", tcp_info, 120, 11, 5)  # bytes_acked, bytes_received
    struct.pack_into("=QQ", tcp_info, 200, 10, 0)  # bytes_sent, bytes_retrans
    msg = hdr + body + struct.pack("=HH", 4 + 232, 2) + bytes(tcp_info)
    socks, done, err = parse_messages(msg)
    assert not done and not err
    assert len(socks) == 1 and socks[0].bytes_acked == 11 and socks[0].payload_out == 10
    for cut in range(len(msg)):
        parse_messages(msg[:cut])


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_parser_never_raises(data: bytes) -> None:
    socks, _done, _err = parse_messages(data)
    for s in socks:
        assert s.payload_out >= 0
    parse_messages(struct.pack("=IHHII", 16 + len(data), 20, 0, 0, 0) + data)


def test_overflow_is_reported_as_lost() -> None:
    listener = DestroyListener(buffer_bytes=4096)  # a few notifications fit, not 200
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(256)
    for _ in range(200):
        c = socket.create_connection(srv.getsockname())
        conn, _ = srv.accept()
        c.close()
        conn.close()
    time.sleep(0.3)
    socks, lost = listener.read()
    assert lost and len(socks) < 400
    srv.close()
    listener.close()


def test_udp_lookup_finds_the_sending_socket() -> None:
    diag = SockDiag()
    lo = socket.inet_aton("127.0.0.1")
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx,
    ):
        rx.bind(("127.0.0.1", 0))
        tx.sendto(b"x", rx.getsockname())  # unconnected: bound to 0.0.0.0:port
        found = diag.lookup_udp(lo, tx.getsockname()[1], lo, rx.getsockname()[1])
        assert found is not None and found.inode == os.fstat(tx.fileno()).st_ino
    diag.close()


def _diag_message(sport: int, dport: int, src: bytes, dst: bytes) -> bytes:
    """One SOCK_DIAG_BY_FAMILY message (IPv4) with a tcp_info attribute."""
    body = bytes([2, 1, 0, 0]) + struct.pack("!HH16s16s", sport, dport, src, dst)
    body += b"\0" * (72 - len(body))
    tcp_info = bytearray(232)
    struct.pack_into("=QQ", tcp_info, 120, 101, 0)  # bytes_acked (SYN + 100), received
    struct.pack_into("=QQ", tcp_info, 200, 100, 0)  # bytes_sent, bytes_retrans
    attr = struct.pack("=HH", 4 + 232, 2) + bytes(tcp_info)
    return struct.pack("=IHHII", 16 + 72 + len(attr), 20, 2, 1, 0) + body + attr


def test_a_declined_socket_is_skipped_and_the_rest_parsed() -> None:
    """What `want` declines (a local server's accepted connections) is not parsed past
    its addresses; the sockets after it in the same datagram still are."""
    a, b = bytes([10, 0, 0, 1]) + b"\0" * 12, bytes([10, 0, 0, 2]) + b"\0" * 12
    data = _diag_message(443, 50000, a, b) + _diag_message(40000, 443, a, b)
    asked: list[tuple[bytes, int, bytes, int]] = []

    def want(src: bytes, sport: int, dst: bytes, dport: int) -> bool:
        asked.append((src, sport, dst, dport))
        return sport >= 32768

    socks, _done, _err = parse_messages(data, want)
    assert [(s.sport, s.dport, s.payload_out) for s in socks] == [(40000, 443, 100)]
    assert asked == [(a[:4], 443, b[:4], 50000), (a[:4], 40000, b[:4], 443)]
    assert len(parse_messages(data)[0]) == 2  # without `want`: everything
