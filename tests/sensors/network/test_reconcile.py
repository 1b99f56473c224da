"""The kernel's counts merged into the flow table: tcp_info from dumps and destroy
notifications (the peer's FIN byte, state CLOSE, abortive closes), conntrack's UDP
counts (adoption, and no conversation reported twice), and what is never adopted."""

from __future__ import annotations

from agent.sensors.network.flowstate import FlowKey
from agent.sensors.network.packets import TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN
from agent.sensors.network.reconcile import RESET_WAIT
from tests.sensors.network.test_flowtable import A, B, L, _table, _tcp


def test_kernel_counts_win_and_the_destroy_closes() -> None:
    t, out = _table(is_local=lambda a: a in (A, L))
    t.packet(_tcp(A, 40000, B, 443, 100, TCP_SYN), 1.0, b"", 0)
    st = t.flows[(6, A, 40000, B, 443)]
    st.owned = True  # what the sensor does when sock_diag found the socket
    t.packet(_tcp(A, 40000, B, 443, 5101, TCP_FIN | TCP_ACK), 2.0, b"", 0)
    t.packet(_tcp(B, 443, A, 40000, 900, TCP_FIN | TCP_ACK), 2.1, b"", 0)
    assert out == []  # owned: wait for the destroy notification
    t.kernel_update((6, A, 40000, B, 443), 5000, 1, 2.2, final=True)
    (f,) = out
    assert (f.bytes_out, f.bytes_in, f.byte_source, f.close_reason) == (5000, 0, "tcp_info", "fin")


def test_a_dump_in_state_close_before_the_fin_was_read_does_not_count_it() -> None:
    """The CI flake: a dump caught the socket in CLOSE (its count includes the peer's
    FIN) before the capture read that FIN, and the destroy notification never came."""
    t, out = _table(is_local=lambda a: a in (A, L))
    key = (6, A, 40002, B, 443)
    t.packet(_tcp(A, 40002, B, 443, 100, TCP_SYN), 1.0, b"", 0)
    t.flows[key].owned = True
    t.packet(_tcp(A, 40002, B, 443, 5101, TCP_FIN | TCP_ACK), 2.0, b"", 0)
    t.kernel_update(key, 5000, 1, 2.1, peer_fin=None)  # state CLOSE: FIN counted or not?
    t.packet(_tcp(B, 443, A, 40002, 900, TCP_FIN | TCP_ACK), 2.2, b"", 0)
    t.kernel_update(key, 5000, 1, 2.3, peer_fin=True)  # a later dump that knows
    t.expire(2.2 + t.close_grace)
    (f,) = out
    assert (f.bytes_out, f.bytes_in, f.byte_source) == (5000, 0, "tcp_info")


def test_a_dump_in_state_close_after_a_reset_keeps_every_byte() -> None:
    t, out = _table(is_local=lambda a: a in (A, L))
    key = (6, A, 40003, B, 443)
    t.packet(_tcp(A, 40003, B, 443, 100, TCP_SYN), 1.0, b"", 0)
    t.flows[key].owned = True
    t.kernel_update(key, 5000, 7, 2.1, peer_fin=None)  # no FIN on the wire: 7 real bytes
    t.packet(_tcp(B, 443, A, 40003, 900, TCP_RST), 2.2, b"", 0)
    t.expire(2.2 + t.close_grace)
    (f,) = out
    assert (f.bytes_out, f.bytes_in) == (5000, 7)


def test_a_dump_that_predates_the_fin_is_not_corrected_by_the_wire() -> None:
    """The capture sees the FIN before TCP does: a dump in ESTABLISHED right after
    still excludes it, and must not lose a real byte."""
    t, out = _table(is_local=lambda a: a in (A, L))
    key = (6, A, 40004, B, 443)
    t.packet(_tcp(A, 40004, B, 443, 100, TCP_SYN), 1.0, b"", 0)
    t.flows[key].owned = True
    t.packet(_tcp(B, 443, A, 40004, 900, TCP_FIN | TCP_ACK), 2.0, b"", 0)
    t.kernel_update(key, 10, 3, 2.05, peer_fin=False)
    t.kernel_update(key, 10, 4, 2.1, final=True)
    (f,) = out
    assert (f.bytes_out, f.bytes_in) == (10, 3)


