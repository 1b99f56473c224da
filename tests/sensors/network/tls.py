"""A real TLS ClientHello for tests and benchmarks that need one on the wire (no scapy:
bench/replay.py builds its capture with struct alone)."""

from __future__ import annotations

import ssl


def client_hello(server_name: str) -> bytes:
    """The bytes Python's ssl module (OpenSSL) sends first, with this SNI."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=server_name)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()
