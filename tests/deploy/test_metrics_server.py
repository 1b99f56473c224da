"""The hardened /metrics endpoint: real TLS (a self-signed cert made by `openssl req`),
real HTTP basic auth, real HTTPS scrapes — in-process and from a running agent."""

from __future__ import annotations

import base64
import gzip
import hashlib
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter

from agent.config import MetricsSection, Settings
from agent.metrics_server import MetricsServer, credentials_match, serve
from tests.conftest import free_port

PASSWORD = "s3cret pass:word"
PASSWORD_SHA256 = hashlib.sha256(PASSWORD.encode()).hexdigest()


def client_ctx(crt: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(crt))  # verifies the chain and the name
    return ctx


def get(
    url: str, ctx: ssl.SSLContext | None = None, auth: tuple[str, str] | None = None, **hdr: str
) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=hdr)
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=5, context=ctx) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.fixture
def registry() -> CollectorRegistry:
    reg = CollectorRegistry()
    Counter("egress_agent_test_things_total", "Things.", registry=reg).inc(3)
    return reg


@pytest.fixture
def tls_auth_server(
    cert: tuple[Path, Path], registry: CollectorRegistry
) -> Iterator[MetricsServer]:
    m = MetricsSection(
        listen=f"127.0.0.1:{free_port()}",
        tls_cert=cert[0],
        tls_key=cert[1],
        basic_auth_user="prometheus",
        basic_auth_password_sha256=PASSWORD_SHA256,
    )
    srv = serve(m, registry)
    yield srv
    srv.shutdown()
    srv.server_close()


def test_https_scrape_with_credentials(
    tls_auth_server: MetricsServer, cert: tuple[Path, Path]
) -> None:
    url = f"https://127.0.0.1:{tls_auth_server.port}/metrics"
    code, headers, body = get(url, client_ctx(cert[0]), ("prometheus", PASSWORD))
    assert code == 200
    assert b"egress_agent_test_things_total 3.0" in body
    assert headers["Content-Type"].startswith("text/plain")


def test_gzip_and_openmetrics_are_negotiated(
    tls_auth_server: MetricsServer, cert: tuple[Path, Path]
) -> None:
    url = f"https://127.0.0.1:{tls_auth_server.port}/metrics"
    code, headers, body = get(
        url,
        client_ctx(cert[0]),
        ("prometheus", PASSWORD),
        Accept="application/openmetrics-text; version=1.0.0",
        **{"Accept-Encoding": "gzip"},
    )
    assert code == 200 and headers["Content-Encoding"] == "gzip"
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert gzip.decompress(body).rstrip().endswith(b"# EOF")


@pytest.mark.parametrize(
    "auth",
    [None, ("prometheus", "wrong"), ("someone", PASSWORD), ("prometheus", PASSWORD + "x")],
)
def test_wrong_or_missing_credentials_get_401(
    tls_auth_server: MetricsServer, cert: tuple[Path, Path], auth: tuple[str, str] | None
) -> None:
    url = f"https://127.0.0.1:{tls_auth_server.port}/metrics"
    code, headers, body = get(url, client_ctx(cert[0]), auth)
    assert code == 401
    assert headers["WWW-Authenticate"].startswith("Basic ")
    assert b"egress_agent" not in body


