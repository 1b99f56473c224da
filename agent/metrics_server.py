"""The /metrics endpoint: prometheus_client's registry over HTTP, optionally TLS and auth.

It sits beside the pipeline, not in it: the daemon starts it after the pipeline and
stops it last, and it only reads the metric objects in `agent.metrics`. Local by default
(`metrics.listen` 127.0.0.1:9813). With `metrics.tls_cert`/`tls_key` it serves HTTPS
(TLS 1.2 or newer), and with `metrics.basic_auth_user` plus
`metrics.basic_auth_password_sha256` (the hex SHA-256 of the password, so the config
file holds no password) every request must carry matching HTTP basic credentials. The
TLS handshake runs in the request's thread with a timeout, so a stalled client never
blocks the accept loop.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import hmac
import ipaddress
import logging
import os
import selectors
import socket
import socketserver
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.registry import CollectorRegistry

from agent.config import ConfigError, MetricsSection
from agent.wakepipe import close_pipe, wake_then_join

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 10.0  # seconds a client may take for the handshake and its request
PATHS = frozenset({"/metrics", "/"})


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(certfile=cert, keyfile=key)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"metrics.tls_cert/tls_key: cannot load {cert} with {key}: {e}") from None
    return ctx


def credentials_match(header: str | None, user: str, password_sha256: str) -> bool:
    """True when an Authorization header carries `user` and a password with that SHA-256."""
    if not header or not header.startswith("Basic "):
        return False
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    given_user, sep, password = decoded.partition(":")
    if not sep:
        return False
    digest = hashlib.sha256(password.encode("utf-8")).hexdigest()
    # compare both before combining, so timing does not say which one was wrong
    user_ok = hmac.compare_digest(given_user.encode("utf-8"), user.encode("utf-8"))
    pass_ok = hmac.compare_digest(digest, password_sha256.lower())
    return user_ok and pass_ok


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer
    timeout = REQUEST_TIMEOUT
    protocol_version = "HTTP/1.1"

    def handle(self) -> None:
        try:
            if isinstance(self.connection, ssl.SSLSocket):
                self.connection.do_handshake()  # here, under `timeout`, not in accept()
            super().handle()
        except (ssl.SSLError, OSError) as e:  # bad handshakes, resets, timeouts
            log.debug("metrics: connection from %s ended: %s", self.client_address[0], e)

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def _serve(self, send_body: bool) -> None:
        srv = self.server
        if srv.auth is not None and not credentials_match(
            self.headers.get("Authorization"), *srv.auth
        ):
            self._reply(
                401,
                b"authentication required\n",
                "text/plain",
                send_body,
                [("WWW-Authenticate", 'Basic realm="egress-agent", charset="UTF-8"')],
            )
            return
        if urlsplit(self.path).path not in PATHS:
            self._reply(404, b"not found; metrics are at /metrics\n", "text/plain", send_body)
            return
        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        body = encoder(srv.registry)
        extra = []
        if gzip_accepted(self.headers.get("Accept-Encoding", "")):
            body = gzip.compress(body, compresslevel=1)
            extra.append(("Content-Encoding", "gzip"))
        self._reply(200, body, content_type, send_body, extra)

    def _reply(
        self,
        code: int,
        body: bytes,
        content_type: str,
        send_body: bool,
        extra: list[tuple[str, str]] | None = None,
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra or []:
            self.send_header(k, v)
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics: %s " + format, self.client_address[0], *args)


class MetricsServer(ThreadingHTTPServer):
    """A threading HTTP(S) server for /metrics; `shutdown()` also joins its thread."""

    daemon_threads = True  # request threads hold no state; a stuck scrape must not block exit

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry = REGISTRY,
        tls: ssl.SSLContext | None = None,
        auth: tuple[str, str] | None = None,
    ) -> None:
        self.address_family = _family(host)
        super().__init__((host, port), _Handler)
        self.registry = registry
        self.auth = auth
        self.tls = tls is not None
        if tls is not None:
            self.socket = tls.wrap_socket(
                self.socket, server_side=True, do_handshake_on_connect=False
            )
        self._thread: threading.Thread | None = None
        self._wake_r = self._wake_w = -1

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN (a reverse lookup, up to a DNS
        # timeout) only to fill `server_name`, which nothing here reads
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver would print a traceback to stderr; keep it in the log instead
        log.warning("metrics: request from %s failed", client_address[0], exc_info=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> MetricsServer:
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._serve, name="metrics-http")
        self._thread.start()
        return self

    def _serve(self) -> None:
        """Accept until `shutdown()`: asleep until a scrape connects or the wake pipe is
        written (socketserver's `serve_forever` wakes every 0.5 s to look for shutdown)."""
        with selectors.DefaultSelector() as sel:
            sel.register(self.socket, selectors.EVENT_READ, "accept")
            sel.register(self._wake_r, selectors.EVENT_READ, "stop")
            while True:
                for key, _ in sel.select():
                    if key.data == "stop":
                        return
                    self._handle_request_noblock()  # type: ignore[attr-defined]

    def shutdown(self) -> None:
        if self._thread is not None:
            wake_then_join(self._thread, self._wake_w)
            self._thread = None
            close_pipe(self._wake_r, self._wake_w)


def _family(host: str) -> socket.AddressFamily:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:  # a host name
        return socket.AF_INET


def serve(m: MetricsSection, registry: CollectorRegistry = REGISTRY) -> MetricsServer:
    """Start serving `m` (validated by the config model); ConfigError if TLS files are bad."""
    tls = tls_context(str(m.tls_cert), str(m.tls_key)) if m.tls_cert and m.tls_key else None
    auth = None
    if m.basic_auth_user and m.basic_auth_password_sha256:
        auth = (m.basic_auth_user, m.basic_auth_password_sha256)
    server = MetricsServer(m.host, m.port, registry, tls, auth).start()
    if not _is_loopback(m.host) and (tls is None or auth is None):
        log.warning(
            "metrics on %s are reachable from the network without %s",
            m.listen,
            " and ".join(w for w, on in (("TLS", tls), ("authentication", auth)) if on is None),
        )
    return server


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
