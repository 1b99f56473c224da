"""The classify stage inside a real `egress-agent run`: every event passes through it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def test_daemon_runs_the_classify_stage(run_agent: Any, agent_config: dict[str, Any]) -> None:
    agent_config["sensors"] = {"enabled": ["synthetic"], "synthetic_count": 5}
    agent_config["classify"] = {"use_magika": False}
    agent = run_agent(agent_config)
    agent.wait_metrics()
    deadline = time.monotonic() + 30
    out = None
    while time.monotonic() < deadline:
        out = agent.metric("egress_agent_stage_events_out_total", {"stage": "classify"})
        if out == 5:
            break
        time.sleep(0.2)
    assert out == 5, agent.stderr()
    # synthetic paths do not exist: each is a counted skip, and nothing failed
    assert agent.metric("egress_agent_classify_skipped_total", {"reason": "vanished"}) == 5
    assert not agent.metric("egress_agent_stage_errors_total", {"stage": "classify"})
    status_file = Path(agent_config["agent"]["state_dir"]) / "status.json"
    while not status_file.exists() and time.monotonic() < deadline:  # written after start
        time.sleep(0.1)
    status = json.loads(status_file.read_text())
    assert status["classify"]["hash_cache"].endswith("hashcache.db")
    assert agent.stop() == 0
