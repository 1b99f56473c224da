"""Joining a socket's destroy notification to its flow, in the two-namespace rig.

The sensor joins by socket cookie when its lookup on the SYN found the live socket; a
lookup that comes after the connection closed (a sensor behind on a busy host) finds a
TIME_WAIT remnant with a cookie of its own, or nothing after an abortive close, whose
notification has lost the peer port and the local address: then the 4-tuple, or the
local port and peer address, must do.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Iterable
from typing import Any

import pytest

from agent.sensors.network.flowstate import FlowState
from agent.sensors.network.packets import Packet
from agent.sensors.network.sensor import NetworkSensor
from tests.sensors.network.peers import Sink
from tests.sensors.network.rig import Rig
from tests.sensors.network.test_rig import _start_sink, _upload

pytestmark = [pytest.mark.netns]

N = 123_457  # payload bytes of the aborted connections


def _owned(sensor: NetworkSensor, port: int) -> None:
    """Wait until the sensor's SYN lookup found the socket of local `port`."""
    deadline = time.monotonic() + 15
    while not any(k[2] == port for k in list(sensor.cookies.values())):
        assert time.monotonic() < deadline, f"the sensor never looked up port {port}"
        time.sleep(0.01)


def _late_lookups(sensor: NetworkSensor) -> threading.Event:
    """Hold the sensor's SYN lookups (the early one from the wake-up socket and the one
    when the flow opens) until the returned event is set, as on a busy host where the
    sensor is behind. Its start-up dump (which adopts live connections) is
    waited for first, so that it cannot find the sockets early."""
    deadline = time.monotonic() + 15
    while sensor.dumps < 1:
        assert time.monotonic() < deadline, "the sensor's start-up dump never ran"
        time.sleep(0.01)
    assert sensor.table is not None
    attribute = sensor.table.on_new_flow
    assert attribute is not None
    gate = threading.Event()

    def late(st: FlowState) -> None:
        gate.wait(15)
        attribute(st)

    early = sensor._look_up_early

    def late_early(packets: Iterable[Packet]) -> None:  # the wake-up sockets' early look-up
        gate.wait(15)
        early(packets)

    sensor.table.on_new_flow = late
    sensor._look_up_early = late_early  # type: ignore[method-assign]
    return gate


def _abort_after(rig: Rig, sink: Sink, n: int, before_close: Any = None) -> int:
    """Connect, send `n` bytes the peer acknowledges reading, then close with SO_LINGER 0
    (tcp_disconnect: RST, tcp_info zeroed); the local port."""
    with rig.sender():
        s = socket.socket()
    s.connect((rig.peer_v4, sink.port))
    port = int(s.getsockname()[1])
    if before_close is not None:
        before_close(port)
    s.sendall(b"a" * n)
    assert s.recv(1) == b"k"  # the peer read all of it
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    return port


def test_destroy_notifications_join_by_cookie(rig: Rig, sensor_in: Any) -> None:
    sensor, out = sensor_in()
    sink = _start_sink(rig)
    acking = _start_sink(rig, ack_after=N)
    with rig.sender():
        s = socket.socket()
    with s:
        s.connect((rig.peer_v4, sink.port))
        clean = int(s.getsockname()[1])
        _owned(sensor, clean)
        s.sendall(b"c" * 5000)
        s.shutdown(socket.SHUT_WR)
        s.recv(1)
    aborted = _abort_after(rig, acking, N, lambda port: _owned(sensor, port))
    flows = out.wait_for(lambda fs: {clean, aborted} <= {f.src_port for f in fs})
    by_port = {f.src_port: f for f in flows}
    assert (by_port[clean].bytes_out, by_port[clean].byte_source) == (5000, "tcp_info")
    f = by_port[aborted]
    # the kernel zeroed tcp_info: the RST's sequence number is the exact count
    assert (f.bytes_out, f.byte_source, f.close_reason) == (N, "tcp_seq", "rst")
    assert f.process is not None and f.process.pid is not None
    st = sensor.status()
    assert (st["destroy_by_cookie"], st["destroy_by_tuple"], st["destroy_by_port"]) == (2, 0, 0)
    assert sensor.cookies == {}
    sink.stop()
    acking.stop()


