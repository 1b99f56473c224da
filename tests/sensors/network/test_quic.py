"""QUIC client Initial: RFC 9001 key derivation, SNI from a real ClientHello, hostile input."""

from __future__ import annotations

import struct
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

from agent.sensors.network.quic import client_initial_keys, quic_sni
from agent.sensors.network.replay import replay_pcap
from tests.sensors.network.pcaps import ETHER, Clock, write
from tests.sensors.network.tls import client_hello


def quic_initial(server_name: str, dcid: bytes = b"\x83\x94\xc8\xf0\x3e\x51\x57\x08") -> bytes:
    """A client Initial as RFC 9001 §5 builds it, carrying OpenSSL's ClientHello."""
    handshake = client_hello(server_name)[5:]  # drop the TLS record header
    frames = b"\x06\x00" + struct.pack("!H", 0x4000 | len(handshake)) + handshake
    frames += b"\x00" * (1164 - len(frames))  # PADDING: 1200 bytes with an 8-byte DCID
    key, iv, hp = client_initial_keys(dcid)
    pn, pn_len = 2, 2
    length = pn_len + len(frames) + 16
    header = (
        bytes([0xC0 | (pn_len - 1)])
        + (1).to_bytes(4, "big")
        + bytes([len(dcid)])
        + dcid
        + b"\x00"  # source connection id length
        + b"\x00"  # token length
        + struct.pack("!H", 0x4000 | length)
        + pn.to_bytes(pn_len, "big")
    )
    nonce = (int.from_bytes(iv, "big") ^ pn).to_bytes(12, "big")
    sealed = AESGCM(key).encrypt(nonce, frames, header)
    sample = sealed[4 - pn_len : 20 - pn_len]
    enc = Cipher(algorithms.AES(hp), modes.ECB()).encryptor()
    mask = enc.update(sample) + enc.finalize()
    protected = bytearray(header)
    protected[0] ^= mask[0] & 0x0F
    for i in range(pn_len):
        protected[len(header) - pn_len + i] ^= mask[1 + i]
    return bytes(protected) + sealed


def test_initial_keys_match_rfc_9001_appendix_a() -> None:
    key, iv, hp = client_initial_keys(bytes.fromhex("8394c8f03e515708"))
    assert key.hex() == "1f369613dd76d5467730efcbe3b1a22d"
    assert iv.hex() == "fa044b2f42a3fd3b46fb255c"
    assert hp.hex() == "9f50449e04a0e810283a1e9933adedd2"


def test_sni_from_an_initial() -> None:
    pkt = quic_initial("h3.upload.example")
    assert len(pkt) >= 1200
    assert quic_sni(pkt) == "h3.upload.example"
    assert quic_sni(quic_initial("other.example", dcid=b"\x01" * 20)) == "other.example"


def test_tampered_or_truncated_initials_give_none() -> None:
    pkt = bytearray(quic_initial("x.example"))
    pkt[-1] ^= 1  # the AEAD tag no longer verifies
    assert quic_sni(bytes(pkt)) is None
    good = quic_initial("x.example")
    for cut in (1, 6, 10, 30, 600):
        assert quic_sni(good[:cut]) is None
    assert quic_sni(b"\x43" + good[1:]) is None  # a short header


@settings(max_examples=300)
@given(st.binary(max_size=1300))
def test_random_datagrams_never_raise(data: bytes) -> None:
    out = quic_sni(data)
    assert out is None or isinstance(out, str)
    quic_sni(b"\xc0\x00\x00\x00\x01" + data)  # a v1 long header with garbage after it


@given(st.integers(0, 1199), st.binary(min_size=1, max_size=8))
def test_mutated_initials_never_raise(pos: int, junk: bytes) -> None:
    pkt = bytearray(quic_initial("m.example"))
    pkt[pos : pos + len(junk)] = junk
    out = quic_sni(bytes(pkt))
    assert out is None or isinstance(out, str)


def test_replay_names_a_quic_flow(tmp_path: Path) -> None:
    clock = Clock()
    c, s = "10.0.0.5", "203.0.113.9"
    pkts = [
        clock(
            ETHER / IP(src=c, dst=s) / UDP(sport=50000, dport=443) / Raw(quic_initial("q.example"))
        )
    ]
    pkts += [
        clock(ETHER / IP(src=s, dst=c) / UDP(sport=443, dport=50000) / Raw(b"\xc1" + b"r" * 99))
    ]
    pkts += [
        clock(ETHER / IP(src=c, dst=s) / UDP(sport=50000, dport=443) / Raw(b"\x41" + b"d" * 999))
    ]
    (f,) = replay_pcap(write(tmp_path / "q.pcap", pkts)).flows
    assert (f.protocol, f.sni, f.name, f.name_source) == ("udp", "q.example", "q.example", "sni")
    assert f.bytes_out == len(quic_initial("q.example")) + 1000 and f.byte_source == "packets"
