"""Naming a flow: the best name (SNI, then HTTP Host, then a DNS answer for its address)
and what the destination is, as typed values."""

from __future__ import annotations

from scapy.layers.dns import DNS, DNSQR, DNSRR

from agent.events import DestClass
from agent.sensors.network.destinations import Destinations
from agent.sensors.network.flownames import FlowNaming, Naming, text_address
from agent.sensors.network.flowstate import FlowState
from tests.sensors.network.tls import client_hello

A, B = b"\x0a\x00\x00\x01", b"\xcb\x00\x71\x07"  # B is 203.0.113.7


def _answer(name: str, address: str, ttl: int) -> bytes:
    return bytes(
        DNS(id=1, qr=1, qd=DNSQR(qname=name), an=DNSRR(rrname=name, rdata=address, ttl=ttl))
    )


def test_sni_beats_http_host_beats_a_dns_answer() -> None:
    naming = FlowNaming(Destinations(approved=["lab.example"]))
    st = FlowState((6, A, 40000, B, 443), 10.0, 10.0, 10.0)
    dst = text_address(B)
    assert naming.describe(st, dst) == Naming(None, None, DestClass.UNKNOWN, None)
    naming.dns(_answer("files.lab.example", "203.0.113.7", ttl=60), 5.0)
    assert naming.describe(st, dst) == ("files.lab.example", "dns", "approved", None)
    naming.request(st, b"GET / HTTP/1.1\r\nHost: upload.example.net\r\n\r\n")
    assert naming.describe(st, dst) == ("upload.example.net", "http_host", "unknown", None)
    naming.request(st, client_hello("sync.example.org"))
    assert naming.describe(st, dst)[:2] == ("sync.example.org", "sni")
    st.last = 66.0  # past the answer's TTL: the DNS name alone no longer names it
    st.sni = st.http_host = None
    assert naming.describe(st, dst).name is None


def test_a_verdict_is_typed_and_carries_the_service_category() -> None:
    naming = FlowNaming(Destinations(internal=["10.0.0.0/8"]))
    st = FlowState((6, B, 40000, A, 443), 1.0, 1.0, 1.0)
    dest_class, country, category = naming.verdict(st)
    assert dest_class is DestClass.INTERNAL and (country, category) == (None, None)
