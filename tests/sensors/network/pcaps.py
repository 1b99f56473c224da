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
    out = [clock(_ip(client, server) / TCP(sport=sport, dport=dport, flags="S", seq=isn))]
    out.append(
        clock(
            _ip(server, client)
            / TCP(sport=dport, dport=sport, flags="SA", seq=server_isn, ack=(isn + 1) & MASK)
        )
    )
    seq, ack = isn + 1, server_isn + 1
    for data in payloads:
        out.append(
            clock(
                _ip(client, server)
                / TCP(sport=sport, dport=dport, flags="PA", seq=seq & MASK, ack=ack & MASK)
                / Raw(data)
            )
        )
        seq += len(data)
    for data in replies or []:
        out.append(
            clock(
                _ip(server, client)
                / TCP(sport=dport, dport=sport, flags="PA", seq=ack & MASK, ack=seq & MASK)
                / Raw(data)
            )
        )
        ack += len(data)
    if close == "fin":
        out.append(
            clock(
                _ip(client, server)
                / TCP(sport=sport, dport=dport, flags="FA", seq=seq & MASK, ack=ack & MASK)
            )
        )
        out.append(
            clock(
                _ip(server, client)
                / TCP(sport=dport, dport=sport, flags="FA", seq=ack & MASK, ack=(seq + 1) & MASK)
            )
        )
        out.append(
            clock(
                _ip(client, server)
                / TCP(
                    sport=sport, dport=dport, flags="A", seq=(seq + 1) & MASK, ack=(ack + 1) & MASK
                )
            )
        )
    elif close == "rst":
        out.append(
            clock(_ip(client, server) / TCP(sport=sport, dport=dport, flags="R", seq=seq & MASK))
        )
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
