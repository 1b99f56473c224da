"""Damaged captures: reading resumes at the next confirmed record instead of stopping."""

from __future__ import annotations

import random
import struct
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.sensors.network import pcapresync
from agent.sensors.network.pcapfile import PcapStats, classic_header, frames, mapped
from agent.sensors.network.pcapresync import (
    WINDOW,
    ClassicLayout,
    find_block,
    find_record,
    plausible_record,
    record_ok,
)
from agent.sensors.network.replay import replay_pcap
from tests.conftest import cli
from tests.sensors.network.pcaps import Clock, tcp_session, write

C, S = "10.0.0.5", "203.0.113.7"
T0 = 1_700_000_000


def sessions(n: int = 6) -> list:
    """n TCP connections one after the other (port 41000 + i), each with its own sizes."""
    clock = Clock()
    pkts = []
    for i in range(n):
        pkts += tcp_session(
            clock,
            C,
            S,
            41000 + i,
            443,
            [bytes([65 + i]) * (300 + 100 * i)] * (3 + i % 3),
            replies=[b"r" * (50 + i)],
        )
    return pkts


def record_offsets(raw: bytes) -> list[int]:
    """Offsets of the record headers of an undamaged little-endian classic pcap."""
    out, off = [], 24
    while off + 16 <= len(raw):
        out.append(off)
        off += 16 + struct.unpack_from("<I", raw, off + 8)[0]
    assert off == len(raw)
    return out


def block_offsets(raw: bytes) -> list[int]:
    """Offsets of the blocks of an undamaged little-endian pcapng file."""
    out, off = [], 0
    while off < len(raw):
        out.append(off)
        off += struct.unpack_from("<I", raw, off + 4)[0]
    return out


def by_port(path: Path) -> dict[int, tuple[int, int]]:
    return {f.src_port: (f.bytes_out, f.bytes_in) for f in replay_pcap(path).flows}


def general_path(path: Path) -> tuple[list[bytes], PcapStats]:
    """Frames (header and data) through the reader's generic loop, not the Ethernet one."""
    stats = PcapStats()
    with mapped(path) as mm:
        got = [bytes(mm[start - 16 : end]) for _, _, _, start, end in frames(path, mm, stats)]
    return got, stats


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, dict[int, tuple[int, int]]]:
    path = write(tmp_path_factory.mktemp("resync") / "good.pcap", sessions())
    flows = by_port(path)
    assert len(flows) == 6
    return path.read_bytes(), flows


