"""Sequence-number byte counting: wrap-around, > 4 GiB streams, retransmissions."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent.sensors.network.seqtrack import MASK, SeqCounter


def test_counts_across_the_wrap() -> None:
    c = SeqCounter(isn=MASK - 10)  # data starts 10 before 2^32
    c.see((MASK - 9) & MASK, 100)
    assert c.bytes == 100


def test_stream_past_four_gib_with_large_jumps() -> None:
    isn = 0xFFFF_0000
    c = SeqCounter(isn)
    total = 0
    seq = (isn + 1) & MASK
    for step in [2**30] * 5 + [123_457]:  # 5 GiB + a bit, in 1 GiB strides
        seq = (seq + step) & MASK
        total += step
        c.see(seq, 0)
    assert c.bytes == total == 5 * 2**30 + 123_457


def test_retransmissions_and_reordering_do_not_count_twice() -> None:
    c = SeqCounter(isn=1000)
    c.see(1001, 500)
    c.see(1501, 500)
    c.see(1001, 500)  # retransmission
    c.see(1201, 100)  # inside what we have
    c.see(2501, 100)  # a hole then a later segment
    c.see(2001, 500)  # the hole filled late
    assert c.bytes == 1600


def test_midstream_start() -> None:
    c = SeqCounter(isn=5000, syn=False)
    c.see(5000, 10)
    assert c.bytes == 10


@given(
    st.integers(0, MASK),
    st.lists(st.integers(0, 65535), min_size=1, max_size=300),
    st.integers(0, 3),
)
def test_in_order_segments_with_retransmits_sum_exactly(
    isn: int, sizes: list[int], every: int
) -> None:
    c = SeqCounter(isn)
    seq = isn + 1
    for i, n in enumerate(sizes):
        c.see(seq & MASK, n)
        if every and i % (every + 1) == 0:
            c.see(seq & MASK, n)  # retransmitted copy
        seq += n
    assert c.bytes == sum(sizes)
