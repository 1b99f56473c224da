"""Offline mode: run a saved capture through the same flow logic as live capture.

`replay_pcap(path, settings)` reads the file with the mmap reader, decodes each frame's
headers in place and feeds `FlowTable` with packet timestamps as the clock; at the end
every open flow is exported with close_reason="end_of_capture". Sequence-number
counting gives exact bytes (wrap-around tracked); only the rare first-payload and DNS
packets are inspected for names. Used by `egress-agent replay`, tests and benchmarks.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from agent.config import NetworkSection
from agent.events import Flow
from agent.sensors.network.destinations import CountryTable, Destinations
from agent.sensors.network.flowtable import FlowTable
from agent.sensors.network.packets import Buffer, Packet, decode_ethernet, decode_ip
from agent.sensors.network.pcapfile import (
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_NULL,
    PcapStats,
    read_frames,
)

_EXPIRE_EVERY = 1.0  # seconds of capture time between timeout checks


@dataclass(slots=True)
class ReplayResult:
    flows: list[Flow] = field(default_factory=list)
    stats: PcapStats = field(default_factory=PcapStats)
    undecoded: int = 0  # frames that were not IPv4/IPv6 TCP/UDP, or malformed


def destinations_from(cfg: NetworkSection) -> Destinations:
    countries = CountryTable.from_csv(cfg.country_db) if cfg.country_db else None
    return Destinations(
        cfg.internal_networks,
        cfg.approved_destinations,
        cfg.foreign_networks,
        cfg.domestic_country,
        countries,
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
    path: Path, cfg: NetworkSection | None = None, destinations: Destinations | None = None
) -> ReplayResult:
    """All flows in a pcap/pcapng file. Raises PcapError if the file is unreadable."""
    cfg = cfg or NetworkSection()
    result = ReplayResult()
    table = FlowTable(
        result.flows.append,
        destinations or destinations_from(cfg),
        idle_timeout=cfg.idle_timeout,
        active_timeout=cfg.active_timeout,
        midstream=True,
    )
    packet = table.packet
    next_expire = 0.0
    last_ts = 0.0
    undecoded = 0
    for ts, linktype, buf, off, end in read_frames(path, result.stats):
        if linktype == LINKTYPE_ETHERNET:
            pkt = decode_ethernet(buf, off, end)
        else:
            pkt = _decode(linktype, buf, off, end)
        if pkt is None:
            undecoded += 1
            continue
        if ts >= next_expire:  # before the packet: a flow idle until now is over
            if next_expire:
                table.expire(ts)
            next_expire = ts + _EXPIRE_EVERY
        packet(pkt, ts, buf, end)
        last_ts = max(last_ts, ts)
    table.flush(last_ts)
    result.undecoded = undecoded
    return result
