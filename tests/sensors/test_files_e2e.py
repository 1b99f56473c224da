"""End to end: `egress-agent run` with the file sensor records every written file in the
store, visible through `egress-agent events list --json`, and exports the metrics."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.conftest import cli


def _written(config: Path) -> list[dict]:
    res = cli("events", "list", "--kind", "written", "--limit", "5000", "--json", config=config)
    return [json.loads(line) for line in res.stdout.splitlines() if line.strip()]


def test_agent_records_written_events_in_the_store(tmp_path, agent_config, run_agent):
    root = tmp_path / "watched"
    root.mkdir()
    agent_config["sensors"] = {"enabled": ["files"]}
    agent_config["files"] = {"roots": [str(root)], "follow_mounts": False}
    agent = run_agent(agent_config)
    agent.wait_metrics()
    deadline = time.monotonic() + 20
    while agent.metric("egress_agent_sensor_up", {"sensor": "files"}) != 1.0:
        assert time.monotonic() < deadline, agent.stderr()
        time.sleep(0.1)

    expected = set()
    for d in range(3):
        sub = root / f"batch{d}"
        sub.mkdir()
        for i in range(100):
            p = sub / f"f{i:03d}.txt"
            p.write_text("x" * i)
            expected.add(str(p))
    (root / "odd\nname.txt").write_text("odd")

    deadline = time.monotonic() + 30
    rows: list[dict] = []
    while time.monotonic() < deadline:
        rows = _written(agent.config_path)
        if len(rows) >= 301:
            break
        time.sleep(0.3)
    paths = [r["path"] for r in rows]
    assert set(paths) >= expected
    assert str(root / "odd\nname.txt") in paths
    assert len(paths) == len(set(paths)) == 301  # one written per file, none twice
    assert {r["channel"] for r in rows} == {"local"}
    assert (
        agent.metric("egress_agent_file_events_total", {"type": "written", "channel": "local"})
        == 301
    )
    assert agent.metric("egress_agent_file_watches") == 4
    status = json.loads(cli("status", "--json", config=agent.config_path).stdout)
    files = status["daemon"]["sensors"]["files"]
    assert files["up"] and files["roots"] == {str(root): "root"}
    assert files["process_attribution"].startswith(("fanotify", "off: "))
    # the inventory rescan job is scheduled (its first run, just after the start-up
    # rescan, finds nothing to do)
    job = {"job": "files_rescan", "result": "success"}
    deadline = time.monotonic() + 20
    while (agent.metric("egress_agent_job_runs_total", job) or 0) < 1:
        assert time.monotonic() < deadline, "the files_rescan job never ran"
        time.sleep(0.3)
    assert len(_written(agent.config_path)) == 301  # and reported nothing twice
    assert agent.stop() == 0
