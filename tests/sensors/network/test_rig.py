"""The live sensor in the two-namespace rig: real TCP, TLS, DNS, resets, IPv6."""

from __future__ import annotations

import fcntl
import io
import json
import os
import select
import socket
import ssl
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agent import metrics
from tests.conftest import wait_until
from tests.sensors.network.peers import DnsResponder, Sink, dns_query, self_signed
from tests.sensors.network.rig import Rig

pytestmark = [pytest.mark.netns]


def _start_sink(rig: Rig, **kw: Any) -> Sink:
    sink = Sink(**kw)
    rig.run_in(rig.peer_ns, sink.serve)
    assert sink.ready.wait(5)
    return sink


def _connect(rig: Rig, addr: str, port: int, family: int = socket.AF_INET) -> socket.socket:
    """A TCP socket of the sender namespace, connected to `addr`:`port`."""
    with rig.sender():
        s = socket.socket(family)
    try:
        s.connect((addr, port))
    except BaseException:
        s.close()
        raise
    return s


def _upload(
    rig: Rig,
    addr: str,
    port: int,
    size: int,
    family: int = socket.AF_INET,
    hold: float = 0.0,
) -> int:
    """Connect from the sender namespace, send `size` bytes, close cleanly; the local port.

    `hold` keeps the connection open that long before sending: the owner of a socket is
    looked up while it is open, and a connection that ends before the sensor reads its
    first packet (a busy capture, just reopened) keeps its bytes but not its process."""
    with _connect(rig, addr, port, family) as s:
        local = s.getsockname()[1]
        time.sleep(hold)
        chunk = b"\xa5" * (1 << 20)
        left = size
        while left:
            left -= s.send(chunk[: min(left, len(chunk))])
        s.shutdown(socket.SHUT_WR)
        s.recv(1)  # the peer closes after reading everything
    return int(local)


def _sample_plain(metric: Any) -> float:
    return float(metric._value.get())


def _sample(metric: Any, *labels: str) -> float:
    return float(metric.labels(*labels)._value.get())


def test_uploads_of_known_sizes_are_exact(rig: Rig, sensor_in: Any) -> None:
    sensor, out = sensor_in()
    sink = _start_sink(rig)
    bytes_before = _sample(metrics.OUTBOUND_BYTES, "internal", "unknown")
    packets_before = _sample(metrics.CAPTURE_PACKETS, rig.sender_if)
    sizes = [0, 1, 1448, 65543, 3_000_001, 40_000_000]
    ports = [_upload(rig, rig.peer_v4, sink.port, n) for n in sizes]
    assert list(sink.wait(ports).values()) == sizes
    flows = out.wait_for(lambda fs: len([f for f in fs if f.dst_port == sink.port]) == len(sizes))
    by_port = {f.src_port: f for f in flows}
    for port, size in zip(ports, sizes):
        f = by_port[port]
        assert f.bytes_out == size, (size, f)
        assert f.bytes_in == 0
        assert f.byte_source == "tcp_info"
        assert f.close_reason == "fin"
        assert f.protocol == "tcp" and f.dst_ip == rig.peer_v4 and f.src_ip == rig.sender_v4
        assert f.dest_class == "internal"
        # attribution is best effort: a short connection may be in TIME_WAIT by the time
        # the sensor looks its SYN up, and that remnant names no owner (inode and uid 0)
        assert f.process is None or f.process.uid == os.getuid()
    assert _sample(metrics.OUTBOUND_BYTES, "internal", "unknown") - bytes_before == sum(sizes)
    # the kernel filter let through only handshake and teardown packets, not 43 MB of data
    assert _sample(metrics.CAPTURE_PACKETS, rig.sender_if) - packets_before < 12 * len(sizes)
    assert sensor.status()["kernel_accounting"] == "on"
    sink.stop()


def test_many_short_connections(rig: Rig, sensor_in: Any) -> None:
    _sensor, out = sensor_in()
    sink = _start_sink(rig)
    sizes = {(_upload(rig, rig.peer_v4, sink.port, i * 37)): i * 37 for i in range(150)}
    sink.wait(list(sizes))
    flows = out.wait_for(lambda fs: len(fs) >= len(sizes))
    got = {f.src_port: f.bytes_out for f in flows if f.dst_port == sink.port}
    assert got == sizes
    sink.stop()


def test_ipv6_upload(rig: Rig, sensor_in: Any) -> None:
    _sensor, out = sensor_in()
    sink = _start_sink(rig, family=socket.AF_INET6)
    port = _upload(rig, rig.peer_v6, sink.port, 5_000_003, family=socket.AF_INET6)
    sink.wait([port])
    (f,) = out.wait_for(lambda fs: any(f.src_port == port for f in fs))
    assert f.dst_ip == rig.peer_v6 and f.bytes_out == 5_000_003
    assert f.dest_class == "internal"  # fd00::/8 is in the default fc00::/7


