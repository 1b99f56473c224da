"""The flow state machine on its own: closes, timeouts, when it is due, hostile packet
sequences (the kernel's counts are test_reconcile.py's)."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.events import Flow
from agent.sensors.network.flowtable import FlowTable
from agent.sensors.network.packets import TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, Packet

A, B, L = b"\x0a\x00\x00\x01", b"\xcb\x00\x71\x07", b"\x0a\x00\x00\x02"


def _table(**kw: object) -> tuple[FlowTable, list[Flow]]:
    out: list[Flow] = []
    return FlowTable(out.append, **kw), out  # type: ignore[arg-type]


def _tcp(
    src: bytes, sport: int, dst: bytes, dport: int, seq: int, flags: int, n: int = 0
) -> Packet:
    return Packet(6, src, dst, sport, dport, seq, 0, flags, 0, n)


def test_owned_flow_without_destroy_ends_after_the_grace_period() -> None:
    t, out = _table()
    t.packet(_tcp(A, 40001, B, 443, 100, TCP_SYN), 1.0, b"", 0)
    t.flows[(6, A, 40001, B, 443)].owned = True
    t.packet(_tcp(A, 40001, B, 443, 301, TCP_RST), 2.0, b"", 0)
    t.expire(3.0)
    assert out == []
    t.expire(2.0 + t.close_grace)
    (f,) = out
    assert (f.bytes_out, f.byte_source, f.close_reason) == (200, "tcp_seq", "rst")


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([A, B, L]),
            st.sampled_from([1, 443, 40000]),
            st.sampled_from([A, B, L]),
            st.sampled_from([1, 443, 40000]),
            st.integers(0, 2**32 - 1),
            st.integers(0, 255),
            st.integers(0, 70000),
            st.sampled_from([6, 17]),
        ),
        max_size=60,
    ),
    st.booleans(),
)
def test_any_packet_sequence_is_safe_and_adds_up(packets: list, midstream: bool) -> None:
    t, out = _table(midstream=midstream, idle_timeout=5, active_timeout=3)
    ts = 0.0
    for src, sport, dst, dport, seq, flags, n, proto in packets:
        ts += 1.0
        t.expire(ts)
        t.packet(Packet(proto, src, dst, sport, dport, seq, 0, flags, 0, n), ts, b"", 0)
    t.flush(ts + 1)
    assert t.flows == {}
    assert all(f.bytes_out >= 0 and f.bytes_in >= 0 and f.end >= f.start for f in out)


def test_due_says_when_the_next_timeout_can_happen() -> None:
    """A live sensor sleeps until `due` instead of calling expire() every second: it
    must never be later than a flow's timeout, and an empty table has none."""
    t, out = _table(is_local=lambda a: a in (A, L), idle_timeout=60.0, active_timeout=300.0)
    assert t.due == math.inf
    key = (6, A, 40010, B, 443)
    t.packet(_tcp(A, 40010, B, 443, 100, TCP_SYN), 10.0, b"", 0)
    assert t.due == 70.0  # idle timeout of the new flow
    t.flows[key].owned = True
    t.packet(_tcp(A, 40010, B, 443, 5101, TCP_FIN | TCP_ACK), 12.0, b"", 0)
    t.packet(_tcp(B, 443, A, 40010, 900, TCP_FIN | TCP_ACK), 12.5, b"", 0)
    assert t.due == 12.5 + t.close_grace  # owned and closed: the destroy's grace period
    t.expire(13.0)  # nothing due yet: the earliest deadline is recomputed
    assert t.due == 12.5 + t.close_grace and out == []
    t.expire(t.due)
    assert len(out) == 1 and t.due == math.inf


def test_due_follows_the_active_timeout_of_a_long_flow() -> None:
    t, out = _table(is_local=lambda a: a in (A, L), idle_timeout=60.0, active_timeout=5.0)
    key = (6, A, 40011, B, 443)
    t.packet(_tcp(A, 40011, B, 443, 100, TCP_SYN), 1.0, b"", 0)
    assert t.due == 6.0
    t.kernel_update(key, 1000, 0, 4.0)
    t.expire(6.0)  # an active record, and the next one 5 s later
    assert [f.close_reason for f in out] == ["active"] and t.due == 11.0
