"""The live network sensor: one thread that joins capture, sock_diag and the flow table.

`NetworkSensor.start()` opens everything in the calling thread's network namespace
(filtered AF_PACKET sockets on `network.interfaces`, a sock_diag request socket and the
socket-destroy listener) and raises `SensorUnavailable` with the reason when it cannot
capture. The thread then waits on all sockets at once: captured packets feed the
`FlowTable`; an outbound SYN triggers an exact sock_diag lookup (inode, uid, cookie)
and the /proc index (pid, exe, user); destroy notifications close flows with exact
bytes; a dump every `DUMP_INTERVAL` seconds updates long flows and repairs lost
notifications. Flows leave through `emit` as `agent.events.Flow`.
"""

from __future__ import annotations

import logging
import select
import threading
import time
from typing import Any

from agent import metrics
from agent.config import NetworkSection
from agent.events import Flow, ProcessInfo
from agent.liveness import HEARTBEATS, Heartbeat, supervised
from agent.sensors import Emit, SensorUnavailable
from agent.sensors.network.capture import DLT_RAW, PACKET_OUTGOING, CaptureSocket
from agent.sensors.network.conntrack import Conntrack
from agent.sensors.network.destinations import Destinations
from agent.sensors.network.flowstate import FlowKey, FlowState
from agent.sensors.network.flowtable import FlowTable
from agent.sensors.network.host import ephemeral_range, is_loopback, local_addresses
from agent.sensors.network.packets import IPPROTO_TCP, decode_ethernet, decode_ip
from agent.sensors.network.procindex import ProcIndex, user_name
from agent.sensors.network.sockdiag import DestroyListener, DiagSocket, SockDiag

log = logging.getLogger(__name__)

DUMP_INTERVAL = 3.0
REOPEN_INTERVAL = 5.0  # seconds between attempts to reopen a failed capture
LOCAL_REFRESH = 30.0  # seconds between re-reads of this host's addresses (DHCP, VPNs)
TICK = 0.5
_PEER_FIN_STATES = frozenset((6, 8, 9, 11))  # TIME_WAIT, CLOSE_WAIT, LAST_ACK, CLOSING
_TCP_CLOSE = 7  # reached by an orderly close (FIN counted) or a reset (none): ambiguous
_BATCH = 256  # packets read from one socket before looking at the others
_DRAIN_BATCHES = 16  # at most this many batches read ahead of destroy notifications


