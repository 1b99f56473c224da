"""The running daemon (no namespaces needed): a checkpoint copied onto a "removable" root
opens a removable_copy incident; metrics count it; a clean stop seals the chain."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import cli, eventually, store_rows

for _component in ("agent.sensors.files.sensor", "agent.classify.stage", "agent.policy.stage"):
    pytest.importorskip(_component, reason=f"{_component} is not in this checkout")

from tests.incidents.helpers import safetensors, start_under_site_pack  # noqa: E402


def _incidents(db: Path) -> list[tuple[Any, ...]]:
    return store_rows(db, "SELECT kind, rule_id, events_count FROM incidents")


@pytest.mark.slow
def test_daemon_opens_a_removable_copy_incident(
    tmp_path: Path, agent_config: dict[str, Any], run_agent: Any, usb: Path
) -> None:
    agent, exports = start_under_site_pack(run_agent, agent_config, tmp_path)
    before = agent.metric(
        "egress_agent_incidents_opened_total",
        {"rule": "us-ear-model-weights-copied-out", "severity": "high"},
    )
    # the genesis record is written by the correlator's thread soon after start
    assert eventually(
        lambda: (agent.metric("egress_agent_chain_checkpoint_timestamp_seconds") or 0) > 0
    )

    safetensors(usb / "model.safetensors", rows=64, cols=64)
    db = Path(agent_config["agent"]["state_dir"]) / "agent.db"
    rows = eventually(lambda: _incidents(db))
    assert rows and rows[0][:2] == ("removable_copy", "us-ear-model-weights-copied-out"), (
        agent.stderr()
    )
    labels = {"rule": "us-ear-model-weights-copied-out", "severity": "high"}
    assert eventually(
        lambda: (agent.metric("egress_agent_incidents_opened_total", labels) or 0) > 0
    )
    assert (agent.metric("egress_agent_incidents_opened_total", labels) or 0) == (before or 0) + 1
    assert (agent.metric("egress_agent_incidents_open", {"severity": "high"}) or 0) == 1
    # the scheduled export picks the new records up
    assert eventually(lambda: exports.exists() and any(exports.glob("*.ecs.jsonl")))
    # the chain head is published: gauges now, the journal line and anchor file at stop
    assert eventually(lambda: (agent.metric("egress_agent_incident_chain_head_seq") or 0) >= 1)
    assert agent.stop() == 0
    assert "incident chain head seq=" in agent.stderr()

    with sqlite3.connect(db) as c:
        types = [t for (t,) in c.execute("SELECT record_type FROM incident_chain ORDER BY seq")]
    assert types[0] == "genesis" and types[-1] == "checkpoint" and "incident" in types
    res = json.loads(cli("incidents", "verify", "--json", config=agent.config_path).stdout)
    assert res["ok"] and res["unsealed_records"] == {next(iter(res["unsealed_records"])): 0}
    for f in exports.iterdir():
        out = cli("incidents", "verify", "--file", str(f), "--json", config=agent.config_path)
        assert json.loads(out.stdout)["ok"], f
        assert json.loads(out.stdout)["signature"].startswith("verified"), f
    anchor = json.loads((db.parent / "incident-chain-anchor.json").read_text())
    assert anchor["seq"] == len(types) - 1
    with sqlite3.connect(db) as c:  # cut the clean-stop checkpoint off the tail
        c.execute("DELETE FROM incident_chain WHERE seq = ?", (anchor["seq"],))
    cut = cli("incidents", "verify", config=agent.config_path, check=False)
    assert cut.returncode == 1 and "its tail was cut off" in cut.stderr, cut.stderr


@pytest.mark.slow
def test_daemon_by_default_opens_an_rd_assets_incident_for_a_checkpoint_on_usb(
    tmp_path: Path, agent_config: dict[str, Any], run_agent: Any, usb: Path
) -> None:
    """No site pack, no threshold in the config: the shipped rd-assets pack decides."""
    agent = run_agent(agent_config)
    agent.wait_metrics()
    safetensors(usb / "encoder.safetensors", rows=384, cols=1024)  # 3.9e5 parameters
    db = Path(agent_config["agent"]["state_dir"]) / "agent.db"
    rows = eventually(lambda: _incidents(db))
    assert rows and rows[0][:2] == ("removable_copy", "rd-assets-model-weights-out"), agent.stderr()
    labels = {"rule": "rd-assets-model-weights-out", "severity": "medium"}
    assert eventually(
        lambda: (agent.metric("egress_agent_incidents_opened_total", labels) or 0) > 0
    )
    assert agent.stop() == 0
