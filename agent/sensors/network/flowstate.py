"""The mutable record of one open flow, kept by the flow table until it is exported.

Separate from `flowtable` so the state and its byte arithmetic (which source wins) read
on their own; nothing outside the network sensor sees a `FlowState` — exports are
frozen `agent.events.Flow` records.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.events import ByteSource, CloseReason, ProcessInfo
from agent.sensors.network.seqtrack import SeqCounter

FlowKey = tuple[int, bytes, int, bytes, int]


@dataclass(slots=True)
class FlowState:
    """Mutable bookkeeping for one open flow (internal to the table)."""

    key: FlowKey
    start: float
    last: float
    record_start: float
    out: SeqCounter | None = None
    inn: SeqCounter | None = None
    packet_out: int = 0  # UDP payload bytes seen
    packet_in: int = 0
    kernel_out: int | None = None
    kernel_in: int | None = None
    # tcpi_bytes_received from a dump in state CLOSE, where the kernel no longer says
    # whether the peer's FIN (counted as one byte) arrived: resolved by the wire at export
    kernel_in_closed: int | None = None
    conntrack_out: int | None = None
    conntrack_in: int | None = None
    owned: bool = False  # a local socket owns it: wait for its destroy notification
    closed_at: float | None = None  # owned and closed on the wire, destroy not yet seen
    kernel_reset: bool = False  # an abortive close zeroed the socket's counters
    kernel_final: bool = False  # the destroy notification arrived
    fin_out: bool = False
    fin_in: bool = False
    rst: bool = False
    probes: int = 0
    sni: str | None = None
    http_host: str | None = None
    process: ProcessInfo | None = None
    cookie: int | None = None
    exported_out: int = 0
    exported_in: int = 0
    counted_out: int = 0  # already added to egress_agent_outbound_bytes_total

    def _seq_knows_better(self) -> bool:
        """After an abortive close (zeroed tcp_info), or when the destroy notification
        was lost and the wire showed more than the last dump, sequence numbers win."""
        if self.out is None:
            return False
        if self.kernel_reset:
            return True
        return not self.kernel_final and self.out.bytes > (self.kernel_out or 0)

    def kernel_received(self) -> int:
        """Payload bytes received by the local socket. A reading taken in state CLOSE
        counted the peer's FIN if there was one; the capture sees teardown packets, so by
        the time a record is written `fin_in` tells (a socket closed by a reset has none)."""
        known = self.kernel_in or 0
        raw = self.kernel_in_closed
        if self.kernel_final or not raw:
            return known
        return max(known, raw - 1 if self.fin_in else raw)

    def totals(self) -> tuple[int, int, ByteSource]:
        if self.kernel_out is not None and not self._seq_knows_better():
            return self.kernel_out, self.kernel_received(), ByteSource.TCP_INFO
        if self.conntrack_out is not None:
            return self.conntrack_out, self.conntrack_in or 0, ByteSource.CONNTRACK_L3
        if self.out is not None:
            return self.out.bytes, self.inn.bytes if self.inn else 0, ByteSource.TCP_SEQ
        return self.packet_out, self.packet_in, ByteSource.PACKETS


def close_reason(st: FlowState, default: CloseReason) -> CloseReason:
    """How the flow ended as the wire showed it, else `default`."""
    if st.rst:
        return CloseReason.RST
    return CloseReason.FIN if st.fin_out or st.fin_in else default
