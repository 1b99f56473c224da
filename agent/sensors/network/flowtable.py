"""The flow logic shared by live capture and pcap replay: packets and kernel counts in,
`Flow` records out.

A flow is keyed by who started it: (protocol, initiator address, port, responder
address, port). Only flows this host (or a host it forwards for) initiated are kept; an
inbound SYN marks its key as ignored. Bytes come from, best first: the kernel's
`tcp_info` (`kernel_update`, byte_source="tcp_info"), conntrack (`conntrack_update`,
"conntrack_l3"), TCP sequence numbers ("tcp_seq"), captured UDP payloads ("packets").
Records are exported like IPFIX: on close (FIN both ways, RST, or socket destroy), on
idle timeout and on active timeout — an active-timeout record carries the bytes since
the previous record of the same flow, so the records of one flow add up to its total.
The table holds at most `max_flows` open flows (`network.max_flows`): when full, the
longest-idle are exported with close_reason "evicted" (counted in
egress_agent_flows_evicted_total), so a scan or flood of distinct flows costs bounded
memory and a bounded timeout pass. Time is passed in (packet timestamps in replay, the
clock live), so this is testable.
"""

from __future__ import annotations

import heapq
import math
import socket
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from agent import metrics
from agent.events import Flow
from agent.sensors.network import names
from agent.sensors.network.communityid import community_id
from agent.sensors.network.destinations import Destinations
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
from agent.sensors.network.quic import quic_sni
from agent.sensors.network.seqtrack import SeqCounter

_PROTO_NAMES = {6: "tcp", 17: "udp"}
_MAX_PROBES = 3  # payload packets per direction inspected for names
_RESET_WAIT = 1.0  # seconds to wait for the RST packet after a zeroed destroy notification
EVICTED = "evicted"  # close_reason of a flow exported to make room in a full table
EVICT_FRACTION = 16  # a full table evicts 1/16 of its flows at once


def _ntop(addr: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(addr) == 4 else socket.AF_INET6, addr)