def test_lookups_after_the_close_still_join(rig: Rig, sensor_in: Any) -> None:
    """The sensor's SYN lookups are held until both connections are gone: one in
    TIME_WAIT (an orderly close), one aborted (no socket left at all)."""
    sensor, out = sensor_in()
    gate = _late_lookups(sensor)
    sink = _start_sink(rig)
    acking = _start_sink(rig, ack_after=N)
    clean = _upload(rig, rig.peer_v4, sink.port, 7777)  # returns in TIME_WAIT
    aborted = _abort_after(rig, acking, N)
    gate.set()
    flows = out.wait_for(lambda fs: {clean, aborted} <= {f.src_port for f in fs})
    by_port = {f.src_port: f for f in flows}
    f = by_port[clean]
    assert (f.bytes_out, f.byte_source, f.close_reason) == (7777, "tcp_info", "fin")
    # the TIME_WAIT remnant reports inode 0 and uid 0: no owner rather than root
    assert f.process is None
    f = by_port[aborted]
    assert (f.bytes_out, f.byte_source, f.close_reason) == (N, "tcp_seq", "rst")
    st = sensor.status()
    assert (st["destroy_by_cookie"], st["destroy_by_tuple"], st["destroy_by_port"]) == (0, 1, 1)
    assert sensor.cookies == {}  # the remnant's cookie was not kept: it would never match
    sink.stop()
    acking.stop()


def test_two_connections_sharing_local_port_and_peer_are_not_guessed(
    rig: Rig, sensor_in: Any
) -> None:
    """Two sockets bound to one local port (SO_REUSEADDR) reach the same peer address on
    two ports: an aborted one's notification names neither peer port, so it is not
    joined by endpoint — the flow still ends exact, from the wire."""
    sensor, out = sensor_in()
    gate = _late_lookups(sensor)
    one = _start_sink(rig, ack_after=N)
    two = _start_sink(rig, ack_after=N)
    socks = []
    with rig.sender():
        for _ in range(2):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((rig.sender_v4, socks[0].getsockname()[1] if socks else 0))
            socks.append(s)
    port = socks[0].getsockname()[1]
    for s, sink in zip(socks, (one, two)):
        s.connect((rig.peer_v4, sink.port))
        s.sendall(b"b" * N)
        assert s.recv(1) == b"k"
    socks[0].setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    socks[0].close()
    gate.set()
    (f,) = out.wait_for(lambda fs: any(f.dst_port == one.port for f in fs))
    assert (f.src_port, f.bytes_out, f.byte_source, f.close_reason) == (port, N, "tcp_seq", "rst")
    assert sensor.status()["destroy_by_port"] == 0
    socks[1].close()
    one.stop()
    two.stop()


def test_the_owner_is_looked_up_from_the_wake_up_copy(rig: Rig, sensor_in: Any) -> None:
    """A connection that is over before the sensor gets to its SYN in the capture queue
    keeps its process: the wake-up socket's copy of the SYN was looked up at once
    (sock_diag and /proc), while the socket was still open."""
    sensor, out = sensor_in()
    deadline = time.monotonic() + 15
    while sensor.dumps < 1:  # the start-up dump must not be what finds the socket
        assert time.monotonic() < deadline, "the sensor's start-up dump never ran"
        time.sleep(0.01)
    assert sensor.table is not None
    attribute = sensor.table.on_new_flow
    assert attribute is not None
    opening, gate = threading.Event(), threading.Event()

    def late(st: FlowState) -> None:  # the flow opens only after the connection is over
        opening.set()
        gate.wait(15)
        attribute(st)

    sensor.table.on_new_flow = late
    sink = _start_sink(rig)
    with rig.sender():
        s = socket.socket()
    with s:
        s.connect((rig.peer_v4, sink.port))
        port = int(s.getsockname()[1])
        assert opening.wait(15)  # the sensor read the SYN (after its wake-up copy)
        s.sendall(b"e" * 3000)
        s.shutdown(socket.SHUT_WR)
        s.recv(1)
    gate.set()  # closed: a look-up now would find its TIME_WAIT remnant (inode 0)
    flows = out.wait_for(lambda fs: port in {f.src_port for f in fs})
    f = next(f for f in flows if f.src_port == port)
    assert (f.bytes_out, f.byte_source) == (3000, "tcp_info")
    assert f.process is not None and f.process.pid == os.getpid()
    assert sensor.status()["destroy_by_cookie"] == 1  # the early answer's cookie joined it
    sink.stop()
