"""Community ID v1 against the reference implementation (`communityid`) on scapy packets."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import communityid
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Packet

from agent.config import NetworkSection
from agent.sensors.network.communityid import community_id
from agent.sensors.network.replay import replay_pcap
from tests.sensors.network.pcaps import ETHER, Clock, tcp_session, write

REFERENCE = communityid.CommunityID()


def _packed(addr: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in addr else socket.AF_INET, addr)


def _reference(pkt: Packet, seed: int = 0) -> str:
    ip = pkt[IPv6] if IPv6 in pkt else pkt[IP]
    l4 = pkt[TCP] if TCP in pkt else pkt[UDP]
    make = communityid.FlowTuple.make_tcp if TCP in pkt else communityid.FlowTuple.make_udp
    calc = REFERENCE if seed == 0 else communityid.CommunityID(seed=seed)
    return str(calc.calc(make(ip.src, ip.dst, l4.sport, l4.dport)))


def _ours(pkt: Packet, seed: int = 0) -> str:
    ip = pkt[IPv6] if IPv6 in pkt else pkt[IP]
    l4 = pkt[TCP] if TCP in pkt else pkt[UDP]
    proto = 6 if TCP in pkt else 17
    return community_id(proto, _packed(ip.src), l4.sport, _packed(ip.dst), l4.dport, seed)


def _random_packets(n: int) -> list[Packet]:
    rng = random.Random(16)
    out = []
    for i in range(n):
        if i % 3 == 2:
            src = socket.inet_ntop(socket.AF_INET6, rng.randbytes(16))
            dst = socket.inet_ntop(socket.AF_INET6, rng.randbytes(16))
            ip: Packet = IPv6(src=src, dst=dst)
        else:
            src = socket.inet_ntoa(rng.randbytes(4))
            dst = socket.inet_ntoa(rng.randbytes(4)) if i % 7 else src  # same host both ends
            ip = IP(src=src, dst=dst)
        sport, dport = rng.randrange(65536), rng.randrange(65536)
        l4 = TCP(sport=sport, dport=dport) if i % 2 else UDP(sport=sport, dport=dport)
        # rebuilt from bytes: the fields the reference reads are the ones on the wire
        out.append((ETHER / ip / l4).__class__(bytes(ETHER / ip / l4)))
    return out


def test_equals_the_reference_on_scapy_packets_both_directions() -> None:
    for pkt in _random_packets(600):
        assert _ours(pkt) == _reference(pkt)
        ip = pkt[IPv6] if IPv6 in pkt else pkt[IP]
        l4 = pkt[TCP] if TCP in pkt else pkt[UDP]
        back = (
            ETHER
            / ip.__class__(src=ip.dst, dst=ip.src)
            / l4.__class__(sport=l4.dport, dport=l4.sport)
        )
        assert _ours(back) == _ours(pkt)  # one flow, one id, whichever side sent


def test_known_vector_and_seed() -> None:
    # the spec's example: TCP 128.232.110.120:34855 -> 66.35.250.204:80
    pkt = ETHER / IP(src="128.232.110.120", dst="66.35.250.204") / TCP(sport=34855, dport=80)
    assert _ours(pkt) == "1:LQU9qZlK+B5F3KDmev6m5PMibrg="
    assert _ours(pkt, seed=1) == _reference(pkt, seed=1) != _ours(pkt)


@given(
    st.binary(min_size=4, max_size=4),
    st.binary(min_size=4, max_size=4),
    st.integers(0, 65535),
    st.integers(0, 65535),
    st.sampled_from([6, 17]),
    st.integers(0, 65535),
)
def test_equals_the_reference_for_any_ipv4_tuple(
    src: bytes, dst: bytes, sport: int, dport: int, proto: int, seed: int
) -> None:
    make = communityid.FlowTuple.make_tcp if proto == 6 else communityid.FlowTuple.make_udp
    ref = communityid.CommunityID(seed=seed).calc(
        make(socket.inet_ntoa(src), socket.inet_ntoa(dst), sport, dport)
    )
    assert community_id(proto, src, sport, dst, dport, seed) == ref


def test_replayed_flows_carry_the_reference_id(tmp_path: Path) -> None:
    clock = Clock()
    pkts = tcp_session(clock, "10.0.0.5", "140.82.112.3", 40100, 443, [b"x" * 100])
    pkts += tcp_session(clock, "fd00::5", "2a00:1450:4001:82b::200e", 40101, 443, [b"y" * 10])
    path = write(tmp_path / "c.pcap", pkts)
    flows = replay_pcap(path, NetworkSection()).flows
    assert len(flows) == 2
    first = {(p[IPv6] if IPv6 in p else p[IP]).src: p for p in pkts}
    for f in flows:
        assert f.community_id == _reference(first[f.src_ip])
