"""The flow table is bounded (`network.max_flows`): a flood of distinct flows costs
bounded memory, and every flow pushed out is exported ("evicted"), counted, never lost."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import REGISTRY

from agent.config import NetworkSection
from agent.events import Flow
from agent.sensors.network.flowtable import EVICTED, FlowTable
from agent.sensors.network.packets import Packet
from agent.sensors.network.replay import replay_pcap
from bench.udp_flows import make_pcap
from tests.conftest import cli, write_config

A = b"\x0a\x00\x00\x01"


def _udp(i: int, n: int = 10) -> Packet:
    dst = bytes([198, 18, i >> 8 & 0xFF, i & 0xFF])
    return Packet(17, A, dst, 20000 + i % 40000, 53, 0, 0, 0, 0, n)


def _table(max_flows: int, count_metrics: bool = False) -> tuple[FlowTable, list[Flow]]:
    out: list[Flow] = []
    return FlowTable(out.append, max_flows=max_flows, count_metrics=count_metrics), out


def evicted_metric() -> float:
    return REGISTRY.get_sample_value("egress_agent_flows_evicted_total") or 0.0


def test_a_flood_of_distinct_flows_stays_within_the_bound_and_loses_none() -> None:
    t, out = _table(64)
    for i in range(1000):
        t.packet(_udp(i, n=i + 1), 1.0 + i * 0.001, b"", 0)
        assert len(t.flows) <= 64
        assert len(t.reverse) <= 64
    t.flush(10.0)
    assert len(out) == 1000
    assert sum(f.bytes_out for f in out) == sum(range(1, 1001))
    evicted = [f for f in out if f.close_reason == EVICTED]
    assert len(evicted) == t.evicted > 0
    # the longest idle go first: every evicted flow is older than every one still open
    last_open = [f for f in out if f.close_reason == "end_of_capture"]
    assert max(f.end for f in evicted) <= min(f.start for f in last_open)


def test_a_busy_flow_is_not_evicted_by_the_flood() -> None:
    t, out = _table(32)
    busy = Packet(17, A, b"\xcb\x00\x71\x07", 5555, 443, 0, 0, 0, 0, 100)
    for i in range(500):
        t.packet(_udp(i), 1.0 + i * 0.01, b"", 0)
        t.packet(busy, 1.0 + i * 0.01, b"", 0)
    t.flush(20.0)
    mine = [f for f in out if f.dst_port == 443]
    assert [(f.bytes_out, f.close_reason) for f in mine] == [(50_000, "end_of_capture")]


def test_evictions_are_counted_in_the_metric() -> None:
    t, _out = _table(16, count_metrics=True)
    before = evicted_metric()
    for i in range(100):
        t.packet(_udp(i), 1.0 + i, b"", 0)
    assert t.evicted > 0
    assert evicted_metric() - before == t.evicted


def test_replay_of_many_distinct_udp_flows_reports_each_one(tmp_path: Path) -> None:
    pcap = tmp_path / "flood.pcap"
    make_pcap(pcap, 5000, pps=1000)
    result = replay_pcap(pcap, NetworkSection(max_flows=256))
    assert len(result.flows) == 5000
    assert len({(f.dst_ip, f.dst_port, f.src_port) for f in result.flows}) == 5000
    assert result.evicted == sum(f.close_reason == EVICTED for f in result.flows) > 0
    cfg = write_config(
        tmp_path / "agent.yaml",
        {"agent": {"state_dir": str(tmp_path / "state")}, "network": {"max_flows": 256}},
    )
    res = cli("replay", str(pcap), config=cfg)
    assert "5000 flows from 5000 frames" in res.stderr
    assert f"({result.evicted} evicted: network.max_flows)" in res.stderr
