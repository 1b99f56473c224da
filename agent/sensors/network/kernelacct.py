"""Kernel byte accounting and owners for the live network sensor: sock_diag and conntrack.

Split from `sensor` (the loop, the capture) so each reads on its own. An outbound SYN
(or a UDP conversation's first packet) triggers an exact sock_diag lookup and the /proc
index (`_attribute`); destroy notifications close TCP flows with tcp_info's exact bytes
(`_read_destroyed`); a dump updates long flows, adopts connections older than the agent
and repairs lost notifications (`_dump`), and is scheduled only while local TCP flows
are open (`_schedule_dump`); conntrack dumps give UDP conversations their bytes.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable

from agent import metrics
from agent.config import NetworkSection
from agent.events import ProcessInfo
from agent.sensors.network.conntrack import Conntrack
from agent.sensors.network.flowstate import FlowKey, FlowState
from agent.sensors.network.flowtable import FlowTable
from agent.sensors.network.host import is_loopback
from agent.sensors.network.netwatch import ConntrackEvents
from agent.sensors.network.packets import IPPROTO_TCP, TCP_ACK, TCP_SYN, Packet
from agent.sensors.network.procindex import ProcIndex, user_name
from agent.sensors.network.sockdiag import DestroyListener, DiagSocket, SockDiag

log = logging.getLogger(__name__)

DUMP_INTERVAL = 3.0  # seconds between sock_diag dumps while local TCP flows move bytes
MAX_DUMP_INTERVAL = 30.0  # ... backed off to this while their counts stand still
_PEER_FIN_STATES = frozenset((6, 8, 9, 11))  # TIME_WAIT, CLOSE_WAIT, LAST_ACK, CLOSING
_TCP_CLOSE = 7  # reached by an orderly close (FIN counted) or a reset (none): ambiguous
EARLY_LOOKUP_AGE = 0.25  # s an early sock_diag answer is used for its flow's opening


class KernelAccounting:
    """The sock_diag and conntrack half of `NetworkSensor` (a mixin: it shares the
    sensor's flow table, sockets and loop deadlines)."""

    cfg: NetworkSection
    netlink_buffer: int
    table: FlowTable | None
    diag: SockDiag | None
    destroy: DestroyListener | None
    conntrack: Conntrack | None
    ct_events: ConntrackEvents | None
    kernel_accounting: str
    udp_accounting: str
    procs: ProcIndex
    cookies: dict[int, FlowKey]
    local: set[bytes]
    ephemeral: tuple[int, int]
    lost_notifications: int
    dumps: int = 0  # sock_diag dumps done
    # destroy notifications joined to their flow by socket cookie, and by 4-tuple (a
    # socket the sensor never looked up: adopted by no dump yet, or its SYN unseen)
    destroy_by_cookie: int = 0
    destroy_by_tuple: int = 0
    destroy_by_port: int = 0  # aborted sockets joined by local port and peer address
    # (local port, peer address) -> the local TCP flows opened with them
    endpoints: dict[tuple[int, bytes], set[FlowKey]]
    _next_dump: float  # time.monotonic() of the next sock_diag dump; inf: none due
    _next_ct: float  # ... of the next conntrack dump
    _dump_interval: float
    # sock_diag answers for outbound SYNs and DNS queries read from the wake-up sockets,
    # by flow key, with when they were asked (time.monotonic()): `_attribute` uses them
    _early: dict[FlowKey, tuple[float, DiagSocket | None, ProcessInfo | None]]

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
        try:
            self.ct_events = ConntrackEvents()
        except OSError as e:  # new UDP conversations are then found by a dump every 3 s
            log.warning(
                "cannot listen to conntrack events (%s); dumping every %.0f s", e, DUMP_INTERVAL
            )

    def _key(self, s: DiagSocket) -> FlowKey:
        return (IPPROTO_TCP, s.src, s.sport, s.dst, s.dport)

    def _outbound_guess(self, s: DiagSocket) -> bool:
        """A socket whose SYN we did not see: outbound if its local port is ephemeral.
        Loopback conversations never leave the host and are not reported."""
        if is_loopback(s.dst):
            return False
        return self.ephemeral[0] <= s.sport <= self.ephemeral[1]

    def _followed_or_adoptable(self, src: bytes, sport: int, dst: bytes, dport: int) -> bool:
        """Whether a dumped socket is worth parsing: a flow of the table, or one the dump
        would adopt (ephemeral local port, not loopback). Accepted connections of local
        servers are neither, and are most of a server's sockets."""
        assert self.table is not None
        if (IPPROTO_TCP, src, sport, dst, dport) in self.table.flows:
            return True
        return (
            dport != 0 and not is_loopback(dst) and self.ephemeral[0] <= sport <= self.ephemeral[1]
        )

    def _read_destroyed(self) -> None:
        assert self.destroy is not None and self.table is not None
        socks, lost = self.destroy.read()
        now = time.time()
        flows = self.table.flows
        for s in socks:
            key = self.cookies.pop(s.cookie, None)
            if key is not None:
                self.destroy_by_cookie += 1
            elif s.dport == 0:
                # an abortive close (tcp_disconnect) zeroed the peer port and the local
                # address; its cookie is unknown when the SYN's lookup came too late
                key = self._aborted(s)
                if key is None:
                    continue  # a listening or unconnected socket, or not ours
                self.destroy_by_port += 1
            else:
                key = self._key(s)
                if key in flows:
                    self.destroy_by_tuple += 1
            self._forget_endpoint(key)
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

    def _aborted(self, s: DiagSocket) -> FlowKey | None:
        """The open flow of an aborted socket whose cookie the sensor does not know, by
        what tcp_disconnect leaves in the notification: the local port and the peer
        address. None when no open flow, or more than one, has them (the kernel lets two
        connections share both when their peer ports differ)."""
        assert self.table is not None
        flows = self.table.flows
        live = [k for k in self.endpoints.get((s.sport, s.dst), ()) if k in flows]
        return live[0] if len(live) == 1 else None

    def _prune_joins(self) -> None:
        """Forget the cookies and endpoints of flows the table no longer holds (exported
        without a destroy notification: idle, evicted, lost notifications)."""
        assert self.table is not None
        flows = self.table.flows
        self.cookies = {c: k for c, k in self.cookies.items() if k in flows}
        endpoints: dict[tuple[int, bytes], set[FlowKey]] = {}
        for endpoint, keys in self.endpoints.items():
            live = {k for k in keys if k in flows}
            if live:
                endpoints[endpoint] = live
        self.endpoints = endpoints

    def _forget_endpoint(self, key: FlowKey) -> None:
        keys = self.endpoints.get((key[2], key[3]))
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self.endpoints[(key[2], key[3])]

    def _dump(self) -> None:
        assert self.diag is not None and self.table is not None
        try:
            socks = self.diag.dump(self._followed_or_adoptable)
        except OSError as e:
            log.warning("sock_diag dump failed: %s", e)
            self._next_dump = time.monotonic() + DUMP_INTERVAL
            return
        self.dumps += 1
        now = time.time()
        flows = self.table.flows
        changed = False
        for s in socks:
            key = self._key(s)
            old = flows.get(key)
            before = None if old is None else (old.kernel_out, old.kernel_in, old.kernel_in_closed)
            st = self.table.kernel_update(
                key,
                s.payload_out,
                s.bytes_received or 0,
                now,
                adopt=self._outbound_guess(s),
                peer_fin=None if s.state == _TCP_CLOSE else s.state in _PEER_FIN_STATES,
            )
            if st is None:
                continue
            if st is not old or before != (st.kernel_out, st.kernel_in, st.kernel_in_closed):
                changed = True
            if st.cookie is None:
                self._own(st, s)
        self._schedule_dump(changed)

    def _schedule_dump(self, changed: bool) -> None:
        """The next dump: none while no local TCP flow is open (new ones are seen by
        their SYN, and their destroy notification ends them); in DUMP_INTERVAL while
        counts move, backing off while they stand still — but always well within
        idle_timeout, since a dump is what keeps an owned flow's `last` fresh."""
        assert self.table is not None
        local = self.local
        if not any(k[0] == IPPROTO_TCP and k[1] in local for k in self.table.flows):
            self._next_dump = math.inf
            self._dump_interval = DUMP_INTERVAL
            return
        if changed:
            self._dump_interval = DUMP_INTERVAL
        else:
            longest = max(DUMP_INTERVAL, min(MAX_DUMP_INTERVAL, self.cfg.idle_timeout / 2))
            self._dump_interval = min(self._dump_interval * 2, longest)
        self._next_dump = time.monotonic() + self._dump_interval

    def _conntrack_dump(self) -> None:
        assert self.conntrack is not None and self.table is not None
        try:
            entries = self.conntrack.dump()
        except Exception as err:  # an OSError from the socket, or a malformed reply
            log.warning("conntrack dump failed: %s", err)
            self._next_ct = time.monotonic() + DUMP_INTERVAL
            return
        now = time.time()
        for e in entries:
            if is_loopback(e.dst):
                continue
            key = (e.proto, e.src, e.sport, e.dst, e.dport)
            self.table.conntrack_update(key, e.bytes_orig, e.bytes_reply, now)
        # again while UDP flows are open (their counts) or, without conntrack events,
        # always (new conversations are found only this way then)
        if self.ct_events is None or any(k[0] != IPPROTO_TCP for k in self.table.flows):
            self._next_ct = time.monotonic() + DUMP_INTERVAL

    def _look_up_early(self, packets: Iterable[Packet]) -> None:
        """Ask sock_diag for the socket of each outbound SYN and DNS query as soon as
        its wake-up copy is read, before the capture queue ahead of it is processed: a
        short connection (a 1 kB upload over veth lasts well under a millisecond) may be
        gone by the time its SYN's turn comes, and then its owner is lost. The process
        is searched for at once too: /proc only shows the socket while a process holds
        it."""
        if self.diag is None:
            return
        now = time.monotonic()
        early, local = self._early, self.local
        asked: set[FlowKey] = set()  # loopback shows each packet twice
        for pkt in packets:
            if pkt.src not in local:
                continue
            key = (pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport)
            if key in asked:
                continue
            asked.add(key)
            if pkt.proto == IPPROTO_TCP:
                if pkt.flags & (TCP_SYN | TCP_ACK) != TCP_SYN:
                    continue
                found = self.diag.lookup(pkt.src, pkt.sport, pkt.dst, pkt.dport)
            else:
                found = self.diag.lookup_udp(pkt.src, pkt.sport, pkt.dst, pkt.dport)
            owner = self._owner(key, found) if found is not None and found.inode else None
            early[key] = (now, found, owner)

    def _forget_early(self) -> None:
        """Drop early answers no flow opening used (a retransmitted SYN, a port in use)."""
        if self._early:
            now = time.monotonic()
            self._early = {k: v for k, v in self._early.items() if now - v[0] < EARLY_LOOKUP_AGE}

    def _socket_of(self, key: FlowKey) -> tuple[DiagSocket | None, ProcessInfo | None]:
        """The local socket of a new flow and its owner: the early answer when fresh,
        else the socket asked now (its owner searched for by the caller)."""
        assert self.diag is not None
        when, found, owner = self._early.pop(key, (0.0, None, None))
        if found is not None and time.monotonic() - when < EARLY_LOOKUP_AGE:
            return found, owner
        proto, src, sport, dst, dport = key
        if proto == IPPROTO_TCP:
            return self.diag.lookup(src, sport, dst, dport), None
        return self.diag.lookup_udp(src, sport, dst, dport), None

    def _attribute(self, st: FlowState) -> None:
        """On an outbound SYN (or a UDP conversation's first packet): which local socket,
        and which process, sent it."""
        proto, src, sport, dst, _dport = st.key
        if proto != IPPROTO_TCP:
            if self.conntrack is not None and self._next_ct == math.inf:
                self._next_ct = time.monotonic() + DUMP_INTERVAL  # its bytes
        elif self.diag is not None and src in self.local:
            # a long upload's counts (and a lost SYN owner) come from dumps
            self._dump_interval = DUMP_INTERVAL
            self._next_dump = min(self._next_dump, time.monotonic() + DUMP_INTERVAL)
        if src not in self.local:
            return  # forwarded traffic: no local socket
        if proto != IPPROTO_TCP:
            if self.diag is not None:
                s, owner = self._socket_of(st.key)
                if s is not None:
                    self._process(st, s, owner)
            return
        if self.destroy is not None:
            st.owned = True  # its destroy notification will bring the exact bytes
            self.endpoints.setdefault((sport, dst), set()).add(st.key)
        if self.diag is None:
            return
        s, owner = self._socket_of(st.key)
        if s is not None:
            self._own(st, s, owner)

    def _own(self, st: FlowState, s: DiagSocket, owner: ProcessInfo | None = None) -> None:
        if not s.inode:
            # no file holds the socket: a lookup after the connection closed found its
            # TIME_WAIT remnant — another socket, with a cookie of its own (the full
            # socket's was never generated, so the remnant inherited none) — or a socket
            # its process already closed; either way the kernel reports uid 0 (root)
            # and no inode, so neither the owner nor the cookie is kept
            return
        st.cookie = s.cookie
        self.cookies[s.cookie] = st.key
        self._process(st, s, owner)

    def _still_open(self, key: FlowKey, inode: int) -> bool:
        """Whether the socket of `key` still exists (same inode), by one exact lookup."""
        if self.diag is None:
            return True
        proto, src, sport, dst, dport = key
        find = self.diag.lookup if proto == IPPROTO_TCP else self.diag.lookup_udp
        again = find(src, sport, dst, dport)
        return again is not None and again.inode == inode

    def _process(self, st: FlowState, s: DiagSocket, owner: ProcessInfo | None = None) -> None:
        """The flow's process: `owner` when it was found early, else searched for now."""
        if st.process is None:
            st.process = owner or self._owner(st.key, s)

    def _owner(self, key: FlowKey, s: DiagSocket) -> ProcessInfo:
        """The process holding socket `s` (of flow `key`), or its uid alone."""
        pid = self.procs.pid_of(s.inode, lambda: self._still_open(key, s.inode))
        if pid is not None:
            return self.procs.process(pid, s.uid)
        return ProcessInfo(uid=s.uid, user=user_name(s.uid))