def test_tls_client_hello_gives_sni(rig: Rig, sensor_in: Any, tmp_path: Path) -> None:
    _sensor, out = sensor_in()
    sink = _start_sink(rig, tls=self_signed(tmp_path), ack_after=10_000)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    ports = []
    for i in range(20):
        raw = _connect(rig, rig.peer_v4, sink.port)
        with client.wrap_socket(raw, server_hostname=f"upload{i}.example.org") as s:
            s.sendall(b"z" * 10_000)
            assert s.recv(1) == b"k"  # all of it arrived before we close
            ports.append(s.getsockname()[1])
    sink.wait(ports)
    flows = out.wait_for(lambda fs: len([f for f in fs if f.src_port in ports]) == len(ports))
    for f in flows:
        i = ports.index(f.src_port)
        assert f.sni == f"upload{i}.example.org"
        assert f.name == f.sni and f.name_source == "sni"
        assert 10_000 < f.bytes_out < 16_000  # TLS records around 10 kB of application data


def test_dns_answers_name_the_flow(rig: Rig, sensor_in: Any) -> None:
    _sensor, out = sensor_in(idle_timeout=1.0)
    dns = DnsResponder(
        {
            "files.example.org": [socket.inet_aton(rig.peer_v4)],
            "v6.example.org": [socket.inet_pton(socket.AF_INET6, rig.peer_v6)],
        }
    )
    rig.run_in(rig.peer_ns, dns.serve)
    assert dns.ready.wait(5)
    sink = _start_sink(rig)
    sink6 = _start_sink(rig, family=socket.AF_INET6)
    for name, qtype in (("files.example.org", 1), ("v6.example.org", 28)):
        with rig.sender():
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with u:
            u.settimeout(5)
            u.sendto(dns_query(name, qtype), (rig.peer_v4, 53))
            answer, _ = u.recvfrom(2048)
            assert struct.unpack("!H", answer[6:8])[0] == 1
    p4 = _upload(rig, rig.peer_v4, sink.port, 12345)
    p6 = _upload(rig, rig.peer_v6, sink6.port, 54321, family=socket.AF_INET6)
    flows = out.wait_for(lambda fs: {p4, p6} <= {f.src_port for f in fs if f.protocol == "tcp"})
    named = {f.src_port: f for f in flows if f.protocol == "tcp"}
    assert (named[p4].name, named[p4].name_source) == ("files.example.org", "dns")
    assert (named[p6].name, named[p6].name_source) == ("v6.example.org", "dns")
    # the DNS conversations themselves are UDP flows, exported after the idle timeout
    udp = out.wait_for(lambda fs: len([f for f in fs if f.dst_port == 53]) >= 2)
    dns_flows = [f for f in udp if f.dst_port == 53]
    assert all(f.protocol == "udp" and f.byte_source == "packets" for f in dns_flows)
    assert all(f.bytes_out > 12 and f.close_reason == "idle" for f in dns_flows)
    dns.stop()


def test_reset_by_sender_after_known_bytes(rig: Rig, sensor_in: Any) -> None:
    _sensor, out = sensor_in()
    sink = _start_sink(rig, ack_after=1_000_000)
    s = _connect(rig, rig.peer_v4, sink.port)
    port = s.getsockname()[1]
    s.sendall(b"r" * 1_000_000)
    assert s.recv(1) == b"k"  # the peer read all of it
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()  # abortive close: RST
    (f,) = out.wait_for(lambda fs: any(f.src_port == port for f in fs))
    assert f.close_reason == "rst"
    # the abortive close zeroes tcp_info: bytes come from a dump or sequence numbers
    assert f.bytes_out == 1_000_000 and f.byte_source in ("tcp_info", "tcp_seq")


def test_reset_by_peer_mid_transfer(rig: Rig, sensor_in: Any) -> None:
    _sensor, out = sensor_in()
    sink = _start_sink(rig, reset_after=300_000)
    s = _connect(rig, rig.peer_v4, sink.port)
    port = s.getsockname()[1]
    sent = 0
    with s:
        try:
            while sent < 50_000_000:
                sent += s.send(b"q" * 65536)
        except OSError:
            pass
    received = sink.wait([port])[port]
    (f,) = out.wait_for(lambda fs: any(f.src_port == port for f in fs))
    assert f.close_reason == "rst"
    assert received <= f.bytes_out <= sent


def test_inbound_connections_are_not_reported(rig: Rig, sensor_in: Any) -> None:
    _sensor, out = sensor_in(idle_timeout=1.0)
    with rig.sender():
        srv = socket.socket()
    with srv:
        srv.bind((rig.sender_v4, 0))
        srv.listen()
        port = srv.getsockname()[1]
        with rig.peer():
            c = socket.socket()
        c.connect((rig.sender_v4, port))
        conn, _ = srv.accept()
        c.sendall(b"in" * 1000)
        conn.recv(4000)
        c.close()
        conn.close()
    time.sleep(2.5)
    assert [f for f in out.flows if port in (f.src_port, f.dst_port)] == []


