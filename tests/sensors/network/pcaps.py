"""Building test captures with scapy: TCP sessions, DNS exchanges, written to pcap/pcapng."""

from __future__ import annotations

from pathlib import Path

from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw
from scapy.utils import PcapNgWriter, wrpcap

MASK = 0xFFFFFFFF
# fixed addresses: left unset, scapy would try to resolve them on the network
ETHER = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


class Clock:
    def __init__(self, start: float = 1_700_000_000.0, step: float = 0.001) -> None:
        self.t = start
        self.step = step

    def __call__(self, pkt: Packet, advance: float | None = None) -> Packet:
        self.t += self.step if advance is None else advance
        pkt.time = self.t
        return pkt


def _ip(src: str, dst: str) -> Packet:
    return ETHER / (IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst))


def tcp_session(
    clock: Clock,
    client: str,
    server: str,
    sport: int,
    dport: int,
    payloads: list[bytes],
    isn: int = 1000,
    server_isn: int = 50_000,
    close: str = "fin",
    replies: list[bytes] | None = None,
) -> list[Packet]:
    """A client→server connection: handshake, data, optional replies, then FIN or RST."""

    def segment(
        from_client: bool, flags: str, seq: int, ack: int | None = None, data: bytes | None = None
    ) -> Packet:
        """One TCP segment of this connection, timed by `clock`; no ack on a SYN or an RST."""
        src, dst, sp, dp = (
            (client, server, sport, dport) if from_client else (server, client, dport, sport)
        )
        acked = {} if ack is None else {"ack": ack & MASK}
        pkt = _ip(src, dst) / TCP(sport=sp, dport=dp, flags=flags, seq=seq & MASK, **acked)
        return clock(pkt if data is None else pkt / Raw(data))

    out = [segment(True, "S", isn), segment(False, "SA", server_isn, isn + 1)]
    seq, ack = isn + 1, server_isn + 1
    for data in payloads:
        out.append(segment(True, "PA", seq, ack, data))
        seq += len(data)
    for data in replies or []:
        out.append(segment(False, "PA", ack, seq, data))
        ack += len(data)
    if close == "fin":
        out.append(segment(True, "FA", seq, ack))
        out.append(segment(False, "FA", ack, seq + 1))
        out.append(segment(True, "A", seq + 1, ack + 1))
    elif close == "rst":
        out.append(segment(True, "R", seq))
    return out


def dns_exchange(
    clock: Clock, client: str, resolver: str, name: str, answers: list[str], sport: int = 40053
) -> list[Packet]:
    q = DNS(id=9, rd=1, qd=DNSQR(qname=name, qtype="AAAA" if ":" in answers[0] else "A"))
    rrs = [DNSRR(rrname=name, type="AAAA" if ":" in a else "A", rdata=a, ttl=300) for a in answers]
    r = DNS(id=9, qr=1, rd=1, ra=1, qd=q.qd, an=rrs)
    return [
        clock(_ip(client, resolver) / UDP(sport=sport, dport=53) / q),
        clock(_ip(resolver, client) / UDP(sport=53, dport=sport) / r),
    ]


def write(path: Path, packets: list[Packet], ng: bool = False) -> Path:
    if ng:
        with PcapNgWriter(str(path)) as w:
            for p in packets:
                w.write(p)
    else:
        wrpcap(str(path), packets)
    return path