def test_plain_http_to_the_tls_port_gets_no_metrics(
    tls_auth_server: MetricsServer, cert: tuple[Path, Path], capfd: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        get(f"http://127.0.0.1:{tls_auth_server.port}/metrics")
    # the failed handshake is a debug log line, not a traceback on stderr, and the
    # server goes on serving
    url = f"https://127.0.0.1:{tls_auth_server.port}/metrics"
    assert get(url, client_ctx(cert[0]), ("prometheus", PASSWORD))[0] == 200
    assert "Traceback" not in capfd.readouterr().err


def test_a_stalled_client_does_not_block_other_scrapes(
    tls_auth_server: MetricsServer, cert: tuple[Path, Path]
) -> None:
    # connects and never starts the handshake
    with socket.create_connection(("127.0.0.1", tls_auth_server.port)):
        url = f"https://127.0.0.1:{tls_auth_server.port}/metrics"
        code, _h, _b = get(url, client_ctx(cert[0]), ("prometheus", PASSWORD))
        assert code == 200


def test_unknown_path_is_404_and_head_has_no_body(registry: CollectorRegistry) -> None:
    srv = MetricsServer("127.0.0.1", 0, registry).start()
    try:
        code, _h, _b = get(f"http://127.0.0.1:{srv.port}/secrets")
        assert code == 404
        req = urllib.request.Request(f"http://127.0.0.1:{srv.port}/metrics", method="HEAD")
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200 and r.read() == b""
    finally:
        srv.shutdown()
        srv.server_close()


@given(st.one_of(st.none(), st.text(max_size=200), st.binary(max_size=200).map(
    lambda b: "Basic " + base64.b64encode(b).decode())))  # fmt: skip
def test_hostile_authorization_headers_never_crash_or_pass(header: str | None) -> None:
    assert credentials_match(header, "prometheus", PASSWORD_SHA256) is False


def test_half_configured_tls_or_auth_is_a_config_error(cert: tuple[Path, Path]) -> None:
    with pytest.raises(ValueError, match="tls_cert and tls_key"):
        Settings(metrics={"tls_cert": str(cert[0])})
    with pytest.raises(ValueError, match="basic_auth_user and basic_auth_password_sha256"):
        Settings(metrics={"basic_auth_user": "prometheus"})
    with pytest.raises(ValueError, match="64 hex digits"):
        Settings(metrics={"basic_auth_user": "p", "basic_auth_password_sha256": "not-a-hash"})


def test_running_agent_serves_https_with_auth(
    run_agent: Any, agent_config: dict[str, Any], cert: tuple[Path, Path]
) -> None:
    agent_config["metrics"].update(
        tls_cert=str(cert[0]),
        tls_key=str(cert[1]),
        basic_auth_user="prometheus",
        basic_auth_password_sha256=PASSWORD_SHA256,
    )
    agent = run_agent(agent_config)
    url = "https://" + agent_config["metrics"]["listen"] + "/metrics"
    ctx = client_ctx(cert[0])
    for _ in range(300):
        try:
            code, _h, body = get(url, ctx, ("prometheus", PASSWORD))
            break
        except (urllib.error.URLError, ConnectionError):
            assert agent.proc.poll() is None, agent.stderr()
            time.sleep(0.1)
    assert code == 200 and b"egress_agent_build_info" in body
    assert get(url, ctx)[0] == 401
    assert agent.stop() == 0


def test_agent_with_unreadable_tls_key_exits_with_one_clear_line(
    agent_config: dict[str, Any], cert: tuple[Path, Path], tmp_path: Path
) -> None:
    from tests.conftest import cli, write_config

    agent_config["metrics"].update(tls_cert=str(cert[0]), tls_key=str(tmp_path / "missing.key"))
    cfg = write_config(tmp_path / "bad.yaml", agent_config)
    res = cli("run", config=cfg, check=False, timeout=60)
    assert res.returncode != 0
    assert "metrics.tls_cert/tls_key" in res.stderr and "Traceback" not in res.stderr


def test_ipv6_loopback_listen(registry: CollectorRegistry) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this kernel")
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no ::1 here")
    m = MetricsSection(listen="[::1]:0")
    srv = serve(m, registry)
    try:
        code, _h, body = get(f"http://[::1]:{srv.port}/metrics")
        assert code == 200 and b"egress_agent_test_things_total" in body
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture(scope="module")
def plain_server() -> Iterator[MetricsServer]:
    reg = CollectorRegistry()
    Counter("egress_agent_test_things_total", "Things.", registry=reg).inc()
    srv = MetricsServer("127.0.0.1", 0, reg, auth=("prometheus", PASSWORD_SHA256)).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@given(st.binary(max_size=2000))
def test_hostile_requests_never_get_metrics_nor_stop_the_server(
    plain_server: MetricsServer, junk: bytes
) -> None:
    reply = raw(plain_server.port, junk + b"\r\n\r\n")
    assert b"egress_agent_test_things_total" not in reply
    # an error response (HTTP/0.9-style, body only, when there is no version) or nothing
    assert not reply or reply.startswith(b"HTTP/1.") or b"Error code" in reply


def test_oversized_request_line_and_headers_are_refused(plain_server: MetricsServer) -> None:
    assert raw(plain_server.port, b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n").startswith(
        b"HTTP/1.1 414"
    )
    many = b"".join(b"X-%d: y\r\n" % i for i in range(200))
    assert b" 431 " in raw(plain_server.port, b"GET /metrics HTTP/1.1\r\n" + many + b"\r\n")
    token = base64.b64encode(f"prometheus:{PASSWORD}".encode())
    ok = raw(
        plain_server.port, b"GET /metrics HTTP/1.0\r\nAuthorization: Basic " + token + b"\r\n\r\n"
    )
    assert ok.startswith(b"HTTP/1.1 200") and b"egress_agent_test_things_total" in ok


def test_a_client_that_stalls_mid_request_is_disconnected(
    plain_server: MetricsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent import metrics_server

    monkeypatch.setattr(metrics_server._Handler, "timeout", 0.5)
    with socket.create_connection(("127.0.0.1", plain_server.port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        started = time.monotonic()
        assert s.recv(1024) == b""  # the server closed it
        assert time.monotonic() - started < 3


def test_listening_beyond_loopback_unprotected_is_warned_about(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    srv = serve(MetricsSection(listen="0.0.0.0:0"), registry)
    try:
        assert "without TLS and authentication" in caplog.text
    finally:
        srv.shutdown()
        srv.server_close()
    caplog.clear()
    srv = serve(MetricsSection(listen="127.0.0.1:0"), registry)
    try:
        assert "reachable from the network" not in caplog.text
    finally:
        srv.shutdown()
        srv.server_close()
