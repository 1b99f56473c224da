"""The end-to-end tests' agent: `egress-agent run` inside the rig's sender namespace."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import AgentProcess, free_port, write_config
from tests.sensors.network.rig import Rig


@pytest.fixture
def sender_agent(rig: Rig, tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    """`sender_agent(hostname, sensors=("network",), network={...}, **sections)` starts
    the agent in the sender namespace: state in tmp_path/state, the network sensor on
    the veth, the peer's address foreign (country US from an offline table), magika off;
    `network` adds to that section, `sections` add top-level ones. A running agent is
    stopped at teardown (SIGTERM, then kill), before the rig goes."""
    started: list[AgentProcess] = []

    def start(
        hostname: str,
        sensors: Sequence[str] = ("network",),
        network: dict[str, Any] | None = None,
        **sections: Any,
    ) -> AgentProcess:
        countries = tmp_path / "countries.csv"
        countries.write_text(f"network,country\n{rig.peer_v4}/32,US\n")
        doc = {
            "agent": {"state_dir": str(tmp_path / "state"), "hostname": hostname},
            "metrics": {"listen": f"127.0.0.1:{free_port()}"},
            "sensors": {"enabled": list(sensors)},
            "network": {
                "interfaces": [rig.sender_if],
                "internal_networks": ["192.168.0.0/16"],
                "foreign_networks": [f"{rig.peer_v4}/32"],
                "country_db": str(countries),
                **(network or {}),
            },
            "classify": {"use_magika": False},
            **sections,
        }
        cfg = write_config(tmp_path / "agent.yaml", doc)
        agent = AgentProcess(cfg, prefix=rig.netns_exec(rig.sender_ns))
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop_or_kill()
