"""The live network sensor: one thread that joins capture, sock_diag and the flow table.

`NetworkSensor.start()` opens everything in the calling thread's network namespace
(filtered AF_PACKET sockets on `network.interfaces`, a sock_diag request socket and the
socket-destroy listener) and raises `SensorUnavailable` with the reason when it cannot
capture. The thread then waits on all sockets at once: captured packets feed the
`FlowTable`; an outbound SYN triggers an exact sock_diag lookup (inode, uid, cookie)
and the /proc index (pid, exe, user); destroy notifications close flows with exact
bytes; a dump every `DUMP_INTERVAL` seconds, while local TCP flows are open, updates
long flows (backing off to `MAX_DUMP_INTERVAL` while their counts stand still), and a
dump repairs lost notifications. Flows leave through `emit` as `agent.events.Flow`.

The loop is event-driven: it sleeps in one select() until a socket is readable or the
earliest of its own deadlines (the table's next timeout, the next dump, a drop-counter
read after packets, held flows to hand over) is due, so a quiet host with no open flows
wakes it only for what arrives (address changes and new UDP conversations come as
netlink messages, see `netwatch`), and at least every `MAX_SLEEP` seconds to beat its
heartbeat. Exported flows are handed to the pipeline in batches (`FLOW_LINGER`).
Reading the captures is `captureread`, sock_diag and conntrack are `kernelacct`: mixins
sharing this class's state.
"""

from __future__ import annotations

import logging
import math
import os
import select
import threading
import time
from typing import Any

from agent import metrics
from agent.config import NetworkSection
from agent.events import Flow, ProcessInfo
from agent.liveness import HEARTBEATS, Heartbeat, supervised
from agent.sensors import Emit, SensorUnavailable
from agent.sensors.network.capture import CaptureSocket, Wakeup
from agent.sensors.network.captureread import HOUSEKEEPING, REOPEN_INTERVAL, CaptureReading
from agent.sensors.network.conntrack import Conntrack
from agent.sensors.network.destinations import Destinations
from agent.sensors.network.flowstate import FlowKey
from agent.sensors.network.flowtable import FlowTable
from agent.sensors.network.host import ephemeral_range, local_addresses
from agent.sensors.network.kernelacct import DUMP_INTERVAL, KernelAccounting
from agent.sensors.network.netwatch import AddressWatch, ConntrackEvents
from agent.sensors.network.procindex import ProcIndex
from agent.sensors.network.sockdiag import DestroyListener, DiagSocket, SockDiag
from agent.wakepipe import wake

log = logging.getLogger(__name__)

LOCAL_REFRESH = 30.0  # re-read of this host's addresses when no AddressWatch can open
MAX_SLEEP = 60.0  # longest sleep: the heartbeat's age stays below agent.stall_after
_CAPTURES = (CaptureSocket, Wakeup)
# destroy notifications wait up to this long (s) for a wake-up that happens anyway (the
# next connection's SYN): one wake per flow fewer; flows end this much later at most
DESTROY_LINGER = 0.05
# exported flows are held up to this long (s) and handed to the pipeline together: its
# stages and the writer then wake once per batch, not once per short connection (the
# correlator holds every flow for feedback.FLOW_HOLD anyway); at most _MAX_HELD at once
FLOW_LINGER = 0.5
_MAX_HELD = 256


