"""TCP byte counting from sequence numbers, exact past 4 GiB.

Used where no local socket's `tcp_info` can tell the kernel's count: traffic this host
forwards, and pcap replay. A `SeqCounter` starts from the ISN of the SYN and tracks the
highest `seq + len` seen, unwrapping each 32-bit value against the previous one. So a
stream longer than 2^32 bytes stays exact as long as consecutive samples are less than
2^31 bytes apart — true in a pcap (every segment), and in live capture for flows up to
2 GiB (only SYN/FIN/RST reach Python there).
"""

from __future__ import annotations

MOD = 1 << 32
HALF = 1 << 31
MASK = MOD - 1


class SeqCounter:
    """Payload bytes of one direction of a TCP connection."""

    __slots__ = ("base", "high")

    def __init__(self, isn: int, syn: bool = True) -> None:
        # the SYN consumes one sequence number; data starts after it
        self.base = (isn + 1) & MASK if syn else isn & MASK
        self.high = self.base  # absolute (unwrapped) end of the highest byte seen

    def see(self, seq: int, length: int) -> None:
        """A segment carrying `length` payload bytes at sequence number `seq`."""
        end = (seq + length) & MASK
        delta = (end - self.high) & MASK
        if delta < HALF:  # forward (a value behind us is a retransmission or reordering)
            self.high += delta

    @property
    def bytes(self) -> int:
        return self.high - self.base