def _last_seen(st: FlowState) -> float:
    return st.last


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class FlowTable:
    """Open flows, the name cache, and the export rules."""

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
        self.count_metrics = count_metrics
        self.max_flows = max_flows
        self.close_grace = 5.0  # seconds an owned flow waits for its destroy notification
        self.flows: dict[FlowKey, FlowState] = {}
        # the earliest time (the clock passed in) at which `expire` may have work: a live
        # sensor sleeps until then instead of calling it every second
        self.due = math.inf
        self.reverse: dict[FlowKey, FlowKey] = {}  # responder-side key -> flow key
        self.ignored: OrderedDict[FlowKey, float] = OrderedDict()  # inbound and closed keys
        self.names = names.NameCache()
        # conntrack totals already exported per key: its entries outlive our idle timeout
        self.ct_exported: OrderedDict[FlowKey, tuple[int, int]] = OrderedDict()
        self.on_new_flow: Callable[[FlowState], None] | None = None
        self.exported = 0
        self.evicted = 0
        # metric children by label values, looked up once (labels() costs a lock and a
        # tuple per call, twice per flow otherwise)
        self._byte_counters: dict[tuple[str, str], Any] = {}
        self._service_counters: dict[str, Any] = {}
        self._flow_counters: dict[tuple[str, str, str], Any] = {}

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
            self._export(st, ts, close_reason(st, "idle"), final=True)  # port reused
        if self.is_local is not None and self.is_local(pkt.dst) and not self.is_local(pkt.src):
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
        if pkt.payload_len and st.probes < _MAX_PROBES and pkt.payload_off < end:
            st.probes += 1
            data = bytes(buf[pkt.payload_off : min(end, pkt.payload_off + pkt.payload_len)])
            if outbound:
                self._names_from_request(st, data)
            elif pkt.sport == 53 and len(data) > 2:
                self._learn_dns(data[2:], ts)
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
                    self._export(st, ts, "rst" if st.rst else "fin", final=True)

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
            self._learn_dns(bytes(buf[pkt.payload_off : end]), ts)
        elif (
            outbound and st.sni is None and st.probes < _MAX_PROBES and buf[pkt.payload_off] >= 0xC0
        ):
            st.probes += 1  # a QUIC long header: the client Initial names the server
            st.sni = quic_sni(bytes(buf[pkt.payload_off : end]))

    def _names_from_request(self, st: FlowState, data: bytes) -> None:
        if st.sni is None and data[:1] == b"\x16":
            st.sni = names.tls_sni(data)
        elif st.http_host is None and names.is_http_request(data):
            st.http_host = names.http_host(data)

    def _learn_dns(self, msg: bytes, ts: float) -> None:
        for ans in names.dns_answers(msg):
            self.names.add(ans.address, ans.name, ans.ttl, now=ts)

    # --- kernel counts -----------------------------------------------------------------
    def kernel_update(
        self,
        key: FlowKey,
        bytes_out: int,
        received: int,
        ts: float,
        final: bool = False,
        adopt: bool = False,
        peer_fin: bool | None = False,
    ) -> FlowState | None:
        """Exact counts from a local socket's tcp_info; `final` when it was destroyed.

        `key` is the socket's own view (local side first), so it matches only a flow
        this socket initiated — never the accepting end of a connection to ourselves.
        `received` is tcpi_bytes_received, which counts the peer's FIN as one byte;
        `peer_fin` says whether the socket's state implies that FIN arrived (None: the
        state, CLOSE, cannot say).
        `adopt` creates the flow when no SYN was seen (connections older than the agent).
        """
        st = self.flows.get(key)
        if st is None:
            rkey: FlowKey = (key[0], key[3], key[4], key[1], key[2])
            if not adopt or key in self.ignored or rkey in self.ignored:
                return None
            st = self._new(key, ts)
            if st is None:
                return None
        st.owned = True
        if final:  # the destroy notification is the last word; the capture was drained first
            st.kernel_out = bytes_out
            st.kernel_in = received - 1 if received and st.fin_in else received
            st.kernel_final = True
        else:
            st.kernel_out = max(bytes_out, st.kernel_out or 0)
            if peer_fin is None:  # state CLOSE: FIN or not is for the wire to say (totals)
                st.kernel_in_closed = max(received, st.kernel_in_closed or 0)
            else:  # the state says exactly whether the FIN is in the count
                bytes_in = received - 1 if received and peer_fin else received
                st.kernel_in = max(bytes_in, st.kernel_in or 0)
        st.last = ts
        if final:
            self._export(st, ts, close_reason(st, "destroy"), final=True)
        else:
            self._account(st)
        return st

    def kernel_reset(self, key: FlowKey, ts: float) -> None:
        """The socket was destroyed after an abortive close (SO_LINGER 0, tcp_disconnect),
        which zeroes tcp_info: count from sequence numbers once the RST was read."""
        st = self.flows.get(key)
        if st is not None:
            st.kernel_reset = True
            st.owned = True
            st.closed_at = min(st.closed_at or ts, ts - self.close_grace + _RESET_WAIT)
            self._due(st.closed_at + self.close_grace)

    def conntrack_update(self, key: FlowKey, bytes_out: int, bytes_in: int, ts: float) -> None:
        """IP-level byte counts of a UDP conversation from conntrack accounting; a
        conversation the capture never saw (no DNS or QUIC Initial packet) is adopted."""
        st = self.flows.get(key)
        if st is None:
            if key in self.ignored:
                return
            if self.is_local is not None and self.is_local(key[3]) and not self.is_local(key[1]):
                return  # inbound
            base = self.ct_exported.get(key, (0, 0))
            if bytes_out <= base[0] and bytes_in <= base[1]:
                return  # already reported: conntrack keeps an entry after we exported it
            st = self._new(key, ts)
            if st is None:
                return
            st.exported_out, st.exported_in = base
            if self.on_new_flow is not None:
                self.on_new_flow(st)
        if st.kernel_out is not None:
            return
        if bytes_out > (st.conntrack_out or 0) or bytes_in > (st.conntrack_in or 0):
            st.last = ts
        st.conntrack_out = max(bytes_out, st.conntrack_out or 0)
        st.conntrack_in = max(bytes_in, st.conntrack_in or 0)
        self._account(st)

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
                self._export(st, now, close_reason(st, "fin"), final=True)
                continue
            if now - st.last >= idle:
                self._export(st, now, "idle", final=True)
                continue
            if now - st.record_start >= active:
                if st.totals()[:2] != (st.exported_out, st.exported_in):
                    self._export(st, now, "active", final=False)
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
        if self.count_metrics:
            metrics.FLOWS_EVICTED.inc(len(victims))

    def flush(self, now: float, reason: str = "end_of_capture") -> None:
        for st in list(self.flows.values()):
            self._export(st, max(now, st.last), reason, final=True)

    def _classify(self, st: FlowState) -> tuple[str | None, str | None, str, str | None]:
        dst = st.key[3]
        name: str | None
        source: str | None
        if st.sni:
            name, source = st.sni, "sni"
        elif st.http_host:
            name, source = st.http_host, "http_host"
        else:
            name = self.names.get(dst, now=st.last)
            source = "dns" if name else None
        dest_class, country = self.destinations.classify(_ntop(dst), name)
        return name, source, dest_class, country

    def _account(
        self, st: FlowState, verdict: tuple[str, str | None, str | None] | None = None
    ) -> None:
        """Add the flow's new outbound bytes to the metrics; `verdict` is its (dest_class,
        country, service category) when the caller has it already."""
        if not self.count_metrics:
            return
        total = st.totals()[0]
        if total > st.counted_out:
            if verdict is None:
                name, _, dest_class, country = self._classify(st)
                service = self.destinations.service(name)
                verdict = (dest_class, country, service.category if service else None)
            dest_class, country, category = verdict
            labels = (dest_class, country or "unknown")
            counter = self._byte_counters.get(labels)
            if counter is None:
                counter = self._byte_counters[labels] = metrics.OUTBOUND_BYTES.labels(*labels)
            counter.inc(total - st.counted_out)
            if category is not None:
                by_service = self._service_counters.get(category)
                if by_service is None:
                    by_service = metrics.SERVICE_BYTES.labels(category)
                    self._service_counters[category] = by_service
                by_service.inc(total - st.counted_out)
            st.counted_out = total

    def _export(self, st: FlowState, ts: float, reason: str, final: bool) -> None:
        out, inn, source = st.totals()
        name, name_source, dest_class, country = self._classify(st)
        service = self.destinations.service(name)
        category = service.category if service else None
        proto, src, sport, dst, dport = st.key
        dst_ip = _ntop(dst)
        flow = Flow(
            protocol=_PROTO_NAMES.get(proto, str(proto)),
            src_ip=_ntop(src),
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
            dest_org=self.destinations.org(dst_ip),
            service=service.name if service else None,
            service_category=category,
            community_id=community_id(proto, src, sport, dst, dport),
            process=st.process,
        )
        st.exported_out, st.exported_in, st.record_start = out, inn, ts
        if source == "conntrack_l3" and final:
            self.ct_exported[st.key] = (out, inn)
            if len(self.ct_exported) > 65536:
                self.ct_exported.popitem(last=False)
        if self.count_metrics:
            self._account(st, (dest_class, country, category))
            labels3 = (dest_class, country or "unknown", flow.protocol)
            counter = self._flow_counters.get(labels3)
            if counter is None:
                counter = self._flow_counters[labels3] = metrics.FLOWS.labels(*labels3)
            counter.inc()
        if final:
            del self.flows[st.key]
            self.reverse.pop((proto, dst, dport, src, sport), None)
            if reason in ("fin", "rst", "destroy"):
                self._ignore(st.key, ts)  # trailing ACKs and retransmitted FINs open nothing
        self.exported += 1
        self.emit(flow)
