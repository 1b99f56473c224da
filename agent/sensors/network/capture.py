"""Live capture: AF_PACKET sockets with a kernel BPF filter, so that Python sees only the
few packets that matter — never a bulk data packet.

The filter (`FILTER`, compiled by libpcap's `pcap_compile` through ctypes) passes TCP
SYN/FIN/RST, DNS over UDP and TCP, the first payload packet of a TLS connection (a
handshake record holding a ClientHello), HTTP request heads and QUIC long-header
Initial packets, and about one data segment per GiB of each stream (so that sequence
counting can unwrap past 4 GiB), for IPv4 and IPv6 (IPv6 clauses use fixed offsets: pcap-filter's
`tcp[]` indexing is IPv4-only). It is attached before the socket is bound, so no
unfiltered packet is ever queued. The receive buffer is raised to
`network.socket_buffer_bytes`; kernel drops are read with PACKET_STATISTICS.
libpcap is called directly, not through scapy: scapy's `compile_filter` imports scapy's
configuration, protocol tables and cryptography and runs `ldconfig -p` to find the
library (0.17 s of CPU at every start, against 1 ms for the compile itself).

Each capture has a second socket, `Wakeup`, whose filter passes only a connection's
opening SYN and DNS queries: the sensor waits on it always, but on the main socket only
once `captureread.CAPTURE_LINGER` has passed since it last read it, so the rest (SYN-ACKs,
ClientHellos, FINs, DNS answers) is read in batches, in order, without a wake-up each.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import socket
import struct

from agent import metrics
from agent.sensors import SensorUnavailable
from agent.sensors.network.sockbuf import set_receive_buffer

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_OUTGOING = 4
SO_ATTACH_FILTER = 26
DLT_EN10MB = 1
DLT_RAW = 12  # Linux: packets start with the IP header (tun, WireGuard, ...)
# ARPHRD_* interface types (/sys/class/net/IF/type) -> link type of their frames
_ETHERNET_TYPES = frozenset((1, 772))  # ether (also veth, bridges, dummy), loopback
_RAW_IP_TYPES = frozenset((65534, 776, 778, 823))  # none (tun/wireguard), sit, gre, ip6gre

_HTTP = ("GET ", "POST", "PUT ", "HEAD", "DELE", "PATC", "OPTI", "CONN")
_HTTP4 = " or ".join(f"tcp[((tcp[12]&0xf0)>>2):4] = 0x{m.encode().hex()}" for m in _HTTP)
_HTTP6 = " or ".join(f"ip6[40+((ip6[52]&0xf0)>>2):4] = 0x{m.encode().hex()}" for m in _HTTP)

FILTER = " or ".join(
    f"({c})"
    for c in (
        # IPv4
        "tcp[tcpflags] & (tcp-syn|tcp-fin|tcp-rst) != 0",
        "udp port 53 or tcp port 53",
        "tcp[((tcp[12]&0xf0)>>2)] = 0x16 and tcp[((tcp[12]&0xf0)>>2)+5] = 0x01",
        f"ip and tcp and ({_HTTP4})",
        "ip and udp and udp[8] & 0xf0 = 0xc0",
        # IPv6 without extension headers (next header TCP=6 / UDP=17 at offset 6)
        "ip6 and ip6[6] = 6 and ip6[53] & 0x07 != 0",
        "ip6 and ip6[6] = 6 and ip6[40+((ip6[52]&0xf0)>>2)] = 0x16"
        " and ip6[45+((ip6[52]&0xf0)>>2)] = 0x01",
        f"ip6 and ip6[6] = 6 and ({_HTTP6})",
        "ip6 and ip6[6] = 17 and ip6[48] & 0xf0 = 0xc0",
        # one sample per GiB of a stream: data segments starting in the first 128 KiB of
        # each 2^30 of sequence space, so sequence counting unwraps past 4 GiB live
        "tcp[4] & 0x3f = 0 and tcp[5] & 0xfe = 0"
        " and ip[2:2] - ((ip[0]&0xf)<<2) - ((tcp[12]&0xf0)>>2) > 0",
        "ip6 and ip6[6] = 6 and ip6[44] & 0x3f = 0 and ip6[45] & 0xfe = 0"
        " and ip6[4:2] - ((ip6[52]&0xf0)>>2) > 0",
    )
)

# what the wake-up socket passes (a subset of FILTER): a connection's opening SYN (not
# the SYN-ACK), IPv4 and IPv6, and DNS queries — whose sender is looked up in sock_diag
# and /proc, which only works while its socket exists
WAKEUP_FILTER = " or ".join(
    f"({c})"
    for c in (
        "tcp[tcpflags] & (tcp-syn|tcp-ack) = tcp-syn",
        "ip6 and ip6[6] = 6 and ip6[53] & 0x12 = 0x02",
        "udp dst port 53",
    )
)
WAKEUP_BUFFER = 256 << 10  # only a wake-up and an early look-up: a full queue loses nothing
WAKEUP_SNAPLEN = 160  # Ethernet, two VLAN tags, IPv6 and a full TCP header fit


class _BpfProgram(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.c_void_p)]


# the library's names by distribution: Debian's libpcap0.8, then others; the unversioned
# name only exists with the development package
_LIBPCAP_NAMES = ("libpcap.so.0.8", "libpcap.so.1", "libpcap.so")
_SNAPLEN = 0xFFFF  # a dead handle's snapshot length: what scapy passed (its MTU)
_NETMASK_UNKNOWN = 0xFFFFFFFF  # PCAP_NETMASK_UNKNOWN: only `ip broadcast` would need it


@functools.cache
def _load_libpcap() -> ctypes.CDLL:
    """libpcap with the functions compile_bpf calls typed; loaded once."""
    lib = None
    for name in _LIBPCAP_NAMES:
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        raise SensorUnavailable("libpcap is not available (install libpcap0.8)")
    lib.pcap_open_dead.restype = ctypes.c_void_p
    lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.pcap_compile.restype = ctypes.c_int
    lib.pcap_compile.argtypes = [
        ctypes.c_void_p,
        ctypes.POINTER(_BpfProgram),
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_uint32,
    ]
    lib.pcap_geterr.restype = ctypes.c_char_p
    lib.pcap_geterr.argtypes = [ctypes.c_void_p]
    lib.pcap_freecode.restype = None
    lib.pcap_freecode.argtypes = [ctypes.POINTER(_BpfProgram)]
    lib.pcap_close.restype = None
    lib.pcap_close.argtypes = [ctypes.c_void_p]
    return lib


def compile_bpf(expression: str = FILTER, linktype: int = DLT_EN10MB) -> bytes:
    """The classic BPF program for `expression` on this link type, as raw bytes
    (libpcap's optimizer on, as tcpdump and scapy compile it)."""
    lib = _load_libpcap()
    handle = lib.pcap_open_dead(linktype, _SNAPLEN)
    if not handle:
        raise SensorUnavailable(f"libpcap cannot open a handle for link type {linktype}")
    prog = _BpfProgram()
    try:
        if lib.pcap_compile(handle, ctypes.byref(prog), expression.encode(), 1, _NETMASK_UNKNOWN):
            why = (lib.pcap_geterr(handle) or b"").decode(errors="replace")
            raise SensorUnavailable(f"BPF filter does not compile: {why}")
        try:
            return ctypes.string_at(prog.bf_insns, prog.bf_len * 8)
        finally:
            lib.pcap_freecode(ctypes.byref(prog))
    finally:
        lib.pcap_close(handle)


def _attach(sock: socket.socket, program: bytes) -> None:
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("HL", len(program) // 8, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


class Wakeup:
    """The second packet socket of a capture: it holds only what must be handled at once
    (`WAKEUP_FILTER`: outbound connection openings, whose owner is looked up while the
    socket still exists, and DNS queries), so the sensor can leave the main socket
    unwatched for `captureread.CAPTURE_LINGER` after reading it and still wake for those.
    What it receives only starts the look-up of each sender early (before the main
    queue ahead of it is processed): the main socket has the same packets, in order."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._scratch = bytearray(WAKEUP_SNAPLEN)

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> list[bytes]:
        """The queued copies, each cut to WAKEUP_SNAPLEN bytes (headers: enough to look
        the sender up at once; the packets themselves are read from the main socket)."""
        out: list[bytes] = []
        recv, scratch = self.sock.recv_into, self._scratch
        while True:
            try:
                size = recv(scratch)
            except OSError:  # BlockingIOError: empty; anything else shows on the main socket
                return out
            out.append(bytes(scratch[:size]))


def _packet_socket() -> socket.socket:
    try:
        return socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    except PermissionError as e:
        raise SensorUnavailable(
            f"cannot open a packet socket ({e.strerror}): the agent needs CAP_NET_RAW"
        ) from None


class CaptureSocket:
    """One filtered AF_PACKET socket bound to one interface, and its `Wakeup` socket.

    The wake-up socket is bound first: the kernel hands each packet to the taps of an
    interface newest first, so by the time the wake-up socket is readable the main
    socket already holds the same packet (were it otherwise, the packet would only be
    read up to one linger later)."""

    def __init__(
        self, interface: str, buffer_bytes: int, programs: dict[tuple[str, int], bytes]
    ) -> None:
        """`programs` caches compiled filters by expression and link type across
        interfaces."""
        self.interface = interface
        wake = _packet_socket()
        try:
            self.sock = _packet_socket()
        except BaseException:
            wake.close()
            raise
        self.wakeup = Wakeup(wake)
        try:
            # bound with protocol 0 the socket receives nothing yet, and names the
            # interface's ARPHRD type as the kernel of this socket's namespace sees it
            # (/sys/class/net is the namespace /sys was mounted in, which may be another)
            wake.bind((interface, 0))
            kind = wake.getsockname()[3]
            self.loopback = kind == 772
            if kind in _RAW_IP_TYPES:
                self.linktype = DLT_RAW
            elif kind in _ETHERNET_TYPES:
                self.linktype = DLT_EN10MB
            else:
                raise SensorUnavailable(
                    f"network.interfaces: {interface} has link type {kind}, which the agent "
                    "cannot capture (Ethernet-like and raw IP interfaces are supported)"
                )
            self.sock.bind((interface, 0))
            for sock, expression, size in (
                (wake, WAKEUP_FILTER, WAKEUP_BUFFER),
                (self.sock, FILTER, buffer_bytes),  # bound last: it gets each packet first
            ):
                key = (expression, self.linktype)
                if key not in programs:
                    programs[key] = compile_bpf(expression, self.linktype)
                _attach(sock, programs[key])
                set_receive_buffer(sock, size)
                sock.bind((interface, ETH_P_ALL))  # filtered from its first packet
        except OSError as e:
            self.close()
            if e.errno == errno.ENODEV:
                raise SensorUnavailable(f"network.interfaces: no interface {interface!r}") from None
            raise SensorUnavailable(f"cannot capture on {interface}: {e}") from None
        except BaseException:
            self.close()
            raise
        self.sock.setblocking(False)
        wake.setblocking(False)
        self.stats()  # reading resets the counters: start from zero
        # egress_agent_capture_packets_total{interface}, looked up once, not per batch
        self.packet_counter = metrics.CAPTURE_PACKETS.labels(interface)

    def fileno(self) -> int:
        return self.sock.fileno()

    def stats(self) -> tuple[int, int]:
        """(packets, drops) since the last call (tp_packets includes the drops)."""
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
        packets, drops = struct.unpack("II", raw)
        return packets, drops

    def count_drops(self) -> None:
        """Add the kernel's drops since the last call to egress_agent_capture_drops_total."""
        try:
            _packets, drops = self.stats()
        except OSError:
            return
        if drops:
            metrics.CAPTURE_DROPS.labels(self.interface).inc(drops)

    def close(self) -> None:
        self.sock.close()
        self.wakeup.sock.close()
