"""Netlink dumps read with struct (nldump.py): the namespace's addresses and conntrack
messages, on real kernel answers and on hostile bytes; and the sensor's start without
pyroute2 (its import cost 0.09 s of CPU)."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st

from agent.sensors.network import conntrack, nldump
from agent.sensors.network.conntrack import ConntrackEntry, entry_from_message
from agent.sensors.network.host import address_of, local_addresses


def test_local_addresses_are_what_pyroute2_lists() -> None:
    from pyroute2 import IPRoute

    theirs: set[bytes] = set()
    with IPRoute() as ipr:
        for a in ipr.get_addr():
            addr = a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS")
            if addr:
                theirs.add(socket.inet_pton(a["family"], addr))
    ours = local_addresses()
    assert ours == theirs and socket.inet_pton(socket.AF_INET, "127.0.0.1") in ours


def test_starting_the_network_sensor_does_not_import_pyroute2() -> None:
    probe = (
        "import sys; from agent.sensors.network import sensor, host, conntrack; "
        "host.local_addresses(); print('pyroute2' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _nlattr(kind: int, payload: bytes) -> bytes:
    data = struct.pack("=HH", 4 + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def _ct_message(src: bytes, dst: bytes, sport: int, dport: int, sent: int, back: int) -> bytes:
    v6 = len(src) == 16
    ip = _nlattr(3 if v6 else 1, src) + _nlattr(4 if v6 else 2, dst)
    proto = _nlattr(1, b"\x11") + _nlattr(2 | 0x4000, struct.pack("!H", sport))
    proto += _nlattr(3 | 0x4000, struct.pack("!H", dport))
    orig = _nlattr(1 | 0x8000, ip) + _nlattr(2 | 0x8000, proto)
    counters = [_nlattr(2, struct.pack("!Q", n)) for n in (sent, back)]
    attrs = _nlattr(1 | 0x8000, orig) + _nlattr(9 | 0x8000, counters[0])
    attrs += _nlattr(10 | 0x8000, counters[1])
    body = struct.pack("=BBH", 10 if v6 else 2, 0, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), conntrack.CT_NEW, 2, 1, 0) + body


def test_a_message_is_read_field_by_field() -> None:
    src, dst = (
        socket.inet_pton(socket.AF_INET6, "fd00::1"),
        socket.inet_pton(socket.AF_INET6, "2001:db8::9"),
    )
    msg = _ct_message(src, dst, 40000, 443, 2**40 + 5, 7)
    ((kind, start, end),) = list(nldump.messages(msg))
    assert kind == conntrack.CT_NEW
    assert entry_from_message(msg, start, end) == ConntrackEntry(
        17, src, 40000, dst, 443, 2**40 + 5, 7
    )


@given(st.binary(max_size=400), st.integers(0, 400), st.integers(0, 400))
def test_hostile_bytes_never_raise(data: bytes, start: int, end: int) -> None:
    parsed = entry_from_message(data, start, end)
    assert parsed is None or isinstance(parsed, ConntrackEntry)
    for _kind, s, e in nldump.messages(data):
        assert 16 <= s <= e <= len(data)
        parsed = entry_from_message(data, s, e)
        assert parsed is None or isinstance(parsed, ConntrackEntry)


@given(st.data())
def test_a_real_message_cut_or_flipped_never_raises(data: st.DataObject) -> None:
    msg = bytearray(_ct_message(b"\n\0\0\1", b"\n\0\0\2", 5000, 53, 10, 20))
    for _ in range(data.draw(st.integers(0, 8))):
        msg[data.draw(st.integers(0, len(msg) - 1))] = data.draw(st.integers(0, 255))
    cut = bytes(msg[: data.draw(st.integers(0, len(msg)))])
    for _kind, s, e in nldump.messages(cut):
        parsed = entry_from_message(cut, s, e)
        assert parsed is None or isinstance(parsed, ConntrackEntry)


@given(st.binary(max_size=200), st.integers(0, 200), st.integers(0, 200))
def test_hostile_address_messages_never_raise(data: bytes, start: int, end: int) -> None:
    found = address_of(data, start, end)
    assert found is None or len(found) in (4, 16)
    for _kind, s, e in nldump.messages(data):
        found = address_of(data, s, e)
        assert found is None or len(found) in (4, 16)


def test_an_address_message_prefers_the_local_address() -> None:
    local, peer = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    body = struct.pack("=BBBBI", socket.AF_INET, 32, 0, 0, 3)
    both = body + _nlattr(1, peer) + _nlattr(2, local)
    assert address_of(both, 0, len(both)) == local
    only = body + _nlattr(1, peer)
    assert address_of(only, 0, len(only)) == peer
    wrong_size = body + _nlattr(2, b"\x01\x02")
    assert address_of(wrong_size, 0, len(wrong_size)) is None
