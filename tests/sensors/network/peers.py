"""Servers for the peer namespace of the rig: a TCP sink, a TLS sink, a DNS responder."""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import subprocess
import threading
from pathlib import Path


class Sink:
    """Accepts connections and counts what each client sent (keyed by client port)."""

    def __init__(
        self,
        family: int = socket.AF_INET,
        tls: ssl.SSLContext | None = None,
        ack_after: int | None = None,
        reset_after: int | None = None,
    ) -> None:
        self.family = family
        self.tls = tls
        self.ack_after = ack_after  # send one byte back once this many bytes arrived
        self.reset_after = reset_after  # abort (RST) once this many bytes arrived
        self.received: dict[int, int] = {}
        self.done = threading.Condition()
        self.ready = threading.Event()
        self.port = 0
        self._stop = False

    def serve(self) -> None:
        srv = socket.socket(self.family)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("", 0))
        srv.listen(512)
        srv.settimeout(0.2)
        self.port = srv.getsockname()[1]
        self.ready.set()
        with srv:
            while not self._stop:
                try:
                    conn, addr = srv.accept()
                except TimeoutError:
                    continue
                threading.Thread(target=self._client, args=(conn, addr[1]), daemon=True).start()

    def _client(self, conn: socket.socket, port: int) -> None:
        n = 0
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            acked = False
            while True:
                data = conn.recv(1 << 20)
                if not data:
                    break
                n += len(data)
                if self.ack_after is not None and n >= self.ack_after and not acked:
                    conn.sendall(b"k")
                    acked = True
                if self.reset_after is not None and n >= self.reset_after:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    break
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()
            with self.done:
                self.received[port] = n
                self.done.notify_all()

    def wait(self, ports: list[int], timeout: float = 20.0) -> dict[int, int]:
        with self.done:
            ok = self.done.wait_for(lambda: all(p in self.received for p in ports), timeout)
            assert ok, f"sink did not see clients {set(ports) - set(self.received)}"
            return {p: self.received[p] for p in ports}

    def stop(self) -> None:
        self._stop = True


def self_signed(tmp: Path, cn: str = "peer.test") -> ssl.SSLContext:
    """A server context with a throwaway certificate made by `openssl req`."""
    key, cert = tmp / "key.pem", tmp / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            f"/CN={cn}",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


def dns_response(query: bytes, answers: dict[str, list[bytes]]) -> bytes | None:
    """A response to `query` with A/AAAA records from `answers` (name → packed addresses)."""
    if len(query) < 12:
        return None
    qid = query[:2]
    p = 12
    labels = []
    while p < len(query) and query[p]:
        labels.append(query[p + 1 : p + 1 + query[p]].decode())
        p += 1 + query[p]
    qend = p + 5
    qtype = struct.unpack("!H", query[p + 1 : p + 3])[0]
    name = ".".join(labels)
    addrs = [a for a in answers.get(name, []) if len(a) == (4 if qtype == 1 else 16)]
    head = qid + struct.pack("!HHHHH", 0x8180, 1, len(addrs), 0, 0)
    body = query[12:qend]
    for a in addrs:
        body += b"\xc0\x0c" + struct.pack("!HHIH", qtype, 1, 30, len(a)) + a
    return head + body


class DnsResponder:
    """A tiny UDP DNS server on port 53 answering from a fixed table."""

    def __init__(self, answers: dict[str, list[bytes]], family: int = socket.AF_INET) -> None:
        self.answers = answers
        self.family = family
        self.ready = threading.Event()
        self._stop = False

    def serve(self) -> None:
        with socket.socket(self.family, socket.SOCK_DGRAM) as s:
            s.bind(("", 53))
            s.settimeout(0.2)
            self.ready.set()
            while not self._stop:
                try:
                    q, addr = s.recvfrom(2048)
                except TimeoutError:
                    continue
                with contextlib.suppress(Exception):
                    resp = dns_response(q, self.answers)
                    if resp:
                        s.sendto(resp, addr)

    def stop(self) -> None:
        self._stop = True


def dns_query(name: str, qtype: int = 1, qid: int = 0x1234) -> bytes:
    q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\0" + struct.pack("!HH", qtype, 1)