class NetworkSensor:
    name = "network"

    def __init__(
        self, cfg: NetworkSection, destinations: Destinations, netlink_buffer: int = 4 << 20
    ) -> None:
        self.cfg = cfg
        self.netlink_buffer = netlink_buffer
        self.destinations = destinations
        self.captures: list[CaptureSocket] = []
        self.diag: SockDiag | None = None
        self.destroy: DestroyListener | None = None
        self.kernel_accounting = "off"
        self.conntrack: Conntrack | None = None
        self.udp_accounting = "off"
        self.procs = ProcIndex()
        self.cookies: dict[int, FlowKey] = {}
        self.down: dict[str, str] = {}  # interfaces whose capture failed, and why
        self._programs: dict[int, bytes] = {}  # compiled filters by link type
        self.local: set[bytes] = set()
        self.emitted = 0
        self.dropped = 0
        self.packets = 0
        self.lost_notifications = 0
        self.thread_cpu = 0.0  # CPU seconds of the sensor's own thread, updated each second
        self._emit: Emit | None = None
        # metric children looked up once, not per packet batch and per flow
        self._events_metric = metrics.SENSOR_EVENTS.labels(self.name)
        self._packet_metrics: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._beat = Heartbeat("sensor-network")
        self.table: FlowTable | None = None
        self._buf = bytearray(65536)  # one receive buffer; the flow table copies what it keeps
        self._view = memoryview(self._buf)

    # --- lifecycle ---------------------------------------------------------------------
    def start(self, emit: Emit) -> None:
        if not self.cfg.interfaces:
            raise SensorUnavailable("no interfaces configured (network.interfaces)")
        try:
            for name in self.cfg.interfaces:
                self.captures.append(
                    CaptureSocket(name, self.cfg.socket_buffer_bytes, self._programs)
                )
            self._open_kernel_accounting()
            self._open_conntrack()
            self.local = local_addresses()
        except BaseException:
            self._close()
            raise
        self.ephemeral = ephemeral_range()
        self._emit = emit
        self.table = FlowTable(
            self._export,
            self.destinations,
            idle_timeout=self.cfg.idle_timeout,
            active_timeout=self.cfg.active_timeout,
            is_local=self._is_local,
            count_metrics=True,
            max_flows=self.cfg.max_flows,
        )
        self.table.on_new_flow = self._attribute
        self._beat = HEARTBEATS.add("sensor-network")
        loop = supervised(self._run, self._beat, self._stop)
        self._thread = threading.Thread(target=loop, name="sensor-network")
        self._thread.start()

    def _is_local(self, address: bytes) -> bool:
        return address in self.local

    def _refresh_local(self) -> None:
        try:
            self.local = local_addresses()
        except Exception as e:  # keep the last known set; addresses rarely change
            log.warning("cannot list local addresses: %s", e)

    def _open_kernel_accounting(self) -> None:
        if not self.cfg.kernel_accounting:
            return
        try:
            self.diag = SockDiag()
        except OSError as e:
            self.kernel_accounting = f"off: sock_diag unavailable ({e.strerror})"
            return
        try:
            self.destroy = DestroyListener(self.netlink_buffer)
        except OSError as e:
            # without CAP_NET_ADMIN: owners and dumps still work; bytes at close from seq
            self.kernel_accounting = f"dump only: destroy notifications need CAP_NET_ADMIN ({e})"
            return
        self.kernel_accounting = "on"

    def _open_conntrack(self) -> None:
        try:
            self.conntrack = Conntrack()
        except (OSError, ImportError) as e:
            self.udp_accounting = f"captured packets only: conntrack unavailable ({e})"
            return
        self.udp_accounting = "conntrack"

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            HEARTBEATS.remove(self._beat.name)
        self._close()

    def _close(self) -> None:
        for c in self.captures:
            c.close()
        self.captures = []
        for s in (self.diag, self.destroy, self.conntrack):
            if s is not None:
                s.close()
        self.diag = self.destroy = None
        self.conntrack = None

    def status(self) -> dict[str, object]:
        return {
            "interfaces": list(self.cfg.interfaces),
            "interfaces_down": dict(self.down),
            "kernel_accounting": self.kernel_accounting,
            "process_attribution": "on" if self.diag is not None else "off",
            "udp_accounting": self.udp_accounting,
            "open_flows": len(self.table.flows) if self.table else 0,
            "flows_emitted": self.emitted,
            "flows_dropped": self.dropped,
            "packets": self.packets,
            "lost_notifications": self.lost_notifications,
            "thread_cpu_seconds": round(self.thread_cpu, 3),
            # which country table the running sensor uses, and how old it is
            "country_data": (
                self.destinations.countries.info.as_dict(self.cfg.country_data_max_age_days)
                if self.destinations.countries is not None
                else None
            ),
        }

    # --- the loop ----------------------------------------------------------------------
    def _run(self) -> None:
        assert self.table is not None
        table = self.table
        next_dump = next_tick = 0.0
        next_reopen = time.monotonic() + REOPEN_INTERVAL
        next_local = time.monotonic() + LOCAL_REFRESH
        beat = self._beat.beat
        while not self._stop.is_set():
            beat()
            waitables: list[Any] = [*self.captures]
            if self.destroy is not None:
                waitables.append(self.destroy)
            try:
                ready, _, _ = select.select(waitables, [], [], TICK)
            except InterruptedError:
                continue
            try:
                for w in ready:
                    if isinstance(w, CaptureSocket):
                        self._read_packets(w)
                if self.destroy is not None and self.destroy in ready:
                    # a destroyed connection's packets were queued on the capture sockets
                    # before the kernel reported the destroy: read them first, or a late
                    # SYN would open the flow again after its final record (and its SNI
                    # would miss that record)
                    for cap in list(self.captures):
                        for _ in range(_DRAIN_BATCHES):
                            if self._read_packets(cap) < _BATCH:
                                break
                    self._read_destroyed()
                now = time.monotonic()
                if now >= next_dump:
                    next_dump = now + DUMP_INTERVAL
                    if self.diag is not None:
                        self._dump()
                    if self.conntrack is not None:
                        self._conntrack_dump()
                if self.down and now >= next_reopen:
                    next_reopen = now + REOPEN_INTERVAL
                    self._reopen()
                if now >= next_local:
                    next_local = now + LOCAL_REFRESH
                    self._refresh_local()
                if now >= next_tick:
                    next_tick = now + 1.0
                    self.thread_cpu = time.thread_time()
                    self._poll_stats()
                    table.expire(time.time())
                    self.cookies = {c: k for c, k in self.cookies.items() if k in table.flows}
            except Exception:  # one bad packet or netlink hiccup must not end the sensor
                log.exception("network sensor: error while processing; continuing")
        for c in list(self.captures):
            self._read_packets(c)
        if self.destroy is not None:
            self._read_destroyed()
        table.flush(time.time())

    def _read_packets(self, cap: CaptureSocket) -> int:
        """Read up to `_BATCH` packets; returns how many were read."""
        assert self.table is not None
        buf, view = self._buf, self._view
        packet = self.table.packet
        decode = decode_ip if cap.linktype == DLT_RAW else decode_ethernet
        n = reads = 0
        sock, loopback = cap.sock, cap.loopback
        for _ in range(_BATCH):
            try:
                # only loopback needs the sender address (its direction); building it
                # costs an ioctl (SIOCGIFNAME) and a tuple per packet
                if loopback:
                    size, addr = sock.recvfrom_into(buf)
                    reads += 1
                    if addr[2] == PACKET_OUTGOING:
                        continue  # loopback shows each packet twice; keep the incoming copy
                else:
                    size = sock.recv_into(buf)
                    reads += 1
            except BlockingIOError:
                break
            except OSError as e:  # ENETDOWN: the interface went away; reopened on the tick
                log.warning(
                    "capture on %s failed (%s); reopening it every %.0f s",
                    cap.interface,
                    e,
                    REOPEN_INTERVAL,
                )
                self.captures.remove(cap)
                cap.close()
                self.down[cap.interface] = str(e)
                break
            n += 1
            pkt = decode(view, 0, size)
            if pkt is not None:
                packet(pkt, time.time(), view, size)
        if n:
            self.packets += n
            counter = self._packet_metrics.get(cap.interface)
            if counter is None:
                counter = self._packet_metrics[cap.interface] = metrics.CAPTURE_PACKETS.labels(
                    cap.interface
                )
            counter.inc(n)
        return reads

    def _reopen(self) -> None:
        for name in list(self.down):
            try:
                cap = CaptureSocket(name, self.cfg.socket_buffer_bytes, self._programs)
            except SensorUnavailable as e:
                self.down[name] = str(e)
                continue
            self.captures.append(cap)
            del self.down[name]
            log.info("capture on %s reopened", name)
            self._refresh_local()

    def _poll_stats(self) -> None:
        for cap in self.captures:
            try:
                _packets, drops = cap.stats()
            except OSError:
                continue
            if drops:
                metrics.CAPTURE_DROPS.labels(cap.interface).inc(drops)

    # --- kernel accounting ---------------------------------------------------------------
    def _key(self, s: DiagSocket) -> FlowKey:
        return (IPPROTO_TCP, s.src, s.sport, s.dst, s.dport)

    def _outbound_guess(self, s: DiagSocket) -> bool:
        """A socket whose SYN we did not see: outbound if its local port is ephemeral.
        Loopback conversations never leave the host and are not reported."""
        if is_loopback(s.dst):
            return False
        return self.ephemeral[0] <= s.sport <= self.ephemeral[1]

    def _read_destroyed(self) -> None:
        assert self.destroy is not None and self.table is not None
        socks, lost = self.destroy.read()
        now = time.time()
        for s in socks:
            # the cookie first: an abortive close (tcp_disconnect) zeroes the peer port
            key = self.cookies.pop(s.cookie, None)
            if key is None:
                if s.dport == 0:
                    continue  # a listening or unconnected socket
                key = self._key(s)
            if not s.bytes_acked and not s.bytes_received:
                self.table.kernel_reset(key, now)
                continue
            self.table.kernel_update(
                key,
                s.payload_out,
                s.bytes_received or 0,
                now,
                final=True,
                adopt=self._outbound_guess(s),
            )
        if lost:
            self.lost_notifications += 1
            metrics.NETLINK_LOST.inc()
            self._dump()

    def _dump(self) -> None:
        assert self.diag is not None and self.table is not None
        try:
            socks = self.diag.dump()
        except OSError as e:
            log.warning("sock_diag dump failed: %s", e)
            return
        now = time.time()
        for s in socks:
            st = self.table.kernel_update(
                self._key(s),
                s.payload_out,
                s.bytes_received or 0,
                now,
                adopt=self._outbound_guess(s),
                peer_fin=None if s.state == _TCP_CLOSE else s.state in _PEER_FIN_STATES,
            )
            if st is not None and st.cookie is None:
                self._own(st, s)

    def _conntrack_dump(self) -> None:
        assert self.conntrack is not None and self.table is not None
        try:
            entries = self.conntrack.dump()
        except Exception as err:  # netlink errors surface as several pyroute2 types
            log.warning("conntrack dump failed: %s", err)
            return
        now = time.time()
        for e in entries:
            if is_loopback(e.dst):
                continue
            key = (e.proto, e.src, e.sport, e.dst, e.dport)
            self.table.conntrack_update(key, e.bytes_orig, e.bytes_reply, now)

    def _attribute(self, st: FlowState) -> None:
        """On an outbound SYN (or a UDP conversation's first packet): which local socket,
        and which process, sent it."""
        proto, src, sport, dst, dport = st.key
        if src not in self.local:
            return  # forwarded traffic: no local socket
        if proto != IPPROTO_TCP:
            if self.diag is not None:
                s = self.diag.lookup_udp(src, sport, dst, dport)
                if s is not None:
                    self._process(st, s)
            return
        if self.destroy is not None:
            st.owned = True  # its destroy notification will bring the exact bytes
        if self.diag is None:
            return
        s = self.diag.lookup(src, sport, dst, dport)
        if s is not None:
            self._own(st, s)

    def _own(self, st: FlowState, s: DiagSocket) -> None:
        st.cookie = s.cookie
        self.cookies[s.cookie] = st.key
        self._process(st, s)

    def _process(self, st: FlowState, s: DiagSocket) -> None:
        if st.process is None:
            pid = self.procs.pid_of(s.inode)
            if pid is not None:
                st.process = self.procs.process(pid, s.uid)
            else:
                st.process = ProcessInfo(uid=s.uid, user=user_name(s.uid))

    def _export(self, flow: Flow) -> None:
        assert self._emit is not None
        if self._emit(flow):
            self.emitted += 1
            self._events_metric.inc()
        else:
            self.dropped += 1
