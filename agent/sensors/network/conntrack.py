"""UDP volume from the kernel's connection tracking (nf_conntrack accounting).

The capture filter keeps UDP bulk data away from Python, so a QUIC upload or any other
UDP conversation gets its byte counts from conntrack: a dump every few seconds (netlink
via pyroute2's NFCTSocket) gives each conversation's original-direction and reply byte
counters. They are IP-level bytes, headers included (`byte_source="conntrack_l3"`),
and need `net.netfilter.nf_conntrack_acct=1` plus conntrack active in the namespace
(any firewall rule that uses it). The last seconds of a conversation that ends between
two dumps are not counted: a small undercount, never an overcount.
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Any, NamedTuple

IPPROTO_UDP = 17
ACCT_SYSCTL = Path("/proc/sys/net/netfilter/nf_conntrack_acct")


class ConntrackEntry(NamedTuple):
    proto: int
    src: bytes
    sport: int
    dst: bytes
    dport: int
    bytes_orig: int
    bytes_reply: int


def _attrs(node: Any) -> dict[str, Any]:
    try:
        return dict(node.get("attrs", ()) if isinstance(node, dict) else node["attrs"])
    except (KeyError, TypeError, ValueError):
        return {}


def _counter(top: dict[str, Any], name: str) -> int | None:
    value = _attrs(top.get(name)).get("CTA_COUNTERS_BYTES")
    return int(value) if isinstance(value, int) else None


def entry_from_message(msg: Any) -> ConntrackEntry | None:
    """One conntrack netlink message (pyroute2's decoded form) → entry, or None."""
    top = _attrs(msg)
    orig = _attrs(top.get("CTA_TUPLE_ORIG"))
    ip, proto = _attrs(orig.get("CTA_TUPLE_IP")), _attrs(orig.get("CTA_TUPLE_PROTO"))
    src = ip.get("CTA_IP_V4_SRC") or ip.get("CTA_IP_V6_SRC")
    dst = ip.get("CTA_IP_V4_DST") or ip.get("CTA_IP_V6_DST")
    out, back = _counter(top, "CTA_COUNTERS_ORIG"), _counter(top, "CTA_COUNTERS_REPLY")
    if not isinstance(src, str) or not isinstance(dst, str):
        return None
    try:
        return ConntrackEntry(
            int(proto["CTA_PROTO_NUM"]),
            ipaddress.ip_address(src).packed,
            int(proto["CTA_PROTO_SRC_PORT"]),
            ipaddress.ip_address(dst).packed,
            int(proto["CTA_PROTO_DST_PORT"]),
            out if out is not None else -1,
            back if back is not None else -1,
        )
    except (KeyError, TypeError, ValueError):
        return None


class Conntrack:
    """Dumps UDP conntrack entries with their byte counters."""

    def __init__(self) -> None:
        from pyroute2 import NFCTSocket

        try:
            acct = ACCT_SYSCTL.read_text().strip()
        except OSError:
            acct = ""
        if acct != "1":
            raise OSError("accounting is off (sysctl net.netfilter.nf_conntrack_acct=0)")
        self._socks = [NFCTSocket(nfgen_family=f) for f in (socket.AF_INET, socket.AF_INET6)]

    def dump(self) -> list[ConntrackEntry]:
        out = []
        for s in self._socks:
            for msg in s.dump():
                e = entry_from_message(msg)
                if e is not None and e.proto == IPPROTO_UDP and e.bytes_orig >= 0:
                    out.append(e)
        return out

    def close(self) -> None:
        for s in self._socks:
            s.close()
