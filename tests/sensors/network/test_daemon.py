"""The network sensor inside `egress-agent run`: flows reach the store; without
CAP_NET_RAW the sensor is down with a reason while the agent keeps running."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from agent.config import Settings
from agent.sensors import SensorUnavailable
from agent.sensors.network import create
from tests.conftest import AgentProcess, cli, free_port, write_config
from tests.sensors.network.peers import Sink
from tests.sensors.network.rig import Rig


def _metric(url: str, name: str, labels: str) -> float | None:
    with urllib.request.urlopen(url, timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(f"{name}{{") and labels in line:
                return float(line.rsplit(" ", 1)[1])
    return None


def _wait(pred: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            v = pred()
        except OSError:
            v = None
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def _config(tmp_path: Path, interfaces: list[str], port: int) -> Path:
    return write_config(
        tmp_path / "agent.yaml",
        {
            "agent": {"state_dir": str(tmp_path / "state")},
            "metrics": {"listen": f"127.0.0.1:{port}"},
            "sensors": {"enabled": ["network"]},
            "network": {"interfaces": interfaces},
        },
    )


def test_no_interfaces_is_a_reason() -> None:
    with pytest.raises(SensorUnavailable, match="no interfaces configured"):
        create(type("Rt", (), {"settings": Settings()})())  # type: ignore[arg-type]


def test_bad_country_db_is_a_reason(tmp_path: Path) -> None:
    bad = tmp_path / "c.csv"
    bad.write_text("1.2.3.0/24,XYZ\n")
    s = Settings(network={"interfaces": ["lo"], "country_db": bad})  # type: ignore[arg-type]
    with pytest.raises(SensorUnavailable, match=r"c\.csv:1"):
        create(type("Rt", (), {"settings": s})())  # type: ignore[arg-type]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root + setpriv")
def test_without_cap_net_raw_the_sensor_is_down_and_the_agent_runs(tmp_path: Path) -> None:
    port = free_port()
    cfg = _config(tmp_path, ["lo"], port)
    agent = AgentProcess(
        cfg, prefix=("setpriv", "--bounding-set", "-net_raw", "--inh-caps", "-net_raw")
    )
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        up = _wait(lambda: _metric(url, "egress_agent_sensor_up", 'sensor="network"') is not None)
        assert up
        assert _metric(url, "egress_agent_sensor_up", 'sensor="network"') == 0
        status = json.loads(cli("status", "--json", config=cfg).stdout)
        assert "CAP_NET_RAW" in status["daemon"]["sensor_errors"]["network"]
        assert agent.proc.poll() is None
    finally:
        assert agent.stop(timeout=30) == 0, agent.stderr()


@pytest.mark.netns
def test_agent_in_the_sender_namespace_stores_exact_flows(rig: Rig, tmp_path: Path) -> None:
    port = free_port()
    cfg = _config(tmp_path, [rig.sender_if], port)
    agent = AgentProcess(cfg, prefix=rig.netns_exec(rig.sender_ns))
    sink = Sink()
    rig.run_in(rig.peer_ns, sink.serve)
    assert sink.ready.wait(5)
    url = f"http://127.0.0.1:{port}/metrics"

    def scrape(name: str, labels: str) -> float | None:
        with rig.sender():
            return _metric(url, name, labels)

    try:
        _wait(lambda: scrape("egress_agent_sensor_up", 'sensor="network"') == 1)
        with rig.sender():
            s = socket.socket()
        with s:
            s.connect((rig.peer_v4, sink.port))
            s.sendall(b"e" * 6_543_210)
            s.shutdown(socket.SHUT_WR)
            s.recv(1)
        _wait(lambda: scrape("egress_agent_flows_total", 'dest_class="internal"'))
        assert scrape("egress_agent_outbound_bytes_total", 'dest_class="internal"') == 6_543_210
    finally:
        assert agent.stop(timeout=30) == 0, agent.stderr()
        sink.stop()
    rows = [json.loads(x) for x in cli("events", "list", "--json", config=cfg).stdout.splitlines()]
    (flow,) = [r for r in rows if r.get("dst_port") == sink.port]
    assert flow["bytes_out"] == 6_543_210
