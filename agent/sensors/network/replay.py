"""Offline mode: run a saved capture through the same flow logic as live capture.

`replay_pcap(path, settings)` reads the file with the mmap reader, decodes each frame's
headers in place and feeds `FlowTable` with packet timestamps as the clock; at the end
every open flow is exported with close_reason="end_of_capture". Sequence-number
counting gives exact bytes (wrap-around tracked); only the rare first-payload and DNS
packets are inspected for names. Used by `egress-agent replay`, tests and benchmarks.
"""

from __future__ import annotations

import logging
import mmap
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from agent.config import NetworkSection
from agent.events import Flow
from agent.sensors.network import geo, services
from agent.sensors.network.destinations import Destinations
from agent.sensors.network.flowtable import FlowTable
from agent.sensors.network.packets import Buffer, Packet, decode_ethernet, decode_ip
from agent.sensors.network.pcapfile import (
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_NULL,
    ClassicHeader,
    Frame,
    PcapStats,
    classic_header,
    frames,
    mapped,
    resume_classic,
)
from agent.sensors.network.pcapresync import MAX_CAPLEN

log = logging.getLogger(__name__)

_EXPIRE_EVERY = 1.0  # seconds of capture time between timeout checks


@dataclass(slots=True)
class ReplayResult:
    flows: list[Flow] = field(default_factory=list)
    stats: PcapStats = field(default_factory=PcapStats)
    undecoded: int = 0  # frames that were not IPv4/IPv6 TCP/UDP, or malformed
    evicted: int = 0  # flows exported early because the table was full (network.max_flows)


def destinations_from(cfg: NetworkSection) -> Destinations:
    """Raises GeoDataError or ServicesError (one line naming the file) on bad data."""
    return Destinations(
        cfg.internal_networks,
        cfg.approved_destinations,
        cfg.foreign_networks,
        cfg.domestic_country,
        geo.open_countries(cfg.country_db),
        geo.open_asn(cfg.asn_db),
        services.build(cfg.services_file),
    )


def _decode(linktype: int, buf: Buffer, off: int, end: int) -> Packet | None:
    if linktype == LINKTYPE_ETHERNET:
        return decode_ethernet(buf, off, end)
    if linktype == LINKTYPE_LINUX_SLL:
        if end - off < 16:
            return None
        return _by_ethertype(struct.unpack_from("!H", buf, off + 14)[0], buf, off + 16, end)
    if linktype == LINKTYPE_LINUX_SLL2:
        if end - off < 20:
            return None
        return _by_ethertype(struct.unpack_from("!H", buf, off)[0], buf, off + 20, end)
    if linktype == LINKTYPE_NULL:
        return decode_ip(buf, off + 4, end) if end - off > 4 else None
    return decode_ip(buf, off, end)


def _by_ethertype(etype: int, buf: Buffer, off: int, end: int) -> Packet | None:
    return decode_ip(buf, off, end) if etype in (0x0800, 0x86DD) else None


def replay_pcap(
    path: Path,
    cfg: NetworkSection | None = None,
    destinations: Destinations | None = None,
    emit: Callable[[Flow], object] | None = None,
) -> ReplayResult:
    """All flows in a pcap/pcapng file. Raises PcapError if the file is unreadable.

    With `emit`, each flow goes there as it ends and `result.flows` stays empty: memory
    is then bounded by the flow table (network.max_flows), whatever the capture holds.
    """
    cfg = cfg or NetworkSection()
    result = ReplayResult()
    table = FlowTable(
        emit or result.flows.append,
        destinations or destinations_from(cfg),
        idle_timeout=cfg.idle_timeout,
        active_timeout=cfg.active_timeout,
        midstream=True,
        max_flows=cfg.max_flows,
    )
    with mapped(path) as mm:
        header = classic_header(path, mm)
        if header is not None and header.linktype == LINKTYPE_ETHERNET:
            last_ts = _classic_ethernet(mm, header, table, result)
        else:
            last_ts = _any(frames(path, mm, result.stats), table, result)
    table.flush(last_ts)
    result.evicted = table.evicted
    st = result.stats
    if st.resyncs:
        log.warning(
            "%s: damaged at %d places; %d bytes skipped, reading resumed at the next "
            "plausible record each time",
            path,
            st.resyncs,
            st.skipped_bytes,
        )
    return result


