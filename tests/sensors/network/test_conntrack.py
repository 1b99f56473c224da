"""UDP volume from conntrack accounting, in the rig (nft turns conntrack on in the sender)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

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


@given(
    st.recursive(
        st.none() | st.integers() | st.text(max_size=5),
        lambda c: (
            st.dictionaries(st.sampled_from(["attrs", "CTA_TUPLE_ORIG", "x"]), c)
            | st.lists(c, max_size=3)
        ),
        max_leaves=20,
    )
)
def test_entry_parser_never_raises(msg: Any) -> None:
    parsed = entry_from_message(msg)  # hostile shapes give None, never an exception
    assert parsed is None or isinstance(parsed, ConntrackEntry)
