"""The netlink notifications that wake the sensor: the conntrack NEW parser on its own
(built messages and hostile bytes), and the live watchers in the rig."""

from __future__ import annotations

import math
import socket
import struct
import subprocess
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.sensors.network.netwatch import new_protocols
from tests.sensors.network.rig import Rig


def _attr(kind: int, payload: bytes, nested: bool = False) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind | (0x8000 if nested else 0)) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _ct_new(proto: int, v6: bool = False, mtype: int = 0x100) -> bytes:
    """A conntrack NEW event as ctnetlink writes it: nfgenmsg, then the original tuple
    (addresses, then protocol number and ports)."""
    size = 16 if v6 else 4
    ip = _attr(3 if v6 else 1, b"\1" * size) + _attr(4 if v6 else 2, b"\2" * size)
    l4 = _attr(1, bytes([proto])) + _attr(2, b"\x00\x35") + _attr(3, b"\x9c\x40")
    orig = _attr(1, _attr(1, ip, True) + _attr(2, l4, True), True)
    body = struct.pack("=BBH", 10 if v6 else 2, 0, 0) + orig + _attr(3, struct.pack("!I", 8))
    return struct.pack("=IHHII", 16 + len(body), mtype, 0, 1, 0) + body


def test_new_udp_and_tcp_conversations_are_told_apart() -> None:
    assert new_protocols(_ct_new(17)) == {17}
    assert new_protocols(_ct_new(6, v6=True)) == {6}
    assert new_protocols(_ct_new(6) + _ct_new(17, v6=True)) == {6, 17}  # one datagram
    assert new_protocols(_ct_new(17, mtype=0x102)) == set()  # a DELETE, not a NEW
    assert new_protocols(_ct_new(17)[:30]) == set()  # cut short


@given(st.binary(max_size=512))
def test_conntrack_parser_never_raises(data: bytes) -> None:
    assert new_protocols(data) <= set(range(256))


@given(st.binary(max_size=64), st.integers(0, 200))
def test_conntrack_parser_survives_a_corrupted_message(noise: bytes, at: int) -> None:
    msg = bytearray(_ct_new(17))
    msg[at % len(msg) : at % len(msg) + len(noise)] = noise
    assert new_protocols(bytes(msg)) <= set(range(256))


@pytest.mark.netns
def test_a_quiet_sensor_has_nothing_due(rig: Rig, sensor_in: Any) -> None:
    """After its first dump, a sensor with no open flow sleeps until a packet or a
    notification arrives (and MAX_SLEEP for its heartbeat): no deadline of its own."""
    sensor, _out = sensor_in(idle_timeout=1.0)
    deadline = time.monotonic() + 10
    while sensor.dumps < 1 or sensor.next_deadline() != math.inf:
        assert time.monotonic() < deadline, (sensor.dumps, sensor.next_deadline())
        time.sleep(0.05)
    with rig.sender():
        s = socket.socket()
    s.setblocking(False)
    try:
        s.connect((rig.peer_v4, 9))  # the peer resets it: a flow opens and closes
    except BlockingIOError:
        pass
    deadline = time.monotonic() + 10
    while sensor.status()["packets"] == 0:
        assert time.monotonic() < deadline, "the SYN was not seen"
        time.sleep(0.05)
    s.close()
    deadline = time.monotonic() + 15  # the flow's timeouts pass, then nothing is due again
    while sensor.status()["open_flows"] or sensor.next_deadline() != math.inf:
        assert time.monotonic() < deadline, (sensor.status(), sensor.next_deadline())
        time.sleep(0.1)


@pytest.mark.netns
def test_a_new_address_is_local_at_once(rig: Rig, sensor_in: Any) -> None:
    """Addresses are re-read when the kernel announces a change, not on a timer."""
    sensor, _out = sensor_in()
    packed = socket.inet_pton(socket.AF_INET, "10.203.0.9")
    assert packed not in sensor.local
    subprocess.run(
        ["ip", "-n", rig.sender_ns, "addr", "add", "10.203.0.9/32", "dev", rig.sender_if],
        check=True,
        capture_output=True,
    )
    deadline = time.monotonic() + 10  # the old timer re-read them every 30 s
    while packed not in sensor.local:
        assert time.monotonic() < deadline, "the new address was not noticed"
        time.sleep(0.05)
