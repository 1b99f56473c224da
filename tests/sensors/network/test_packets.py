"""Header decoding with struct: IPv4, IPv6, VLAN, fragments, and hostile bytes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw, fuzz

from agent.sensors.network.packets import (
    TCP_ACK,
    TCP_SYN,
    decode_ethernet,
    decode_ip,
    payload_bytes,
)


def test_ipv4_tcp() -> None:
    raw = bytes(
        Ether()
        / IP(src="10.1.2.3", dst="10.4.5.6")
        / TCP(sport=1234, dport=443, seq=7, ack=9, flags="SA")
    )
    p = decode_ethernet(raw)
    assert p is not None
    assert (p.proto, p.src, p.dst, p.sport, p.dport) == (
        6,
        bytes([10, 1, 2, 3]),
        bytes([10, 4, 5, 6]),
        1234,
        443,
    )
    assert (p.seq, p.ack, p.flags & (TCP_SYN | TCP_ACK), p.payload_len) == (7, 9, 0x12, 0)


def test_ipv6_udp_through_vlan_and_extension_header() -> None:
    raw = bytes(
        Ether()
        / Dot1Q(vlan=5)
        / IPv6(src="fd00::1", dst="fd00::2")
        / IPv6ExtHdrDestOpt()
        / UDP(sport=5353, dport=53)
        / Raw(b"hello")
    )
    p = decode_ethernet(raw)
    assert p is not None and p.proto == 17 and (p.sport, p.dport, p.payload_len) == (5353, 53, 5)
    assert payload_bytes(raw, p, len(raw)) == b"hello"


def test_payload_length_comes_from_the_ip_header_even_when_truncated() -> None:
    raw = bytes(IP(src="1.1.1.1", dst="2.2.2.2") / TCP() / Raw(b"x" * 1000))
    p = decode_ip(raw[:60])
    assert p is not None and p.payload_len == 1000
    assert payload_bytes(raw[:60], p, 60) == b"x" * 20


def test_later_fragments_and_other_protocols_are_skipped() -> None:
    assert decode_ip(bytes(IP(frag=10, proto=6) / Raw(b"x" * 40))) is None
    assert decode_ip(bytes(IP(proto=1) / Raw(b"x" * 40))) is None
    assert decode_ethernet(bytes(Ether(type=0x0806) / Raw(b"x" * 40))) is None


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise(data: bytes) -> None:
    for p in (decode_ethernet(data), decode_ip(data)):
        if p is not None:
            assert p.payload_len >= 0 and p.payload_off <= len(data) + 65535


def test_scapy_fuzzed_headers_never_raise() -> None:
    for _ in range(300):
        for layer in (IP() / TCP(), IP() / UDP(), IPv6() / TCP(), IPv6() / UDP()):
            raw = bytes(Ether() / fuzz(layer))
            for cut in (len(raw), len(raw) // 2, 20):
                decode_ethernet(raw[:cut])
