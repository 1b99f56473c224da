"""Offline mode: scapy-written captures through the flow logic and `egress-agent replay`."""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw, fuzz

from agent.config import NetworkSection
from agent.sensors.network.pcapfile import PcapError
from agent.sensors.network.replay import replay_pcap
from tests.conftest import cli
from tests.sensors.network.pcaps import ETHER, Clock, dns_exchange, tcp_session, write
from tests.sensors.network.tls import client_hello

C, S, R = "10.0.0.5", "203.0.113.7", "10.0.0.53"
DATA = Path(__file__).parent / "data"


def one(path: Path, **cfg: object) -> list:
    return replay_pcap(path, NetworkSection(**cfg)).flows  # type: ignore[arg-type]


def test_http_upload_exact_bytes_and_host(tmp_path: Path) -> None:
    clock = Clock()
    head = b"PUT /up HTTP/1.1\r\nHost: drop.example.net\r\nContent-Length: 5000\r\n\r\n"
    pkts = tcp_session(
        clock, C, S, 40001, 80, [head] + [b"d" * 1000] * 5, replies=[b"HTTP/1.1 201\r\n\r\n"]
    )
    (f,) = one(write(tmp_path / "h.pcap", pkts))
    assert (f.protocol, f.src_ip, f.src_port, f.dst_ip, f.dst_port) == ("tcp", C, 40001, S, 80)
    assert f.bytes_out == len(head) + 5000 and f.bytes_in == 16
    assert (f.http_host, f.name, f.name_source) == (
        "drop.example.net",
        "drop.example.net",
        "http_host",
    )
    assert (f.byte_source, f.close_reason) == ("tcp_seq", "fin")


def test_tls_sni_and_dns_names_and_country(tmp_path: Path) -> None:
    clock = Clock()
    pkts = dns_exchange(clock, C, R, "files.example.org", [S])
    pkts += tcp_session(clock, C, S, 40002, 443, [client_hello("sync.example.com"), b"\x17" * 3000])
    pkts += tcp_session(clock, C, S, 40003, 8443, [b"\x00" * 10])
    flows = {
        f.dst_port: f
        for f in one(write(tmp_path / "t.pcap", pkts), country_db=DATA / "country.csv")
    }
    tls = flows[443]
    assert (tls.sni, tls.name, tls.name_source) == ("sync.example.com", "sync.example.com", "sni")
    assert (tls.dest_class, tls.country) == ("foreign", "US")
    other = flows[8443]
    assert (other.name, other.name_source, other.bytes_out) == ("files.example.org", "dns", 10)
    dns = flows[53]
    assert dns.protocol == "udp" and dns.dest_class == "internal" and dns.byte_source == "packets"


def test_sequence_wrap_around(tmp_path: Path) -> None:
    clock = Clock()
    pkts = tcp_session(clock, C, S, 40004, 22, [b"w" * 1400] * 20, isn=0xFFFFFFFF - 5000)
    (f,) = one(write(tmp_path / "w.pcap", pkts))
    assert f.bytes_out == 28_000


def test_flow_over_four_gib_from_sparse_packets(tmp_path: Path) -> None:
    clock = Clock()
    isn = 0xFFFF_F000
    pkts = tcp_session(clock, C, S, 40005, 443, [], isn=isn, close="none")
    seq = isn + 1
    for _ in range(5):  # one sample per GiB: the captured segments of a 5 GiB stream
        pkts.append(
            clock(
                Ether()
                / IP(src=C, dst=S)
                / TCP(sport=40005, dport=443, flags="A", seq=seq & 0xFFFFFFFF)
                / Raw(b"g" * 1000)
            )
        )
        seq += 2**30
    pkts.append(
        clock(
            Ether()
            / IP(src=C, dst=S)
            / TCP(sport=40005, dport=443, flags="FA", seq=(seq + 1000) & 0xFFFFFFFF)
        )
    )
    (f,) = one(write(tmp_path / "big.pcap", pkts))
    assert f.bytes_out == 5 * 2**30 + 1000 > 2**32