def test_sequence_accounting_without_kernel_counts(rig: Rig, sensor_in: Any) -> None:
    sensor, out = sensor_in(kernel_accounting=False)
    sink = _start_sink(rig)
    port = _upload(rig, rig.peer_v4, sink.port, 7_777_777)
    sink.wait([port])
    (f,) = out.wait_for(lambda fs: any(f.src_port == port for f in fs))
    assert (f.bytes_out, f.byte_source, f.close_reason) == (7_777_777, "tcp_seq", "fin")
    assert f.process is None
    assert sensor.status()["kernel_accounting"] == "off"


def test_active_timeout_splits_a_long_upload(rig: Rig, sensor_in: Any) -> None:
    _sensor, out = sensor_in(active_timeout=1.0)
    sink = _start_sink(rig)
    with _connect(rig, rig.peer_v4, sink.port) as s:
        port = s.getsockname()[1]
        for _ in range(8):
            s.sendall(b"a" * 500_000)
            time.sleep(0.5)
        s.shutdown(socket.SHUT_WR)
        s.recv(1)
    sink.wait([port])
    records = out.wait_for(
        lambda fs: any(f.src_port == port and f.close_reason == "fin" for f in fs)
    )
    mine = [f for f in records if f.src_port == port]
    assert len(mine) >= 2 and mine[0].close_reason == "active"
    assert sum(f.bytes_out for f in mine) == 4_000_000


def test_process_and_user_of_the_sending_socket(rig: Rig, sensor_in: Any) -> None:
    _sensor, out = sensor_in()
    sink = _start_sink(rig)
    with _connect(rig, rig.peer_v4, sink.port) as s:
        port = s.getsockname()[1]
        time.sleep(0.3)  # attribution is best effort: give it a live socket to find
        s.sendall(b"p" * 1000)
        s.shutdown(socket.SHUT_WR)
        s.recv(1)
    (f,) = out.wait_for(lambda fs: any(f.src_port == port for f in fs))
    p = f.process
    assert p is not None and p.pid == os.getpid() and p.ppid == os.getppid()
    assert p.uid == os.getuid() and p.user == "root"
    assert p.exe == os.path.realpath(f"/proc/{os.getpid()}/exe")
    assert p.cmdline and "pytest" in p.cmdline


@pytest.mark.slow
def test_sequence_accounting_past_four_gib_live(rig: Rig, sensor_in: Any) -> None:
    """Without tcp_info, the once-per-GiB samples let the live seq count unwrap."""
    _sensor, out = sensor_in(kernel_accounting=False)
    sink = _start_sink(rig)
    size = 2**32 + 12_345
    port = _upload(rig, rig.peer_v4, sink.port, size)
    assert sink.wait([port], timeout=120)[port] == size
    (f,) = out.wait_for(lambda fs: any(f.src_port == port for f in fs))
    assert (f.bytes_out, f.byte_source) == (size, "tcp_seq")


def test_capture_reopens_when_the_interface_comes_back(rig: Rig, sensor_in: Any) -> None:
    sensor, out = sensor_in()
    rig.del_link()
    deadline = time.monotonic() + 5
    while rig.sender_if not in sensor.status()["interfaces_down"]:
        assert time.monotonic() < deadline, "the lost interface was not noticed"
        time.sleep(0.1)
    rig.add_link()
    deadline = time.monotonic() + 15
    while sensor.status()["interfaces_down"]:
        assert time.monotonic() < deadline, sensor.status()
        time.sleep(0.2)
    sink = _start_sink(rig)
    time.sleep(0.2)  # IPv4 on the new link is usable at once; give ARP a moment
    port = _upload(rig, rig.peer_v4, sink.port, 424_242, hold=1.0)
    (f,) = out.wait_for(lambda fs: any(f.src_port == port for f in fs))
    assert f.bytes_out == 424_242 and f.process is not None


_BURST = """
import json, socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out, socks = {}, []
for i in range(n):
    s = socket.create_connection((host, port))
    s.sendall(b"b" * (1000 + i))
    out[s.getsockname()[1]] = 1000 + i
    s.shutdown(socket.SHUT_WR)
    socks.append(s)
for s in socks:
    s.recv(1)  # the peer has read everything and closed
print("ready", flush=True)
sys.stdin.readline()
for s in socks:  # hundreds of sockets freed at once
    s.close()
print(json.dumps(out), flush=True)
"""


