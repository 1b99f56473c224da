"""The flow table's Prometheus counters: outbound bytes counted as the kernel reports
them (not only at export) and once, by destination and by service category."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import REGISTRY

from agent.config import NetworkSection
from agent.events import Flow
from agent.sensors.network.flowstate import FlowKey
from agent.sensors.network.flowtable import FlowTable
from agent.sensors.network.packets import TCP_SYN, decode_ethernet
from agent.sensors.network.replay import destinations_from
from tests.sensors.network.test_flowtable import A, B, L, _table, _tcp
from tests.sensors.network.test_known_destinations import packets


def _outbound(dest_class: str, country: str) -> float:
    labels = {"dest_class": dest_class, "country": country}
    return REGISTRY.get_sample_value("egress_agent_outbound_bytes_total", labels) or 0.0


def _flows(dest_class: str, country: str, protocol: str) -> float:
    labels = {"dest_class": dest_class, "country": country, "protocol": protocol}
    return REGISTRY.get_sample_value("egress_agent_flows_total", labels) or 0.0


def test_a_long_upload_is_counted_while_it_runs_and_only_once() -> None:
    t, out = _table(is_local=lambda a: a in (A, L), count_metrics=True)
    key: FlowKey = (6, A, 40030, B, 443)
    before, flows_before = _outbound("unknown", "unknown"), _flows("unknown", "unknown", "tcp")
    t.packet(_tcp(A, 40030, B, 443, 100, TCP_SYN), 1.0, b"", 0)
    t.kernel_update(key, 1000, 0, 2.0)  # a dump while the upload runs
    assert _outbound("unknown", "unknown") - before == 1000 and out == []
    t.kernel_update(key, 1500, 0, 3.0, final=True)
    (f,) = out
    assert f.bytes_out == _outbound("unknown", "unknown") - before == 1500
    assert _flows("unknown", "unknown", "tcp") - flows_before == 1


def test_bytes_by_service_category_metric(tmp_path: Path) -> None:
    def sample(category: str) -> float:
        labels = {"category": category}
        return REGISTRY.get_sample_value("egress_agent_service_bytes_total", labels) or 0.0

    before = {c: sample(c) for c in ("cloud_storage", "code_hosting", "ai_assistant")}
    flows: list[Flow] = []
    table = FlowTable(flows.append, destinations_from(NetworkSection()), count_metrics=True)
    last = 0.0
    for pkt in packets(upload=14_000):
        raw = bytes(pkt)
        decoded = decode_ethernet(raw, 0, len(raw))
        assert decoded is not None
        last = float(pkt.time)
        table.packet(decoded, last, raw, len(raw))
    table.flush(last)
    sent = {f.sni: f.bytes_out for f in flows if f.sni}
    assert sample("cloud_storage") - before["cloud_storage"] == (
        sent["drive.google.com"] + sent["pan.baidu.com"]
    )
    assert sample("code_hosting") - before["code_hosting"] == sent["github.com"]
    assert sample("ai_assistant") - before["ai_assistant"] == sent["api.openai.com"]
