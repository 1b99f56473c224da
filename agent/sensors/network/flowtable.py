"""The flow state machine shared by live capture and pcap replay: packets in, `Flow`
records out.

A flow is keyed by who started it: (protocol, initiator address, port, responder
address, port). Only flows this host (or a host it forwards for) initiated are kept; an
inbound SYN marks its key as ignored. A TCP flow opens on its SYN (or, in replay,
mid-stream), counts bytes from sequence numbers and closes on FIN both ways or RST; a
UDP conversation opens on its first packet and counts payloads. Records are exported
like IPFIX: on close (FIN both ways, RST, or socket destroy), on idle timeout and on
active timeout — an active-timeout record carries the bytes since the previous record
of the same flow, so the records of one flow add up to its total. The table holds at
most `max_flows` open flows (`network.max_flows`): when full, the longest-idle are
exported with close_reason "evicted" (counted in egress_agent_flows_evicted_total), so
a scan or flood of distinct flows costs bounded memory and a bounded timeout pass. Time
is passed in (packet timestamps in replay, the clock live), so this is testable.

The rest of a flow's story lives beside it: `reconcile` merges the kernel's exact
counts (tcp_info, conntrack) into the flows, `flownames` names them (SNI, HTTP Host,
DNS; destination class, country, service), `flowmetrics` adds their bytes to the
Prometheus counters, and `flowstate` holds one flow and decides which count wins.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime

from agent.events import CloseReason, Flow, Protocol
from agent.sensors.network.communityid import community_id
from agent.sensors.network.destinations import Destinations
from agent.sensors.network.flowmetrics import FlowMetrics
from agent.sensors.network.flownames import MAX_PROBES, FlowNaming, text_address
from agent.sensors.network.flowstate import FlowKey, FlowState, close_reason
from agent.sensors.network.packets import (
    IPPROTO_TCP,
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    Buffer,
    Packet,
)
from agent.sensors.network.reconcile import KernelReconciliation
from agent.sensors.network.seqtrack import SeqCounter

_PROTO_NAMES = {6: Protocol.TCP, 17: Protocol.UDP}
EVICTED = CloseReason.EVICTED  # close_reason of a flow exported to make room in a full table
EVICT_FRACTION = 16  # a full table evicts 1/16 of its flows at once
# closes the kernel confirmed or the wire showed: trailing packets of their key open nothing
_CLOSED = frozenset((CloseReason.FIN, CloseReason.RST, CloseReason.DESTROY))


def _last_seen(st: FlowState) -> float:
    return st.last


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class FlowTable(KernelReconciliation):
    """Open flows and their export rules."""

    def __init__(
        self,
        emit: Callable[[Flow], object],
        destinations: Destinations | None = None,
        idle_timeout: float = 60.0,
        active_timeout: float = 300.0,
        is_local: Callable[[bytes], bool] | None = None,
        midstream: bool = False,
        count_metrics: bool = False,
        max_flows: int = 65_536,
    ) -> None:
        self.emit = emit
        self.destinations = destinations or Destinations()
        self.idle_timeout = idle_timeout
        self.active_timeout = active_timeout
        self.is_local = is_local
        self.midstream = midstream  # replay: also follow flows whose SYN was not captured
        self.max_flows = max_flows
        self.close_grace = 5.0  # seconds an owned flow waits for its destroy notification
        self.flows: dict[FlowKey, FlowState] = {}
        # the earliest time (the clock passed in) at which `expire` may have work: a live
        # sensor sleeps until then instead of calling it every second
        self.due = math.inf
        self.reverse: dict[FlowKey, FlowKey] = {}  # responder-side key -> flow key
        self.ignored: OrderedDict[FlowKey, float] = OrderedDict()  # inbound and closed keys
        self.naming = FlowNaming(self.destinations)
        self.metrics = FlowMetrics(self.naming) if count_metrics else None
        self.ct_exported = OrderedDict()
        self.on_new_flow: Callable[[FlowState], None] | None = None
        self.exported = 0
        self.evicted = 0

    # --- packets -------------------------------------------------------------------
    def packet(self, pkt: Packet, ts: float, buf: Buffer, end: int) -> None:
        """Account one decoded packet; `buf[:end]` holds its captured bytes."""
        key: FlowKey = (pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport)
        st = self.flows.get(key)
        outbound = True
        if st is None:
            rkey = self.reverse.get(key)
            if rkey is not None:
                st = self.flows[rkey]
                outbound = False
        if pkt.proto == IPPROTO_TCP:
            flags = pkt.flags
            if flags & TCP_SYN and not flags & TCP_ACK:
                st = self._open(key, ts, pkt, st)
                if st is None:
                    return
                outbound = True
            elif st is None:
                st = self._midstream(key, ts, pkt)
                if st is None:
                    return
                outbound = st.key == key
            self._tcp(st, pkt, outbound, ts, buf, end)
        else:
            if st is None:
                st = self._open_udp(key, ts, pkt)
                if st is None:
                    return
            self._udp(st, pkt, outbound, ts, buf, end)

    def _open(self, key: FlowKey, ts: float, pkt: Packet, st: FlowState | None) -> FlowState | None:
        if st is not None and st.key == key:
            if st.out is None:  # adopted from a kernel dump that ran before we read its SYN
                st.out = SeqCounter(pkt.seq)
                return st
            if (pkt.seq + 1) & 0xFFFFFFFF == st.out.base:
                return st  # a retransmitted SYN
            self._export(st, ts, close_reason(st, CloseReason.IDLE), final=True)  # port reused
        if self.is_local is not None and self.is_local(pkt.dst) and not self.is_local(pkt.src):
            if st is not None and st.out is None and not st.exported_out + st.exported_in:
                # a dump ran before we read this SYN and adopted the accepting socket
                # (a server on an ephemeral port looks outbound): it was never ours
                del self.flows[st.key]
                self.reverse.pop(key, None)
            self._ignore(key, ts)  # inbound connection: not ours to report
            return None
        self.ignored.pop(key, None)
        new = self._new(key, ts)
        if new is not None:
            new.out = SeqCounter(pkt.seq)
            if self.on_new_flow is not None:
                self.on_new_flow(new)
        return new

    def _midstream(self, key: FlowKey, ts: float, pkt: Packet) -> FlowState | None:
        if not self.midstream or key in self.ignored:
            return None
        rkey: FlowKey = (pkt.proto, pkt.dst, pkt.dport, pkt.src, pkt.sport)
        if rkey in self.ignored:
            return None
        if pkt.flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK or pkt.sport < pkt.dport:
            key = rkey  # the sender is the responder: the flow belongs to the other side
        st = self._new(key, ts)
        if st is None:
            return None
        st.out = SeqCounter(pkt.seq if key != rkey else pkt.ack, syn=False)
        return st

    def _open_udp(self, key: FlowKey, ts: float, pkt: Packet) -> FlowState | None:
        if key in self.ignored:
            return None
        if self.is_local is not None and self.is_local(pkt.dst) and not self.is_local(pkt.src):
            self._ignore(key, ts)
            return None
        st = self._new(key, ts)
        if st is not None and self.on_new_flow is not None:
            self.on_new_flow(st)
        return st

    def _new(self, key: FlowKey, ts: float) -> FlowState | None:
        if len(self.flows) >= self.max_flows:
            self._evict()
        st = FlowState(key, ts, ts, ts)
        self.flows[key] = st
        self._due(ts + min(self.idle_timeout, self.active_timeout))
        self.reverse[(key[0], key[3], key[4], key[1], key[2])] = key
        return st

    def _ignore(self, key: FlowKey, ts: float) -> None:
        self.ignored[key] = ts
        self.ignored.move_to_end(key)
        if len(self.ignored) > 65536:
            self.ignored.popitem(last=False)

    def _tcp(
        self,
        st: FlowState,
        pkt: Packet,
        outbound: bool,
        ts: float,
        buf: Buffer,
        end: int,
    ) -> None:
        st.last = ts
        flags = pkt.flags
        if outbound:
            if st.out is not None:
                st.out.see(pkt.seq, pkt.payload_len)
        elif st.inn is None:
            if flags & TCP_SYN:
                st.inn = SeqCounter(pkt.seq)
            elif self.midstream:
                st.inn = SeqCounter(pkt.seq, syn=False)
                st.inn.see(pkt.seq, pkt.payload_len)
        else:
            st.inn.see(pkt.seq, pkt.payload_len)
        if pkt.payload_len and st.probes < MAX_PROBES and pkt.payload_off < end:
            st.probes += 1
            data = bytes(buf[pkt.payload_off : min(end, pkt.payload_off + pkt.payload_len)])
            if outbound:
                self.naming.request(st, data)
            elif pkt.sport == 53 and len(data) > 2:
                self.naming.dns(data[2:], ts)  # DNS over TCP: after its length prefix
        if flags & (TCP_FIN | TCP_RST):
            if flags & TCP_RST:
                st.rst = True
            elif outbound:
                st.fin_out = True
            else:
                st.fin_in = True
            if st.rst or (st.fin_out and st.fin_in):
                if st.owned:
                    st.closed_at = st.closed_at or ts
                    self._due(st.closed_at + self.close_grace)
                else:
                    reason = CloseReason.RST if st.rst else CloseReason.FIN
                    self._export(st, ts, reason, final=True)

    def _udp(
        self,
        st: FlowState,
        pkt: Packet,
        outbound: bool,
        ts: float,
        buf: Buffer,
        end: int,
    ) -> None:
        st.last = ts
        if outbound:
            st.packet_out += pkt.payload_len
        else:
            st.packet_in += pkt.payload_len
        if pkt.payload_off >= end or not pkt.payload_len:
            return
        if not outbound and pkt.sport == 53:
            self.naming.dns(bytes(buf[pkt.payload_off : end]), ts)
        elif (
            outbound and st.sni is None and st.probes < MAX_PROBES and buf[pkt.payload_off] >= 0xC0
        ):
            st.probes += 1  # a QUIC long header
            self.naming.quic_initial(st, bytes(buf[pkt.payload_off : end]))

    # --- export ----------------------------------------------------------------------------
    def _due(self, when: float) -> None:
        if when < self.due:
            self.due = when

    def expire(self, now: float) -> None:
        """Export flows idle past idle_timeout, and running ones past active_timeout;
        `due` becomes the earliest time one of the remaining flows can time out."""
        due = math.inf
        idle, active, grace = self.idle_timeout, self.active_timeout, self.close_grace
        for st in list(self.flows.values()):
            if st.closed_at is not None and now - st.closed_at >= grace:
                self._export(st, now, close_reason(st, CloseReason.FIN), final=True)
                continue
            if now - st.last >= idle:
                self._export(st, now, CloseReason.IDLE, final=True)
                continue
            if now - st.record_start >= active:
                if st.totals()[:2] != (st.exported_out, st.exported_in):
                    self._export(st, now, CloseReason.ACTIVE, final=False)
                else:  # nothing new to report: no empty records for idle keep-alive sessions
                    st.record_start = now
            when = min(st.last + idle, st.record_start + active)
            if st.closed_at is not None:
                when = min(when, st.closed_at + grace)
            if when < due:
                due = when
        self.due = due

    def _evict(self) -> None:
        """Make room: export the longest-idle flows, a sixteenth of the table at once.

        One selection over the table per `max_flows / 16` new flows keeps the cost per
        new flow constant (a scan opening a flow per packet would otherwise pay a full
        pass each); the evicted records carry their bytes so far, like an idle timeout.
        A TCP flow that goes on after its eviction is seen again only from a kernel
        count or, in replay, mid-stream; a UDP one simply opens a new record.
        """
        room = max(1, self.max_flows // EVICT_FRACTION)
        victims = heapq.nsmallest(room, self.flows.values(), key=_last_seen)
        for st in victims:
            self._export(st, st.last, EVICTED, final=True)  # it ends where it was last seen
        self.evicted += len(victims)
        if self.metrics is not None:
            self.metrics.evicted(len(victims))

    def flush(self, now: float, reason: CloseReason = CloseReason.END_OF_CAPTURE) -> None:
        for st in list(self.flows.values()):
            self._export(st, max(now, st.last), reason, final=True)

    def _account(self, st: FlowState) -> None:
        if self.metrics is not None:
            self.metrics.outbound(st)

    def _export(self, st: FlowState, ts: float, reason: CloseReason, final: bool) -> None:
        """Write the flow's record; `final` ends the flow, else (active timeout) the
        next record starts at `ts` with the bytes after this one."""
        out, inn, source = st.totals()
        proto, src, sport, dst, dport = st.key
        dst_ip = text_address(dst)
        name, name_source, dest_class, country = self.naming.describe(st, dst_ip)
        destinations = self.destinations
        service = destinations.service(name)
        category = service.category if service else None
        flow = Flow(
            protocol=_PROTO_NAMES.get(proto, str(proto)),
            src_ip=text_address(src),
            src_port=sport,
            dst_ip=dst_ip,
            dst_port=dport,
            start=_utc(st.record_start),
            end=_utc(max(ts, st.record_start)),
            bytes_out=max(0, out - st.exported_out),
            bytes_in=max(0, inn - st.exported_in),
            byte_source=source,
            name=name,
            name_source=name_source,
            sni=st.sni,
            http_host=st.http_host,
            dest_class=dest_class,
            country=country,
            close_reason=reason,
            dest_org=destinations.org(dst_ip),
            service=service.name if service else None,
            service_category=category,
            community_id=community_id(proto, src, sport, dst, dport),
            process=st.process,
        )
        st.exported_out, st.exported_in, st.record_start = out, inn, ts
        self._remember_conntrack_export(st, source, final)
        if self.metrics is not None:
            self.metrics.outbound(st, (dest_class, country, category))
            self.metrics.flow(dest_class, country, flow.protocol)
        if final:
            del self.flows[st.key]
            self.reverse.pop((proto, dst, dport, src, sport), None)
            if reason in _CLOSED:
                self._ignore(st.key, ts)  # trailing ACKs and retransmitted FINs open nothing
        self.exported += 1
        self.emit(flow)