def test_lost_destroy_notifications_are_counted_and_flows_stay_exact(
    rig: Rig, sensor_in: Any
) -> None:
    sensor, out = sensor_in(netlink_buffer=4096)  # room for a handful of notifications
    sink = _start_sink(rig)
    lost_before = _sample_plain(metrics.NETLINK_LOST)
    burst = rig.exec(
        rig.sender_ns,
        sys.executable,
        "-c",
        _BURST,
        rig.peer_v4,
        str(sink.port),
        "400",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert burst.stdin is not None and burst.stdout is not None
    assert burst.stdout.readline().strip() == "ready"
    # keep the sensor thread off the GIL while the kernel sends 400 notifications into
    # a buffer that holds a few: the overflow (ENOBUFS) is certain, not a race
    previous = sys.getswitchinterval()
    sys.setswitchinterval(5.0)
    try:
        burst.stdin.write("go\n")
        burst.stdin.flush()
        deadline = time.perf_counter() + 0.5
        while time.perf_counter() < deadline:
            pass
    finally:
        sys.setswitchinterval(previous)
    sizes = {int(k): v for k, v in json.loads(burst.stdout.readline()).items()}
    burst.wait(10)
    sink.wait(list(sizes))
    flows = out.wait_for(lambda fs: len(fs) >= len(sizes), timeout=30)
    assert {f.src_port: f.bytes_out for f in flows} == sizes
    assert sensor.status()["lost_notifications"] > 0
    assert _sample_plain(metrics.NETLINK_LOST) > lost_before


def test_quic_initial_names_a_udp_flow(rig: Rig, sensor_in: Any) -> None:
    from tests.sensors.network.test_quic import quic_initial

    _sensor, out = sensor_in(idle_timeout=1.0)
    with rig.peer():
        rx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    with rx:
        rx.bind((rig.peer_v6, 0))
        with rig.sender():
            tx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        with tx:
            tx.sendto(quic_initial("h3.files.example"), (rig.peer_v6, rx.getsockname()[1]))
            tx.sendto(b"\x41" + b"d" * 500, (rig.peer_v6, rx.getsockname()[1]))  # short header
            port = tx.getsockname()[1]
            (f,) = out.wait_for(lambda fs: any(f.src_port == port for f in fs))
    assert (f.protocol, f.sni, f.name_source, f.close_reason) == (
        "udp",
        "h3.files.example",
        "sni",
        "idle",
    )
    assert f.process is not None and f.process.pid == os.getpid()  # the UDP socket's owner


def test_raw_ip_interfaces_like_tun_and_wireguard(rig: Rig, sensor_in: Any) -> None:
    tun = f"eat{rig.name}"
    for cmd in (
        ["tuntap", "add", "dev", tun, "mode", "tun"],
        ["addr", "add", "10.201.0.1/24", "dev", tun],
        ["link", "set", tun, "up"],
    ):
        subprocess.run(["ip", "-n", rig.sender_ns, *cmd], check=True, capture_output=True)
    sensor, out = sensor_in(interfaces=[tun])  # alone: every packet it counts is the tunnel's
    with rig.sender():
        # a tun with no reader has no carrier, and the kernel drops what is routed to it
        # before any capture sees it: attach one, as a VPN daemon would, so the SYN leaves
        reader = _attach_tun(tun)
        s = socket.socket()
    with reader, s:
        s.setblocking(False)
        try:
            s.connect(("10.201.0.2", 443))  # nobody answers on the tunnel: only the SYN leaves
        except BlockingIOError:
            pass
        port = s.getsockname()[1]
        # the SYN as the tunnel's reader gets it: a bare IPv4 packet, no link header (IPv6
        # router solicitations may come first)
        assert _tun_reads_ipv4_to(reader, "10.201.0.2"), "the SYN did not reach the tunnel"
        wait_until(
            lambda: sensor.status()["packets"] and sensor.status()["open_flows"],
            "the SYN on the tun device captured",
            5,
            interval=0.05,
        )
    sensor.stop()
    (f,) = [f for f in out.flows if f.src_port == port]
    assert (f.dst_ip, f.dst_port, f.dest_class) == ("10.201.0.2", 443, "internal")


def _attach_tun(name: str) -> io.FileIO:
    """Attach a reader to the persistent tun device `name` (in this thread's namespace):
    the device's carrier comes up, and packets routed to it are sent, and captured."""
    tun_set_iff, iff_tun, iff_no_pi = 0x400454CA, 0x0001, 0x1000
    reader = io.FileIO("/dev/net/tun", "r+")
    fcntl.ioctl(reader, tun_set_iff, struct.pack("16sH", name.encode(), iff_tun | iff_no_pi))
    return reader


def _tun_reads_ipv4_to(reader: io.FileIO, dst: str, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if select.select([reader], [], [], left)[0]:
            packet = reader.read(2048) or b""
            if packet[:1] == b"\x45" and socket.inet_ntoa(packet[16:20]) == dst:
                return True
    return False
