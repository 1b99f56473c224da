"""SNI, HTTP Host and DNS parsers on real and hostile input; the name cache."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.dns import DNS, DNSQR, DNSRR

from agent.sensors.network import names
from tests.sensors.network.tls import client_hello


def test_sni_from_a_real_client_hello() -> None:
    hello = client_hello("Files.Example.ORG")
    assert names.tls_sni(hello) == "files.example.org"
    for cut in (5, 40, 60, len(hello) // 2):
        assert names.tls_sni(hello[:cut]) in (None, "files.example.org")


def test_sni_rejects_non_hostnames() -> None:
    assert names.tls_sni(b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00") is None
    assert names.tls_sni(b"GET / HTTP/1.1\r\n") is None


@settings(max_examples=300)
@given(st.binary(max_size=600))
def test_sni_never_raises(data: bytes) -> None:
    out = names.tls_sni(b"\x16\x03\x01" + data[:2] + b"\x01" + data)
    assert out is None or isinstance(out, str)
    names.tls_sni(data)


@given(st.binary(max_size=64), st.integers(0, 400))
def test_sni_survives_mutated_real_hellos(junk: bytes, pos: int) -> None:
    hello = bytearray(client_hello("a.example.com"))
    pos = pos % len(hello)
    hello[pos : pos + len(junk)] = junk
    out = names.tls_sni(bytes(hello))
    assert out is None or isinstance(out, str)


def test_http_host() -> None:
    req = b"POST /upload HTTP/1.1\r\nUser-Agent: x\r\nHOST: Drop.Example.com:8080\r\n\r\nbody"
    assert names.http_host(req) == "drop.example.com"
    assert names.http_host(b"GET / HTTP/1.0\r\n\r\n") is None
    assert names.http_host(b"GET / HTTP/1.1\r\nHost: bad host\r\n\r\n") is None
    assert names.http_host(b"HELLO\r\nHost: a.b\r\n\r\n") is None
    assert names.is_http_request(b"PUT /x") and not names.is_http_request(b"\x16\x03")


@given(st.binary(max_size=300))
def test_http_host_never_raises(data: bytes) -> None:
    out = names.http_host(b"GET / HTTP/1.1\r\n" + data)
    assert out is None or isinstance(out, str)


def test_dns_answers_follow_cnames() -> None:
    msg = bytes(
        DNS(
            id=7,
            qr=1,
            qd=DNSQR(qname="www.example.com"),
            an=[
                DNSRR(rrname="www.example.com", type="CNAME", rdata="edge.cdn.net"),
                DNSRR(rrname="edge.cdn.net", type="A", rdata="203.0.113.5", ttl=120),
                DNSRR(rrname="other.net", type="A", rdata="203.0.113.6"),
                DNSRR(rrname="edge.cdn.net", type="AAAA", rdata="2001:db8::5", ttl=0),
            ],
        )
    )
    got = names.dns_answers(msg)
    assert [(a.address.hex(), a.name, a.ttl) for a in got] == [
        ("cb007105", "www.example.com", 120),
        ("20010db8000000000000000000000005", "www.example.com", 0),
    ]


def test_dns_queries_and_errors_give_nothing() -> None:
    assert names.dns_answers(bytes(DNS(rd=1, qd=DNSQR(qname="a.b")))) == []
    assert names.dns_answers(bytes(DNS(qr=1, rcode=3, qd=DNSQR(qname="a.b")))) == []


def test_dns_compression_loop_is_bounded() -> None:
    # question name is a pointer to itself
    msg = bytes.fromhex("0001818000010001000000") + b"\x00" + b"\xc0\x0c" + b"\x00\x01\x00\x01"
    assert names.dns_answers(msg) == []


@settings(max_examples=300)
@given(st.binary(max_size=512))
def test_dns_never_raises(data: bytes) -> None:
    for msg in (data, b"\x00\x01\x81\x80\x00\x01\x00\x02\x00\x00\x00\x00" + data):
        for a in names.dns_answers(msg):
            assert len(a.address) in (4, 16)


def test_name_cache_ttl_and_bound() -> None:
    c = names.NameCache(size=3, min_ttl=10, max_ttl=100)
    c.add(b"a", "a.example", ttl=0, now=1000)
    assert c.get(b"a", now=1009) == "a.example"  # clamped up to min_ttl
    assert c.get(b"a", now=1011) is None
    c.add(b"b", "b", 5000, now=0)
    assert c.get(b"b", now=99) == "b" and c.get(b"b", now=101) is None  # clamped to max_ttl
    for k in (b"1", b"2", b"3", b"4"):
        c.add(k, k.decode(), 50, now=0)
    assert len(c) == 3 and c.get(b"1", now=1) is None and c.get(b"4", now=1) == "4"