def test_inbound_and_accepting_sockets_are_not_flows() -> None:
    t, out = _table(is_local=lambda a: a == L)
    t.packet(_tcp(B, 5555, L, 22, 1, TCP_SYN), 1.0, b"", 0)
    t.packet(_tcp(B, 5555, L, 22, 2, TCP_FIN), 2.0, b"", 0)
    # the accepting socket's view of the same connection, from a dump: not adopted
    assert t.kernel_update((6, L, 22, B, 5555), 10, 10, 3.0, adopt=True) is None
    t.flush(4.0)
    assert out == [] and t.flows == {}


def test_an_accepting_socket_adopted_before_its_syn_was_read_is_dropped() -> None:
    """The CI flake: a server on an ephemeral port, and a dump that ran between the
    handshake and the capture's read of the inbound SYN, adopted the accepting socket as
    an outbound flow; the SYN, read next, shows whose connection it is."""
    t, out = _table(is_local=lambda a: a == L)
    assert t.kernel_update((6, L, 45000, B, 5555), 0, 2000, 1.0, adopt=True) is not None
    t.packet(_tcp(B, 5555, L, 45000, 1, TCP_SYN), 1.1, b"", 0)
    t.packet(_tcp(B, 5555, L, 45000, 2002, TCP_FIN | TCP_ACK), 2.0, b"", 0)
    assert t.kernel_update((6, L, 45000, B, 5555), 0, 2001, 2.1, final=True, adopt=True) is None
    t.flush(4.0)
    assert out == [] and t.flows == {} and t.reverse == {}


def test_an_abortive_close_counts_from_sequence_numbers_once_the_rst_is_read() -> None:
    """tcp_disconnect zeroes tcp_info: the destroy notification has no bytes, so the
    flow waits RESET_WAIT for its RST and is counted from sequence numbers."""
    t, out = _table(is_local=lambda a: a in (A, L))
    key: FlowKey = (6, A, 40020, B, 443)
    t.packet(_tcp(A, 40020, B, 443, 100, TCP_SYN), 1.0, b"", 0)
    t.packet(_tcp(A, 40020, B, 443, 101, TCP_ACK, n=3000), 1.5, b"", 0)
    t.kernel_update(key, 2000, 0, 2.0)  # a dump while the upload ran
    t.kernel_reset(key, 3.0)
    assert t.flows[key].owned and t.due == 3.0 + RESET_WAIT
    t.packet(_tcp(A, 40020, B, 443, 3101, TCP_RST), 3.1, b"", 0)
    t.expire(3.0 + RESET_WAIT - 0.01)
    assert out == []
    t.expire(3.0 + RESET_WAIT)
    (f,) = out
    assert (f.bytes_out, f.byte_source, f.close_reason) == (3000, "tcp_seq", "rst")


def test_conntrack_adopts_a_conversation_and_never_reports_its_bytes_twice() -> None:
    """Conntrack keeps an entry after our record: the next dump brings only what is new."""
    t, out = _table(is_local=lambda a: a in (A, L))
    key: FlowKey = (17, A, 5353, B, 4500)
    t.conntrack_update(key, 100, 50, 1.0)  # the capture never saw it: adopted
    t.flush(2.0)
    t.conntrack_update(key, 100, 50, 3.0)  # the same entry, nothing new
    assert t.flows == {}
    t.conntrack_update(key, 160, 50, 4.0)
    t.flush(5.0)
    assert [(f.bytes_out, f.bytes_in, f.byte_source) for f in out] == [
        (100, 50, "conntrack_l3"),
        (60, 0, "conntrack_l3"),
    ]


def test_conntrack_never_adopts_an_inbound_conversation_or_overrides_tcp_info() -> None:
    t, out = _table(is_local=lambda a: a in (A, L))
    t.conntrack_update((17, B, 4500, L, 53), 10, 10, 1.0)  # a query to our resolver
    assert t.flows == {}
    key: FlowKey = (6, A, 40021, B, 443)
    t.packet(_tcp(A, 40021, B, 443, 100, TCP_SYN), 1.0, b"", 0)
    t.kernel_update(key, 5000, 0, 2.0)
    t.conntrack_update(key, 5400, 300, 2.5)  # headers included: tcp_info is exact
    t.packet(_tcp(A, 40021, B, 443, 5101, TCP_FIN | TCP_ACK), 3.0, b"", 0)
    t.packet(_tcp(B, 443, A, 40021, 900, TCP_FIN | TCP_ACK), 3.1, b"", 0)
    t.expire(3.1 + t.close_grace)
    (f,) = out
    assert (f.bytes_out, f.byte_source) == (5000, "tcp_info")