@pytest.mark.parametrize(
    "garbage",
    [
        random.Random(1).randbytes(5000),
        bytes(70_000),  # a zero-filled hole, as a full disk leaves
        # a believable pair of records ten days off, then noise: not where to resume
        b"\xff" * 16
        + struct.pack("<IIII", T0 + 10 * WINDOW, 5, 40, 40) * 1
        + bytes(40)
        + struct.pack("<IIII", T0 + 10 * WINDOW, 6, 40, 40)
        + bytes(40)
        + random.Random(2).randbytes(300),
        # a believable header at the right time whose successor is not one
        b"\xff" * 16 + struct.pack("<IIII", T0, 5, 40, 40) + b"\xee" * 200,
    ],
    ids=["random", "zeros", "far_in_time", "unconfirmed"],
)
def test_garbage_between_records_is_skipped(
    tmp_path: Path, capture: tuple[bytes, dict[int, tuple[int, int]]], garbage: bytes
) -> None:
    raw, flows = capture
    offsets = record_offsets(raw)
    cut = offsets[len(offsets) // 2]  # inside the middle connection
    path = tmp_path / "inserted.pcap"
    path.write_bytes(raw[:cut] + garbage + raw[cut:])
    res = replay_pcap(path)
    assert {f.src_port: (f.bytes_out, f.bytes_in) for f in res.flows} == flows
    stats = res.stats
    assert (stats.frames, stats.resyncs, stats.skipped_bytes, stats.truncated) == (
        len(offsets),
        1,
        len(garbage),
        0,
    )
    got, gst = general_path(path)
    assert b"".join(got) == raw[24:] and (gst.resyncs, gst.skipped_bytes) == (1, len(garbage))


def test_an_impossible_length_loses_one_record(
    tmp_path: Path, capture: tuple[bytes, dict[int, tuple[int, int]]]
) -> None:
    raw, flows = capture
    offsets = record_offsets(raw)
    k = len(offsets) // 2
    damaged = bytearray(raw)
    struct.pack_into("<II", damaged, offsets[k] + 8, 0x7FFFFFF0, 60)  # caplen > origlen, huge
    path = tmp_path / "overwritten.pcap"
    path.write_bytes(bytes(damaged))
    ports = struct.unpack_from("!HH", raw, offsets[k] + 16 + 14 + 20)
    lost_port = ports[1] if ports[0] == 443 else ports[0]  # flows are keyed by client port
    res = replay_pcap(path)
    got = {f.src_port: (f.bytes_out, f.bytes_in) for f in res.flows}
    assert set(got) == set(flows)
    # the connection that lost a segment is counted from sequence numbers all the same;
    # every other one is exact
    assert {p: v for p, v in got.items() if p != lost_port} == {
        p: v for p, v in flows.items() if p != lost_port
    }
    stats = res.stats
    skipped = offsets[k + 1] - offsets[k]
    assert (stats.frames, stats.resyncs, stats.skipped_bytes, stats.truncated) == (
        len(offsets) - 1,
        1,
        skipped,
        0,
    )
    frames_got, gst = general_path(path)
    assert b"".join(frames_got) == raw[24 : offsets[k]] + raw[offsets[k + 1] :]
    assert (gst.resyncs, gst.skipped_bytes) == (1, skipped)


def test_a_header_with_origlen_below_caplen_is_damage(
    tmp_path: Path, capture: tuple[bytes, dict[int, tuple[int, int]]]
) -> None:
    raw, _ = capture
    offsets = record_offsets(raw)
    damaged = bytearray(raw)
    caplen = struct.unpack_from("<I", raw, offsets[3] + 8)[0]
    struct.pack_into("<I", damaged, offsets[3] + 12, caplen - 1)
    path = tmp_path / "origlen.pcap"
    path.write_bytes(bytes(damaged))
    stats = replay_pcap(path).stats
    assert (stats.frames, stats.resyncs, stats.skipped_bytes) == (
        len(offsets) - 1,
        1,
        offsets[4] - offsets[3],
    )


def test_the_scan_gives_up_after_max_scan(
    tmp_path: Path,
    capture: tuple[bytes, dict[int, tuple[int, int]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    raw, _ = capture
    offsets = record_offsets(raw)
    cut = offsets[10]
    path = tmp_path / "far.pcap"
    path.write_bytes(raw[:cut] + random.Random(3).randbytes(20_000) + raw[cut:])
    monkeypatch.setattr(pcapresync, "MAX_SCAN", 4096)
    for stats in (replay_pcap(path).stats, general_path(path)[1]):
        assert (stats.frames, stats.resyncs, stats.truncated) == (10, 0, 1)
        assert stats.skipped_bytes == len(raw) + 20_000 - cut


def test_pcapng_blocks_after_damage_are_read(tmp_path: Path) -> None:
    good = write(tmp_path / "good.pcapng", sessions(), ng=True)
    flows = by_port(good)
    raw = good.read_bytes()
    blocks = block_offsets(raw)
    assert len(blocks) > 40
    k = len(blocks) // 2
    inserted = tmp_path / "inserted.pcapng"
    garbage = random.Random(4).randbytes(3001)  # not a multiple of 4 either
    inserted.write_bytes(raw[: blocks[k]] + garbage + raw[blocks[k] :])
    res = replay_pcap(inserted)
    assert by_port(inserted) == flows
    assert (res.stats.resyncs, res.stats.skipped_bytes, res.stats.bad_blocks) == (1, 3001, 0)
    # a block whose length no longer matches its trailer: that block is lost, not the rest
    damaged = bytearray(raw)
    struct.pack_into("<I", damaged, blocks[k] + 4, 0x100)
    overwritten = tmp_path / "overwritten.pcapng"
    overwritten.write_bytes(bytes(damaged))
    res = replay_pcap(overwritten)
    assert res.stats.frames == len(blocks) - 3  # SHB, IDB and the damaged block
    assert (res.stats.resyncs, res.stats.skipped_bytes) == (1, blocks[k + 1] - blocks[k])
    assert {f.src_port for f in res.flows} == set(flows)


def test_cli_summary_counts_the_resync(tmp_path: Path) -> None:
    good = write(tmp_path / "good.pcap", sessions(2))
    raw = good.read_bytes()
    cut = record_offsets(raw)[4]
    path = tmp_path / "cli.pcap"
    path.write_bytes(raw[:cut] + b"\xee" * 777 + raw[cut:])
    res = cli("replay", str(path))
    assert "0 truncated, 0 bad blocks, 1 resyncs, 777 bytes skipped" in res.stderr


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("nanos", [False, True])
def test_find_record_both_byte_orders_and_units(endian: str, nanos: bool) -> None:
    frac = 999_999_999 if nanos else 999_999
    layout = ClassicLayout(endian, nanos, 1500)
    recs = [struct.pack(endian + "IIII", T0 + i, frac, 60, 60) + bytes(60) for i in range(4)]
    noise = random.Random(5).randbytes(999)
    buf = recs[0] + noise + b"".join(recs[1:])
    start = len(recs[0])
    assert find_record(buf, start, len(buf), layout, T0) == start + len(noise)
    assert find_record(buf, start, len(buf), layout, None) == start + len(noise)
    # a sub-second field past the unit is not a header; nor is a record past the snaplen
    bad_frac = struct.pack(endian + "IIII", T0, frac + 1, 60, 60) + bytes(60)
    assert plausible_record(bad_frac, 0, len(bad_frac), layout, T0) is None
    assert plausible_record(recs[0], 0, 76, ClassicLayout(endian, nanos, 59), T0) is None
    # only headers far from `around`: found on the second, windowless pass
    far = noise + b"".join(recs)
    assert find_record(far, 0, len(far), layout, T0 + 30 * WINDOW) == len(noise)
    assert find_record(far, 0, len(far), layout, T0, max_scan=100) is None


def test_find_block_needs_a_matching_trailer() -> None:
    def block(btype: int, body: bytes) -> bytes:
        n = 12 + len(body)
        return struct.pack("<II", btype, n) + body + struct.pack("<I", n)

    real = block(6, bytes(24)) + block(6, bytes(24))
    fake = struct.pack("<II", 6, 32) + bytes(20) + struct.pack("<I", 36)  # trailer disagrees
    buf = b"\x01" * 7 + fake + real
    assert find_block(buf, 0, len(buf), "<") == 7 + len(fake)
    assert find_block(buf, 0, len(buf), "<", max_scan=10) is None


def test_record_ok_rejects_impossible_lengths() -> None:
    assert record_ok(60, 60, 65535) and record_ok(0, 1514, 65535)
    assert not record_ok(70_000, 70_000, 65535)  # past the limit
    assert not record_ok(60, 59, 65535)  # more captured than was on the wire
    assert not record_ok(0, 0, 65535)  # no packet is 0 bytes: a zero-filled hole


_GOOD: dict[bool, bytes] = {}


def _good(tmp: Path, ng: bool) -> bytes:
    """A valid capture of four connections (pcap or pcapng), written once."""
    if ng not in _GOOD:
        _GOOD[ng] = write(tmp / "good.cap", sessions(4), ng=ng).read_bytes()
    return _GOOD[ng]


def _damage(data: bytearray, edits: list) -> bytes:
    for kind, where, what in edits:
        chunk = what if isinstance(what, bytes) else bytes(what)  # an int: a zero-filled hole
        pos = 24 + int(where * (len(data) - 24))
        if kind == "insert":
            data[pos:pos] = chunk
        else:
            data[pos : pos + len(chunk)] = chunk[: max(0, len(data) - pos)]
    return bytes(data)


damage = st.lists(
    st.tuples(
        st.sampled_from(["insert", "overwrite"]),
        st.floats(0, 1),
        st.one_of(st.binary(min_size=1, max_size=2000), st.integers(1, 5000)),
    ),
    min_size=1,
    max_size=4,
)


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(damage)
def test_random_damage_never_crashes_or_hangs(tmp_path: Path, edits: list) -> None:
    data = _damage(bytearray(_good(tmp_path, ng=False)), edits)
    path = tmp_path / "damaged.pcap"
    path.write_bytes(data)
    began = time.process_time()
    stats = PcapStats()
    with mapped(path) as mm:
        header = classic_header(path, mm)
        assert header is not None
        layout, size = header.layout, len(mm)
        resyncs = yielded = 0
        for _, _, _, start, end in frames(path, mm, stats):
            _sec, _frac, caplen, origlen = struct.unpack_from("<IIII", mm, start - 16)
            assert end <= size and record_ok(caplen, origlen, layout.read_limit)
            if stats.resyncs != resyncs:  # the record where reading resumed
                resyncs = stats.resyncs
                assert plausible_record(mm, start - 16, size, layout, None) == end
            yielded += 1
    assert stats.frames == yielded
    assert stats.skipped_bytes <= len(data) - 24
    replay_pcap(path)  # and the Ethernet loop of the flow logic
    ng = tmp_path / "damaged.pcapng"
    ng.write_bytes(_damage(bytearray(_good(tmp_path, ng=True)), edits))
    ng_stats = replay_pcap(ng).stats
    assert ng_stats.skipped_bytes <= ng.stat().st_size
    assert time.process_time() - began < 5
