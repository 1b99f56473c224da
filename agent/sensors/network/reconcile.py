"""Reconciling the flow table with the kernel's own counts: sock_diag's tcp_info for TCP,
conntrack's counters for UDP.

The wire shows when a flow starts and ends; the kernel knows its exact bytes. A local
socket's tcp_info (a dump, or its destroy notification) replaces sequence-number counts
(`kernel_update`); an abortive close zeroes tcp_info, so sequence numbers count again
once the RST was read (`kernel_reset`); conntrack gives a UDP conversation IP-level
bytes (`conntrack_update`). Connections older than the agent, or that the capture
never showed Python, are adopted from these counts — but never the accepting end of an
inbound connection, and never a conversation already reported (conntrack keeps an
entry after we exported it). Which count wins at export is `FlowState.totals`.

A mixin of `FlowTable` (like `kernelacct.KernelAccounting` of the sensor): it works on
the table's flows and exports through it; kept apart so the packet state machine reads
without the kernel's corrections, and these read in one place.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from agent.events import ByteSource, CloseReason
from agent.sensors.network.flowstate import FlowKey, FlowState, close_reason

RESET_WAIT = 1.0  # seconds to wait for the RST packet after a zeroed destroy notification
_CONNTRACK_REMEMBERED = 65536  # keys whose exported conntrack totals are kept


class KernelReconciliation:
    """The kernel-count half of `FlowTable` (it supplies the flows and the export)."""

    flows: dict[FlowKey, FlowState]
    ignored: OrderedDict[FlowKey, float]
    is_local: Callable[[bytes], bool] | None
    on_new_flow: Callable[[FlowState], None] | None
    close_grace: float
    # conntrack totals already exported per key: its entries outlive our idle timeout
    ct_exported: OrderedDict[FlowKey, tuple[int, int]]
    _new: Callable[[FlowKey, float], FlowState | None]
    _export: Callable[[FlowState, float, CloseReason, bool], None]
    _account: Callable[[FlowState], None]
    _due: Callable[[float], None]

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
            self._export(st, ts, close_reason(st, CloseReason.DESTROY), True)
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
            st.closed_at = min(st.closed_at or ts, ts - self.close_grace + RESET_WAIT)
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

    def _remember_conntrack_export(self, st: FlowState, source: ByteSource, final: bool) -> None:
        """Remember the last totals of a conversation counted by conntrack, whose entry
        outlives our record: a later dump must not report the same bytes again."""
        if source == ByteSource.CONNTRACK_L3 and final:
            self.ct_exported[st.key] = (st.exported_out, st.exported_in)
            if len(self.ct_exported) > _CONNTRACK_REMEMBERED:
                self.ct_exported.popitem(last=False)
