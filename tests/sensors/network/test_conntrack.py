"""UDP volume from conntrack accounting, in the rig (nft turns conntrack on in the sender)."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import struct
import subprocess
import time
from typing import Any

import pytest

from agent.sensors.network import conntrack, nldump
from agent.sensors.network.conntrack import ConntrackEntry, entry_from_message
from tests.sensors.network.rig import Rig

pytestmark = pytest.mark.netns


def _enable_conntrack(rig: Rig) -> None:
    if shutil.which("nft") is None:
        pytest.skip("nft (Debian nftables) not installed: cannot turn conntrack on in the rig")
    ns = ["ip", "netns", "exec", rig.sender_ns]
    for cmd in (
        ["nft", "add", "table", "inet", "ea"],
        ["nft", "add chain inet ea out { type filter hook output priority 0; }"],
        ["nft", "add", "rule", "inet", "ea", "out", "ct", "state", "new", "counter"],
        ["sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1"],
    ):
        subprocess.run(ns + cmd, check=True, capture_output=True)


def _udp_receiver(count: list[int], sock: socket.socket) -> None:
    sock.settimeout(5)
    try:
        while True:
            count[0] += len(sock.recv(65536))
    except OSError:
        pass


def test_udp_bulk_counted_by_conntrack(rig: Rig, sensor_in: Any) -> None:
    _enable_conntrack(rig)
    sensor, out = sensor_in(idle_timeout=4.0)
    assert sensor.status()["udp_accounting"] == "conntrack"
    with rig.peer():
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind((rig.peer_v4, 0))
    got = [0]
    rig.run_in(rig.peer_ns, _udp_receiver, got, rx)
    with rig.sender():
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with tx:
        for _ in range(300):
            tx.sendto(b"u" * 1000, (rig.peer_v4, rx.getsockname()[1]))
            time.sleep(0.0005)
        port = tx.getsockname()[1]
        flows = out.wait_for(lambda fs: any(f.src_port == port for f in fs), timeout=20)
    (f,) = [f for f in flows if f.src_port == port]
    assert (f.protocol, f.byte_source, f.close_reason) == ("udp", "conntrack_l3", "idle")
    assert f.bytes_out == 300 * (1000 + 8 + 20)  # IP-level: headers included
    assert f.process is not None and f.process.pid == os.getpid()
    time.sleep(4)  # the conntrack entry outlives our export: no second record
    assert len([f for f in out.flows if f.src_port == port]) == 1
    rx.close()


def test_without_accounting_the_reason_is_shown(rig: Rig, sensor_in: Any) -> None:
    sensor, _out = sensor_in()
    assert str(sensor.status()["udp_accounting"]).startswith("captured packets only")


def _pyroute2_entries() -> list[ConntrackEntry]:
    """The same dump through pyroute2's NFCTSocket (what the sensor used before): the
    oracle for the struct parser."""
    from pyroute2 import NFCTSocket

    out = []
    for family in (socket.AF_INET, socket.AF_INET6):
        with NFCTSocket(nfgen_family=family) as s:
            for msg in s.dump():
                ip = msg.get_nested("CTA_TUPLE_ORIG", "CTA_TUPLE_IP")
                proto = msg.get_nested("CTA_TUPLE_ORIG", "CTA_TUPLE_PROTO")
                src = ip.get_attr("CTA_IP_V4_SRC") or ip.get_attr("CTA_IP_V6_SRC")
                dst = ip.get_attr("CTA_IP_V4_DST") or ip.get_attr("CTA_IP_V6_DST")
                counters = [msg.get_nested(k, "CTA_COUNTERS_BYTES") for k in _COUNTERS]
                out.append(
                    ConntrackEntry(
                        proto.get_attr("CTA_PROTO_NUM"),
                        ipaddress.ip_address(src).packed,
                        proto.get_attr("CTA_PROTO_SRC_PORT"),
                        ipaddress.ip_address(dst).packed,
                        proto.get_attr("CTA_PROTO_DST_PORT"),
                        *(-1 if c is None else c for c in counters),
                    )
                )
    return out


_COUNTERS = ("CTA_COUNTERS_ORIG", "CTA_COUNTERS_REPLY")


def test_the_dump_reads_what_pyroute2_reads(rig: Rig) -> None:
    _enable_conntrack(rig)
    with rig.peer():
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind((rig.peer_v4, 0))
    with rig.sender():
        senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
        for i, tx in enumerate(senders):
            for _ in range(i + 1):
                tx.sendto(b"q" * (100 + i), (rig.peer_v4, rx.getsockname()[1]))
        time.sleep(0.2)
        dumper = nldump.DumpSocket(conntrack.NETLINK_NETFILTER)
        ours = []
        for family in (socket.AF_INET, socket.AF_INET6):
            body = struct.pack("=BBH", family, 0, 0)
            for data, kind, start, end in dumper.dump(conntrack.CT_GET, body):
                assert kind == conntrack.CT_NEW
                ours.append(entry_from_message(data, start, end))
        dumper.close()
        theirs = _pyroute2_entries()
        udp = conntrack.Conntrack().dump()
    for tx in senders:
        tx.close()
    assert len(ours) >= 3 and sorted(map(repr, ours)) == sorted(map(repr, theirs))
    port = rx.getsockname()[1]
    sent = sorted(e.bytes_orig for e in udp if e.dport == port)
    assert sent == [1 * (100 + 28), 2 * (101 + 28), 3 * (102 + 28)]  # IP and UDP headers
    rx.close()