def test_reset_ipv6_and_retransmissions(tmp_path: Path) -> None:
    clock = Clock()
    pkts = tcp_session(
        clock, "fd00::5", "2001:db8:1::9", 40006, 443, [b"a" * 700, b"b" * 300], close="rst"
    )
    pkts.insert(3, pkts[2].copy())  # the first data segment twice
    pkts += tcp_session(clock, C, S, 40007, 80, [b"x" * 10])
    flows = {
        f.src_port: f
        for f in one(write(tmp_path / "r.pcap", pkts), country_db=DATA / "country.csv")
    }
    v6 = flows[40006]
    assert (v6.bytes_out, v6.close_reason, v6.dst_ip) == (1000, "rst", "2001:db8:1::9")
    assert (v6.dest_class, v6.country) == ("foreign", "JP")
    assert flows[40007].bytes_out == 10


def test_midstream_idle_and_active_timeouts(tmp_path: Path) -> None:
    clock = Clock()
    pkts = tcp_session(clock, C, S, 40008, 443, [b"1" * 100], close="none")[2:]  # no handshake
    pkts += [
        clock(
            Ether()
            / IP(src=C, dst=S)
            / TCP(sport=40008, dport=443, flags="PA", seq=1101)
            / Raw(b"2" * 50),
            advance=100,
        )
    ]
    flows = one(write(tmp_path / "m.pcap", pkts), idle_timeout=60)
    assert [(f.bytes_out, f.close_reason) for f in flows] == [(100, "idle"), (50, "end_of_capture")]
    # a steady stream split by the active timeout: the records add up
    clock = Clock(step=1.0)
    pkts = tcp_session(clock, C, S, 40009, 443, [b"s" * 100] * 30)
    flows = one(write(tmp_path / "a.pcap", pkts), active_timeout=10)
    assert len(flows) >= 3 and flows[0].close_reason == "active"
    assert sum(f.bytes_out for f in flows) == 3000


def test_inbound_flows_are_kept_from_the_initiator_view(tmp_path: Path) -> None:
    clock = Clock()
    pkts = tcp_session(clock, S, C, 55000, 22, [b"i" * 10], replies=[b"o" * 20])
    (f,) = one(write(tmp_path / "i.pcap", pkts))
    assert (f.src_ip, f.dst_port, f.bytes_out, f.bytes_in) == (S, 22, 10, 20)


def test_pcapng_and_other_link_types(tmp_path: Path) -> None:
    clock = Clock()
    pkts = tcp_session(clock, C, S, 40010, 80, [b"n" * 123])
    (f,) = one(write(tmp_path / "n.pcapng", pkts, ng=True))
    assert f.bytes_out == 123 and f.start.timestamp() == pytest.approx(pkts[0].time, abs=1e-5)
    raw_ip = tmp_path / "raw.pcap"
    from scapy.utils import wrpcap

    wrpcap(str(raw_ip), [p[IP] for p in pkts], linktype=101)
    (g,) = one(raw_ip)
    assert g.bytes_out == 123


def test_truncated_and_fuzzed_captures_never_crash(tmp_path: Path) -> None:
    clock = Clock()
    rnd = random.Random(5)
    pkts = tcp_session(clock, C, S, 40011, 443, [client_hello("z.example")] + [b"q" * 500] * 3)
    for _ in range(300):
        layer = rnd.choice(
            [IP() / TCP(), IP() / UDP(dport=53), IPv6() / TCP(), IPv6() / UDP(sport=53)]
        )
        pkts.append(clock(ETHER / fuzz(layer) / Raw(rnd.randbytes(rnd.randrange(80)))))
    path = write(tmp_path / "f.pcap", pkts)
    full = replay_pcap(path)
    assert full.stats.frames == len(pkts)
    raw = path.read_bytes()
    for cut in (24, 40, 100, len(raw) // 2, len(raw) - 3):
        p = tmp_path / f"cut{cut}.pcap"
        p.write_bytes(raw[:cut])
        res = replay_pcap(p)
        assert res.stats.truncated <= 1


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=3000))
def test_random_record_bytes_never_crash(tmp_path: Path, body: bytes) -> None:
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    p = tmp_path / "rand.pcap"
    p.write_bytes(header + body)
    replay_pcap(p)
    ng = tmp_path / "rand.pcapng"
    ng.write_bytes(bytes.fromhex("0a0d0d0a1c0000004d3c2b1a01000000ffffffffffffffff1c000000") + body)
    replay_pcap(ng)


