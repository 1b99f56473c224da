"""What a flow's destination is called and what it is: the naming half of the flow table.

The flow table (`flowtable`) follows flows; this module names them. While a flow is
open, the table hands it the flow's first few payload packets (`MAX_PROBES`): an
outbound TLS ClientHello gives the SNI, an HTTP request head the Host, a QUIC client
Initial the SNI; DNS answers (over UDP or TCP) fill a cache of address -> name, so a
flow with none of these is still named by the address it went to. At export,
`describe` picks the best name (SNI, then HTTP Host, then DNS) and `Destinations` says
what the destination is (class, country, organisation, known service). Kept apart so
the state machine reads without the parsers, and naming can change without touching
byte counts.
"""

from __future__ import annotations

import socket
from typing import NamedTuple

from agent.events import DestClass
from agent.sensors.network import names
from agent.sensors.network.destinations import Destinations
from agent.sensors.network.flowstate import FlowState
from agent.sensors.network.quic import quic_sni

MAX_PROBES = 3  # payload packets of a flow (both directions) inspected for names


class Naming(NamedTuple):
    """A flow's best name, where it came from, and what its destination is."""

    name: str | None
    source: str | None  # sni | http_host | dns
    dest_class: DestClass
    country: str | None


def text_address(addr: bytes) -> str:
    """A packed IPv4 or IPv6 address as text."""
    return socket.inet_ntop(socket.AF_INET if len(addr) == 4 else socket.AF_INET6, addr)


# what the byte metrics label outbound bytes with: dest_class, country, service category
Verdict = tuple[DestClass, str | None, str | None]


class FlowNaming:
    """Names learnt from the wire (requests, DNS answers) and the destination verdicts."""

    def __init__(self, destinations: Destinations) -> None:
        self.destinations = destinations
        self.cache = names.NameCache()  # DNS answers: address -> name until their TTL

    def request(self, st: FlowState, data: bytes) -> None:
        """An outbound payload: a TLS ClientHello names the server, else an HTTP head."""
        if st.sni is None and data[:1] == b"\x16":
            st.sni = names.tls_sni(data)
        elif st.http_host is None and names.is_http_request(data):
            st.http_host = names.http_host(data)

    def quic_initial(self, st: FlowState, data: bytes) -> None:
        """A QUIC long-header packet: the client Initial names the server."""
        st.sni = quic_sni(data)

    def dns(self, msg: bytes, ts: float) -> None:
        """A DNS response (without TCP's length prefix): remember its addresses' names."""
        for ans in names.dns_answers(msg):
            self.cache.add(ans.address, ans.name, ans.ttl, now=ts)

    def describe(self, st: FlowState, dst_ip: str) -> Naming:
        """The flow's best name and its destination's class and country; `dst_ip` is
        the text form of the flow's responder address."""
        name: str | None
        source: str | None
        if st.sni:
            name, source = st.sni, "sni"
        elif st.http_host:
            name, source = st.http_host, "http_host"
        else:
            name = self.cache.get(st.key[3], now=st.last)
            source = "dns" if name else None
        dest_class, country = self.destinations.classify(dst_ip, name)
        return Naming(name, source, dest_class, country)

    def verdict(self, st: FlowState) -> Verdict:
        """What the byte metrics need of a flow: dest_class, country, service category."""
        name, _, dest_class, country = self.describe(st, text_address(st.key[3]))
        service = self.destinations.service(name)
        return dest_class, country, service.category if service else None
