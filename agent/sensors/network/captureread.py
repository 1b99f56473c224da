"""Reading the capture sockets into the flow table, for the live network sensor.

Split from `sensor` (the loop, its deadlines, the hand-over) as `kernelacct` is: a mixin
of `NetworkSensor`, sharing its flow table, captures and loop deadlines. A read takes
each capture's wake-up copies first (their senders are looked up at once), then up to
`_DRAIN_BATCHES` batches of `_BATCH` packets from its main socket into one receive
buffer, and leaves the main sockets unwatched for `CAPTURE_LINGER` afterwards. A capture
that fails is closed, listed in `down` and reopened every `REOPEN_INTERVAL` seconds
while the other interfaces go on.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from agent.config import NetworkSection
from agent.sensors import SensorUnavailable
from agent.sensors.network.capture import DLT_RAW, PACKET_OUTGOING, CaptureSocket
from agent.sensors.network.flowtable import FlowTable
from agent.sensors.network.packets import Packet, decode_ethernet, decode_ip

log = logging.getLogger(__name__)

REOPEN_INTERVAL = 5.0  # seconds between attempts to reopen a failed capture
HOUSEKEEPING = 1.0  # at most this often: timeouts, drop counters (as precise as before)
_BATCH = 256  # packets read from one socket before looking at the others
_DRAIN_BATCHES = 16  # at most this many batches read from a capture at one turn
# after reading a capture, its main socket is left unwatched this long (s): what arrives
# meanwhile (SYN-ACKs, ClientHellos, FINs, DNS answers) is read with the next wake-up of
# any kind, in order, instead of a wake-up each; its wake-up socket (a connection's SYN,
# a DNS query: their sender is looked up while its socket exists) is always watched
CAPTURE_LINGER = 0.05


class CaptureReading:
    """The capture half of `NetworkSensor` (a mixin: it shares the sensor's flow table,
    capture sockets and loop deadlines)."""

    cfg: NetworkSection
    table: FlowTable | None
    captures: list[CaptureSocket]
    down: dict[str, str]  # interfaces whose capture failed, and why
    _programs: dict[tuple[str, int], bytes]  # filters by expression, link type
    packets: int
    _stats_due: float  # time.monotonic() of the next drop-counter read; inf: none due
    _last_stats: float
    _capture_quiet: float  # main capture sockets unwatched until then
    _buf: bytearray  # one receive buffer; the flow table copies what it keeps
    _view: memoryview

    if TYPE_CHECKING:  # provided by KernelAccounting and NetworkSensor

        def _look_up_early(self, packets: Iterable[Packet]) -> None: ...

        def _forget_early(self) -> None: ...

        def _refresh_local(self) -> None: ...

    def _read_captures(self) -> None:
        """Read every capture's queue (up to `_DRAIN_BATCHES` batches each), then leave
        the main sockets unwatched for CAPTURE_LINGER if anything came. The wake-up
        copies are read first: their senders are looked up at once (the packets are in
        the main queue already, maybe behind others), and a SYN queued after this read
        wakes the loop again."""
        read = 0
        more = False
        for cap in list(self.captures):
            decode = decode_ip if cap.linktype == DLT_RAW else decode_ethernet
            self._look_up_early(p for p in map(decode, cap.wakeup.read()) if p is not None)
            for _ in range(_DRAIN_BATCHES):
                n = self._read_packets(cap)
                read += n
                if n < _BATCH:
                    break
            else:
                more = True
        self._forget_early()
        if more:
            self._capture_quiet = time.monotonic()  # read on at the next turn
        elif read:
            self._capture_quiet = time.monotonic() + CAPTURE_LINGER
        else:
            self._capture_quiet = math.inf  # watched again

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
            if self._stats_due == math.inf:  # drops can only follow packets: read them soon
                self._stats_due = max(time.monotonic(), self._last_stats + HOUSEKEEPING)
            cap.packet_counter.inc(n)
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