def test_not_a_capture(tmp_path: Path) -> None:
    p = tmp_path / "x.pcap"
    p.write_bytes(b"this is not a capture file at all")
    with pytest.raises(PcapError, match="not a pcap"):
        replay_pcap(p)


def test_cli_replay_json_table_and_store(tmp_path: Path) -> None:
    clock = Clock()
    pkts = dns_exchange(clock, C, R, "up.example.com", [S])
    hello = client_hello("up.example.com")
    pkts += tcp_session(clock, C, S, 40012, 443, [hello, b"u" * 4321])
    path = write(tmp_path / "c.pcap", pkts)
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(yaml.safe_dump({"agent": {"state_dir": str(tmp_path / "state")}}))
    res = cli("replay", str(path), "--json", config=cfg)
    docs = [json.loads(line) for line in res.stdout.splitlines()]
    tls = next(d for d in docs if d["dst_port"] == 443)
    assert tls["sni"] == "up.example.com" and tls["bytes_out"] == len(hello) + 4321
    table = cli("replay", str(path), config=cfg).stdout
    assert "up.example.com (sni)" in table
    stored = cli("replay", str(path), "--store", config=cfg)
    assert "stored 2 flows" in stored.stderr
    listed = cli("events", "list", "--kind", "flow", "--json", config=cfg).stdout.splitlines()
    assert len(listed) == 2
    bad = cli("replay", str(tmp_path / "missing.pcap"), config=cfg, check=False)
    assert bad.returncode == 2 and "no such file" in bad.stderr
    (tmp_path / "junk.pcap").write_bytes(b"\0" * 100)
    bad = cli("replay", str(tmp_path / "junk.pcap"), config=cfg, check=False)
    assert bad.returncode == 2 and "not a pcap" in bad.stderr and "Traceback" not in bad.stderr


def test_fast_loop_agrees_with_the_general_path(tmp_path: Path) -> None:
    clock = Clock()
    rnd = random.Random(7)
    pkts = dns_exchange(clock, C, R, "same.example", [S])
    for i in range(8):
        sizes = [rnd.randrange(1, 3000) for _ in range(rnd.randrange(1, 30))]
        v6 = i % 2 == 1
        pkts += tcp_session(
            clock,
            "fd00::5" if v6 else C,
            "2001:db8:1::9" if v6 else S,
            41000 + i,
            443,
            [client_hello(f"h{i}.example")] + [b"v" * n for n in sizes],
            isn=rnd.randrange(2**32),
            replies=[b"r" * rnd.randrange(1, 500)],
            close=rnd.choice(["fin", "rst", "none"]),
        )
    classic = one(write(tmp_path / "s.pcap", pkts))  # Ethernet pcap: the hot loop
    general = one(write(tmp_path / "s.pcapng", pkts, ng=True))  # pcapng: the general path

    def key(flows: list) -> list:
        return sorted((f.src_port, f.bytes_out, f.bytes_in, f.sni, f.close_reason) for f in flows)

    assert key(classic) == key(general) and len(classic) == 9


def test_cli_replay_store_into_postgresql(tmp_path: Path, pg_url: str) -> None:
    from sqlalchemy import create_engine, text

    clock = Clock()
    pkts = tcp_session(clock, C, S, 40013, 443, [client_hello("pg.example"), b"p" * 777])
    path = write(tmp_path / "pg.pcap", pkts)
    cfg = tmp_path / "agent.yaml"
    doc = {"agent": {"state_dir": str(tmp_path / "state")}, "database": {"url": pg_url}}
    cfg.write_text(yaml.safe_dump(doc))
    cli("replay", str(path), "--store", config=cfg)
    cli("replay", str(path), "--store", config=cfg)  # a second run adds its own records
    engine = create_engine(pg_url)
    with engine.connect() as c:
        rows = c.execute(text("SELECT sni, bytes_out, byte_source FROM flows")).fetchall()
    engine.dispose()
    assert len(rows) == 2
    assert {r[0] for r in rows} == {"pg.example"}
    assert all(r[2] == "tcp_seq" and r[1] > 777 for r in rows)