def _any(source: Iterator[Frame], table: FlowTable, result: ReplayResult) -> float:
    next_expire = last_ts = 0.0
    for ts, linktype, buf, off, end in source:
        pkt = _decode(linktype, buf, off, end)
        if pkt is None:
            result.undecoded += 1
            continue
        if ts >= next_expire:  # before the packet: a flow idle until now is over
            if next_expire:
                table.expire(ts)
            next_expire = ts + _EXPIRE_EVERY
        table.packet(pkt, ts, buf, end)
        last_ts = max(last_ts, ts)
    return last_ts


# Ethernet + IPv4 without options + the first 14 bytes of TCP, in one unpack
_FAST = struct.Struct("!12xHBxHxxHxB2x4s4sHHIIBB")
_FAST_LEN = _FAST.size
# Ethernet + IPv6 without extension headers + the first 14 bytes of TCP
_FAST6 = struct.Struct("!12xHB3xHBx16s16sHHIIBB")
_FAST6_LEN = _FAST6.size


def _classic_ethernet(
    mm: mmap.mmap, header: ClassicHeader, table: FlowTable, result: ReplayResult
) -> float:
    """The hot loop: TCP segments (IPv4, IPv6) of known flows without SYN/FIN/RST, past
    their name probes, only move a sequence counter; the rest takes the general path."""
    endian, unit, _, _ = header
    layout = header.layout
    limit = layout.read_limit
    rec = struct.Struct(endian + "IIII").unpack_from
    fast, fast6 = _FAST.unpack_from, _FAST6.unpack_from
    flows, reverse = table.flows, table.reverse
    size = len(mm)
    off = 24
    frames_seen = undecoded = 0
    next_expire = last_ts = 0.0
    last_sec: int | None = None
    while off + 16 <= size:
        sec, frac, caplen, orig = rec(mm, off)
        start = off + 16
        end = start + caplen
        # record_ok() inlined: this runs once per packet
        if end > size or caplen > limit or orig < caplen or not 0 < orig <= MAX_CAPLEN:
            resumed = resume_classic(mm, off, layout, last_sec, result.stats)
            if resumed is None:
                break
            off = resumed
            continue
        last_sec = sec
        off = end
        frames_seen += 1
        ts = sec + frac * unit
        if ts >= next_expire:
            if next_expire:
                table.expire(ts)
            next_expire = ts + _EXPIRE_EVERY
        if ts > last_ts:
            last_ts = ts
        key = None
        if caplen >= _FAST_LEN:
            etype, vihl, total, frag, proto, src, dst, sport, dport, seq, _ack, doff, flags = fast(
                mm, start
            )
            if etype == 0x0800:
                if vihl == 0x45 and proto == 6 and not frag & 0x3FFF and not flags & 0x07:
                    plen = total - 20 - ((doff >> 4) << 2)
                    key = (6, src, sport, dst, dport)
            elif etype == 0x86DD and caplen >= _FAST6_LEN:
                _e, ver, payload, nh, src, dst, sport, dport, seq, _ack, doff, flags = fast6(
                    mm, start
                )
                if ver >> 4 == 6 and nh == 6 and not flags & 0x07:
                    plen = payload - ((doff >> 4) << 2)
                    key = (6, src, sport, dst, dport)
        if key is not None:  # a TCP segment without SYN, FIN or RST
            st = flows.get(key)
            counter = None
            if st is not None:
                counter = st.out
            else:
                rkey = reverse.get(key)
                if rkey is not None:
                    st = flows[rkey]
                    counter = st.inn
            if counter is not None and st is not None and (plen <= 0 or st.probes >= 3):
                if plen > 0:
                    delta = (seq + plen - counter.high) & 0xFFFFFFFF
                    if delta < 0x80000000:
                        counter.high += delta
                st.last = ts
                continue
        pkt = decode_ethernet(mm, start, end)
        if pkt is None:
            undecoded += 1
            continue
        table.packet(pkt, ts, mm, end)
    else:
        if off != size:
            result.stats.truncated += 1
            result.stats.skipped_bytes += size - off
    result.stats.frames += frames_seen
    result.undecoded += undecoded
    return last_ts
