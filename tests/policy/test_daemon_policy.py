"""The running agent: decisions on real file events, SIGHUP and file-change reloads that
keep the last good policy, the reload metrics, and the policy_versions table."""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import eventually, store_rows
from tests.policy.makefiles import RARE_EARTH_ZH, make_docx
from tests.policy.sitepacks import lab_pack


def _site(version: str) -> str:
    return lab_pack(version, "site-any-document-usb", "document", "document")


def _decisions(db: Path) -> list[tuple[Any, ...]]:
    return store_rows(db, "SELECT rule_id, pack, categories, policy_version FROM decisions")


@pytest.mark.slow
def test_agent_decides_and_reloads(
    tmp_path: Path, agent_config: dict[str, Any], run_agent: Any, usb: Path
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    pack = site / "lab.yaml"
    pack.write_text(_site("1"))
    state = Path(agent_config["agent"]["state_dir"])
    agent_config["policies"] = {"paths": [str(site)], "watch_interval": 0.2}
    agent = run_agent(agent_config)
    agent.wait_metrics()
    assert eventually(lambda: agent.metric("egress_agent_policy_last_reload_success") == 1)

    # a Chinese rare-earth process document copied onto the "USB stick"
    make_docx(usb / "萃取工艺.docx", RARE_EARTH_ZH)
    db = state / "agent.db"
    rows = eventually(lambda: [r for r in _decisions(db) if r[0] == "cn-cat-prohibited-removable"])
    assert rows, agent.stderr()
    _rule, packname, cats, version = rows[0]
    assert packname == "cn-export-catalogue" and json.loads(cats) == ["CN-CAT-RE-REFINING"]
    labels = {"rule": "cn-cat-prohibited-removable", "severity": "critical", "dest_class": ""}
    assert (agent.metric("egress_agent_decisions_total", labels) or 0) >= 1
    assert {r[0] for r in _decisions(db)} >= {"site-any-document-usb"}

    # a broken pack and SIGHUP: the reload fails, the previous policy stays in force
    pack.write_text(_site("2").replace("action: record", "action: shred"))
    agent.proc.send_signal(signal.SIGHUP)
    assert eventually(lambda: agent.metric("egress_agent_policy_last_reload_success") == 0)
    assert agent.policy_reloads("failure") >= 1
    # (the watcher may first see the file half-written; wait for the final error)
    status = eventually(lambda: _status_policy(state, "lab.yaml:16:"))
    assert status, _status_policy(state, "")
    assert status["version"] == version and not status["last_reload_ok"]
    assert any("action" in e for e in status["errors"])
    make_docx(usb / "second.docx", RARE_EARTH_ZH)
    assert eventually(
        lambda: len([r for r in _decisions(db) if r[0] == "cn-cat-prohibited-removable"]) >= 2
    )
    assert all(r[3] == version for r in _decisions(db))

    # fixed: the file watcher reloads it without a signal, and a new version is recorded
    pack.write_text(_site("3"))
    assert eventually(lambda: agent.metric("egress_agent_policy_last_reload_success") == 1)
    with sqlite3.connect(db) as c:
        versions = {v for (v,) in c.execute("SELECT version FROM policy_versions")}
    assert version in versions and len(versions) == 2
    assert agent.stop() == 0


def _status_policy(state: Path, error: str) -> dict[str, Any] | None:
    try:
        doc = json.loads((state / "status.json").read_text())
    except (OSError, ValueError):
        return None
    policy = doc.get("policy")
    if not policy or policy.get("last_reload_ok", True):
        return None
    return policy if any(error in e for e in policy["errors"]) else None