class NetworkSensor(KernelAccounting, CaptureReading):
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
        self.ct_events: ConntrackEvents | None = None
        self.addresses: AddressWatch | None = None
        self.udp_accounting = "off"
        self.procs = ProcIndex()
        self.cookies: dict[int, FlowKey] = {}
        self._early: dict[FlowKey, tuple[float, DiagSocket | None, ProcessInfo | None]] = {}
        self.endpoints: dict[tuple[int, bytes], set[FlowKey]] = {}
        self.down: dict[str, str] = {}  # interfaces whose capture failed, and why
        self._programs: dict[tuple[str, int], bytes] = {}  # filters by expression, link type
        self.local: set[bytes] = set()
        self.emitted = 0
        self.dropped = 0
        self.packets = 0
        self.lost_notifications = 0
        # deadlines of the loop (time.monotonic()); inf: nothing to do until an event
        self._next_dump = self._next_ct = self._stats_due = math.inf
        self._next_reopen = self._next_local = self._next_house = 0.0
        self._destroy_due = math.inf  # destroy notifications are waiting until then
        self._capture_quiet = math.inf  # main capture sockets unwatched until then
        self._held: list[Flow] = []  # exported flows not yet handed to the pipeline
        self._hand_over_due = math.inf  # ... until then
        self._dump_interval = DUMP_INTERVAL
        self._last_stats = 0.0
        self.wakeups = 0  # times the loop woke (status: a quiet host should see few)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)  # stop() wakes
        self._emit: Emit | None = None
        # metric children looked up once, not per packet batch and per flow
        self._events_metric = metrics.SENSOR_EVENTS.labels(self.name)
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
            try:
                self.addresses = AddressWatch()
            except OSError as e:  # polled every LOCAL_REFRESH seconds instead
                log.warning(
                    "cannot watch address changes (%s); re-reading them every %.0f s",
                    e,
                    LOCAL_REFRESH,
                )
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

    def stop(self) -> None:
        self._stop.set()
        wake(self._wake_w)
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            HEARTBEATS.remove(self._beat.name)
        self._close()

    def _close(self) -> None:
        for c in self.captures:
            c.close()
        self.captures = []
        for s in (self.diag, self.destroy, self.conntrack, self.ct_events, self.addresses):
            if s is not None:
                s.close()
        self.diag = self.destroy = None
        self.conntrack = None
        self.ct_events = None
        self.addresses = None

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
            "wakeups": self.wakeups,
            "dumps": self.dumps,
            "destroy_by_cookie": self.destroy_by_cookie,
            "destroy_by_tuple": self.destroy_by_tuple,
            "destroy_by_port": self.destroy_by_port,
            "proc_walks": self.procs.full_scans,  # full /proc walks to find an owner
            "thread_cpu_seconds": round(self.thread_cpu(), 3),
            # which country table the running sensor uses, and how old it is
            "country_data": (
                self.destinations.countries.info.as_dict(self.cfg.country_data_max_age_days)
                if self.destinations.countries is not None
                else None
            ),
        }

    def thread_cpu(self) -> float:
        """CPU seconds of the sensor's thread so far, read from the kernel (schedstat, in
        ns), so that the loop does not have to wake to publish it."""
        thread = self._thread
        tid = thread.native_id if thread is not None else None
        if tid is None:
            return 0.0
        try:
            with open(f"/proc/self/task/{tid}/schedstat", "rb") as f:
                return int(f.read().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            return 0.0

    # --- the loop ----------------------------------------------------------------------
    def next_deadline(self) -> float:
        """When (time.monotonic()) the loop has work of its own, inf for none: the
        table's next timeout (at most once a second), held flows to hand over, the next
        dump, a drop-counter read, a capture to reopen, the address re-read without an
        AddressWatch."""
        assert self.table is not None
        table_due = time.monotonic() + self.table.due - time.time()
        return min(
            max(self._next_house, table_due),
            self._destroy_due,
            self._capture_quiet,
            self._hand_over_due,
            self._next_dump,
            self._next_ct,
            self._stats_due,
            self._next_reopen if self.down else math.inf,
            self._next_local,
        )

    def _run(self) -> None:
        assert self.table is not None
        table = self.table
        now = time.monotonic()
        # a dump at once adopts connections older than the agent (and UDP conversations)
        self._next_dump = now if self.diag is not None else math.inf
        self._next_ct = now if self.conntrack is not None else math.inf
        self._next_reopen = now + REOPEN_INTERVAL
        self._next_local = now + LOCAL_REFRESH if self.addresses is None else math.inf
        beat = self._beat.beat
        while not self._stop.is_set():
            beat()
            waitables: list[Any] = [self._wake_r, *(c.wakeup for c in self.captures)]
            if self._capture_quiet == math.inf:
                waitables.extend(self.captures)
            # destroy notifications are not waited for while some are due, nor while the
            # captures are unwatched: the loop wakes within CAPTURE_LINGER anyway, and
            # every read of the captures reads the notifications after them
            quiet = self._destroy_due != math.inf or self._capture_quiet != math.inf
            destroy = None if quiet else self.destroy
            for extra in (destroy, self.ct_events, self.addresses):
                if extra is not None:
                    waitables.append(extra)
            sleep = min(max(0.0, self.next_deadline() - time.monotonic()), MAX_SLEEP)
            try:
                ready, _, _ = select.select(waitables, [], [], sleep)
            except InterruptedError:
                continue
            self.wakeups += 1
            try:
                self._handle(ready)
                now = time.monotonic()
                if now >= self._next_dump:
                    self._next_dump = math.inf
                    if self.diag is not None:
                        self._dump()
                if now >= self._next_ct:
                    self._next_ct = math.inf
                    if self.conntrack is not None:
                        self._conntrack_dump()
                if self.down and now >= self._next_reopen:
                    self._next_reopen = now + REOPEN_INTERVAL
                    self._reopen()
                if now >= self._next_local:
                    self._next_local = now + LOCAL_REFRESH
                    self._refresh_local()
                if now >= self._stats_due:
                    self._stats_due = math.inf
                    self._last_stats = now
                    for cap in self.captures:
                        cap.count_drops()
                wall = time.time()
                if wall >= table.due and now >= self._next_house:
                    self._next_house = now + HOUSEKEEPING
                    table.expire(wall)
                    self._prune_joins()
                if time.monotonic() >= self._hand_over_due:
                    self._hand_over()
            except Exception:  # one bad packet or netlink hiccup must not end the sensor
                log.exception("network sensor: error while processing; continuing")
        try:
            self._read_captures()
            if self.destroy is not None:
                self._read_destroyed()
            table.flush(time.time())
        finally:
            self._hand_over()

    def _handle(self, ready: list[Any]) -> None:
        """Read what woke the loop."""
        now = time.monotonic()
        destroy = self.destroy
        if destroy is not None and destroy in ready:
            self._destroy_due = now + DESTROY_LINGER
        # destroy notifications are read when due, when the loop is awake for something
        # else anyway, and after every read of the captures
        destroys = self._destroy_due != math.inf and (
            len(ready) > 1 or destroy not in ready or now >= self._destroy_due
        )
        if destroys or now >= self._capture_quiet or any(isinstance(w, _CAPTURES) for w in ready):
            # a destroyed connection's packets were queued on the capture sockets before
            # the kernel reported the destroy: read them first, or a late SYN would open
            # the flow again after its final record (and its SNI would miss that record)
            self._read_captures()
            self._destroy_due = math.inf
            if destroy is not None:
                self._read_destroyed()
        ct = self.ct_events
        if ct is not None and ct in ready and ct.udp_started():  # adopt it once it has bytes
            self._next_ct = min(self._next_ct, time.monotonic() + DUMP_INTERVAL)
        if self.addresses is not None and self.addresses in ready and self.addresses.changed():
            self._refresh_local()
        if self._wake_r in ready:
            try:
                os.read(self._wake_r, 64)
            except OSError:
                pass

    # --- export ------------------------------------------------------------------------
    def _export(self, flow: Flow) -> None:
        """Hold the table's record until the next hand-over (FLOW_LINGER)."""
        self._held.append(flow)
        if len(self._held) >= _MAX_HELD:
            self._hand_over()
        elif self._hand_over_due == math.inf:
            self._hand_over_due = time.monotonic() + FLOW_LINGER

    def _hand_over(self) -> None:
        """Emit the held flows, in the order the table exported them."""
        held, self._held = self._held, []
        self._hand_over_due = math.inf
        if not held:
            return
        assert self._emit is not None
        emitted = 0
        for flow in held:
            if self._emit(flow):
                emitted += 1
        self.emitted += emitted
        self.dropped += len(held) - emitted
        if emitted:
            self._events_metric.inc(emitted)
