"""The kernel filter: which packets reach Python (checked with libpcap via tcpdump -r)."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from agent.sensors import SensorUnavailable
from agent.sensors.network.capture import (
    DLT_EN10MB,
    DLT_RAW,
    FILTER,
    WAKEUP_FILTER,
    CaptureSocket,
    compile_bpf,
)
from tests.sensors.network.pcaps import ETHER, write
from tests.sensors.network.tls import client_hello

SEQ = 123_456_789  # a sequence number outside the once-per-GiB sample window
QUIC_INITIAL = b"\xc3\x00\x00\x00\x01" + b"\x08" * 40


def _cases() -> list[tuple[str, object, bool]]:
    hello = client_hello("f.example")
    out = []
    for fam, a, b in ((IP, "10.0.0.1", "10.0.0.2"), (IPv6, "fd00::1", "fd00::2")):
        v = fam.__name__
        ip = ETHER / fam(src=a, dst=b)
        out += [
            (f"{v} syn", ip / TCP(flags="S"), True),
            (f"{v} fin", ip / TCP(flags="FA"), True),
            (f"{v} rst", ip / TCP(flags="R"), True),
            (f"{v} client hello", ip / TCP(flags="PA") / Raw(hello), True),
            (
                f"{v} http head",
                ip / TCP(flags="PA", dport=8080) / Raw(b"POST /x HTTP/1.1\r\n"),
                True,
            ),
            (f"{v} dns", ip / UDP(sport=5000, dport=53) / Raw(b"\0" * 20), True),
            (f"{v} quic initial", ip / UDP(sport=5000, dport=443) / Raw(QUIC_INITIAL), True),
            (f"{v} bulk data", ip / TCP(flags="A", seq=SEQ) / Raw(b"\x00" * 1400), False),
            (f"{v} tls app data", ip / TCP(flags="PA", seq=SEQ) / Raw(b"\x17\x03" * 250), False),
            (f"{v} pure ack", ip / TCP(flags="A", seq=SEQ), False),
            (f"{v} GiB sample", ip / TCP(flags="A", seq=3 * 2**30 + 9) / Raw(b"\x00" * 99), True),
            (f"{v} ack in the sample window", ip / TCP(flags="A", seq=2**30 + 9), False),
            (
                f"{v} quic short header",
                ip / UDP(sport=5000, dport=443) / Raw(b"\x43" + b"x" * 100),
                False,
            ),
        ]
    return out


@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump not installed")
def test_filter_passes_exactly_the_interesting_packets(tmp_path: Path) -> None:
    cases = _cases()
    for name, pkt, wanted in cases:
        path = write(tmp_path / "one.pcap", [pkt])  # type: ignore[list-item]
        res = subprocess.run(
            ["tcpdump", "-nr", str(path), FILTER], capture_output=True, text=True, check=True
        )
        passed = bool(res.stdout.strip())
        assert passed == wanted, name


def _wakeup_cases() -> list[tuple[str, object, bool]]:
    """What must wake the sensor at once: a connection's opening SYN and a DNS query."""
    out = []
    for fam, a, b in ((IP, "10.0.0.1", "10.0.0.2"), (IPv6, "fd00::1", "fd00::2")):
        v = fam.__name__
        ip = ETHER / fam(src=a, dst=b)
        out += [
            (f"{v} syn", ip / TCP(flags="S"), True),
            (f"{v} syn with ecn", ip / TCP(flags="SEC"), True),
            (f"{v} syn-ack", ip / TCP(flags="SA"), False),
            (f"{v} fin", ip / TCP(flags="FA"), False),
            (f"{v} rst", ip / TCP(flags="R"), False),
            (f"{v} client hello", ip / TCP(flags="PA") / Raw(client_hello("f.example")), False),
            (f"{v} dns query", ip / UDP(sport=5000, dport=53) / Raw(b"\0" * 20), True),
            (f"{v} dns answer", ip / UDP(sport=53, dport=5000) / Raw(b"\0" * 20), False),
            (f"{v} quic initial", ip / UDP(sport=5000, dport=443) / Raw(QUIC_INITIAL), False),
            (f"{v} bulk data", ip / TCP(flags="A", seq=SEQ) / Raw(b"\x00" * 1400), False),
        ]
    return out


@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump not installed")
def test_wakeup_filter_passes_openings_and_dns_queries_only(tmp_path: Path) -> None:
    """The wake-up socket's filter, and that it is a subset of the main filter (what it
    announces must be in the main queue)."""
    for name, pkt, wanted in _wakeup_cases() + [(n, p, None) for n, p, _ in _cases()]:
        path = write(tmp_path / "one.pcap", [pkt])  # type: ignore[list-item]
        passed = {}
        for expression in (WAKEUP_FILTER, FILTER):
            res = subprocess.run(
                ["tcpdump", "-nr", str(path), expression],
                capture_output=True,
                text=True,
                check=True,
            )
            passed[expression] = bool(res.stdout.strip())
        if wanted is not None:
            assert passed[WAKEUP_FILTER] == wanted, name
        assert passed[FILTER] or not passed[WAKEUP_FILTER], name


def test_filter_compiles_through_libpcap() -> None:
    program = compile_bpf()
    assert len(program) % 8 == 0 and 10 < len(program) // 8 < 4096


@pytest.mark.parametrize("linktype", [DLT_EN10MB, DLT_RAW])
def test_filter_is_the_program_scapy_compiles(linktype: int) -> None:
    """libpcap called directly gives the bytes scapy's compile_filter gave (the sensor
    compiled through scapy before; scapy stays a test and replay dependency)."""
    from scapy.arch.common import compile_filter

    prog = compile_filter(FILTER, linktype=linktype)
    assert compile_bpf(FILTER, linktype) == ctypes.string_at(prog.bf_insns, prog.bf_len * 8)


def test_compiling_the_filter_does_not_import_scapy() -> None:
    """scapy costs the daemon's start 0.17 s of CPU: the live sensor must not import it."""
    probe = (
        "import sys; from agent.sensors.network import sensor; "
        "from agent.sensors.network.capture import compile_bpf; compile_bpf(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'scapy'))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_bad_filter_is_a_reason_not_a_crash() -> None:
    with pytest.raises(SensorUnavailable, match="does not compile"):
        compile_bpf("tcp[[[")


def test_missing_interface_is_a_reason() -> None:
    with pytest.raises(SensorUnavailable, match="no interface"):
        CaptureSocket("ea-no-such0", 1 << 20, {})
