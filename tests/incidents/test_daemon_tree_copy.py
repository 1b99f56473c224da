"""The running daemon: `cp -r` of a 500-file repository onto a removable root is exactly one
tree_copy incident listing the 500 files (no namespaces needed)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.classify.test_repository import git, make_repo
from tests.conftest import store_rows, wait_until


def _incidents(db: Path) -> list[tuple[Any, ...]]:
    return store_rows(
        db, "SELECT kind, rule_id, severity, events_count, title, evidence FROM incidents"
    )


@pytest.mark.slow
def test_cp_r_of_a_repository_onto_usb_is_one_incident(
    tmp_path: Path, agent_config: dict[str, Any], run_agent: Any, usb: Path
) -> None:
    repo = make_repo(tmp_path / "src" / "motor-ctl", files=498)  # 500 files with drive.c, README
    agent = run_agent(agent_config)
    agent.wait_metrics()
    db = Path(agent_config["agent"]["state_dir"]) / "agent.db"
    subprocess.run(["cp", "-r", str(repo), str(usb)], check=True)
    wait_until(
        lambda: [r for r in _incidents(db) if r[0] == "tree_copy"],
        "a tree_copy incident",
        120,
        interval=0.5,
        why=lambda: agent.stderr()[-4000:],
    )
    time.sleep(2)  # anything else it would (wrongly) open comes now
    everything = _incidents(db)
    assert len(everything) == 1, [r[:5] for r in everything]
    kind, rule_id, severity, events, title, evidence = everything[0]
    assert (kind, rule_id, severity) == ("tree_copy", "rd-assets-tree-out-large", "high")
    tree = json.loads(evidence)["tree"]
    assert events == 500 and tree["files_count"] == 500 and len(tree["paths"]) == 500
    assert tree["root"] == str(usb / "motor-ctl")
    assert tree["repository"]["commit"] == git(repo, "rev-parse", "HEAD")
    assert title.startswith("tree motor-ctl (500 files, "), title
    assert agent.stop() == 0
    assert "Traceback" not in agent.stderr(), agent.stderr()[-4000:]
