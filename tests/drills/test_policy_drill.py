"""Fault drill: the policy file is replaced by garbage while the agent runs (issue 10).

The promise: the last good policy stays in force — `egress_agent_policy_last_reload_success`
goes to 0, the failure is counted, and a new file event is still decided by the old
policy (same rule, same policy version) — and a good file, when it returns, is taken
up without a restart. Real agent, real inotify, decisions read back from the store.
Run alone with `pytest -m drill`.
"""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_until
from tests.drills.test_file_drills import files_config

pytestmark = pytest.mark.drill

PACK = """
pack:
  id: drill-site
  name: Drill pack
  regime: SITE
  version: "{version}"
  required_engine_version: "1.0"
  description: Decides on every written *.drill file.
  sources:
    - title: fault drill
      ref: issue 10
rules:
  - id: {rule}
    description: a drill file was written
    condition:
      all:
        - {{field: event, eq: file}}
        - {{field: action, eq: written}}
        - {{field: path, glob: ["*.drill"]}}
    severity: {severity}
    effective_from: 2020-01-01
    action: alert
    tests:
      - name: a drill file
        facts: {{event: file, action: written, path: /x/a.drill}}
        expect: decision
      - name: another file
        facts: {{event: file, action: written, path: /x/a.txt}}
        expect: none
"""

GARBAGE = (
    b"pack: [\x00\xff{{{ this is : not : yaml\n\t- rules: !!python/object:os.system\n"
    + random.Random(1).randbytes(512)
)


def decision_for(cfg: dict[str, Any], path: Path) -> tuple[str, str, str] | None:
    db = Path(cfg["agent"]["state_dir"]) / "agent.db"
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        row = con.execute(
            "SELECT d.rule_id, d.policy_version, d.severity FROM decisions d "
            "JOIN file_events f ON f.uid = d.subject_uid WHERE f.path = ? AND f.action = 'written'",
            (str(path),),
        ).fetchone()
    except sqlite3.OperationalError:
        return None
    finally:
        con.close()
    return (str(row[0]), str(row[1]), str(row[2])) if row else None


def test_garbage_policy_keeps_the_last_good_one_and_recovers(
    tmp_path: Path, agent_config: dict[str, Any], run_agent: Any
) -> None:
    root = tmp_path / "watched"
    packs = tmp_path / "packs"
    packs.mkdir()
    pack = packs / "drill.yaml"
    pack.write_text(PACK.format(version="1", rule="drill-v1", severity="low"))
    cfg = files_config(agent_config, root)
    cfg["policies"] = {"builtin": False, "paths": [str(packs)], "watch_interval": 0.3}
    agent = run_agent(cfg)
    agent.wait_metrics()
    assert agent.metric("egress_agent_policy_last_reload_success") == 1
    wait_until(lambda: (agent.metric("egress_agent_file_watches") or 0) >= 1, "root watched", 20)

    first = root / "a.drill"
    first.write_text("one")
    rule, v1, sev = wait_until(
        lambda: decision_for(cfg, first), "decision under the good policy", 30
    )
    assert (rule, sev) == ("drill-v1", "low")

    failures = agent.policy_reloads("failure")
    pack.write_bytes(GARBAGE)
    wait_until(
        lambda: agent.metric("egress_agent_policy_last_reload_success") == 0,
        "the garbage refused",
        20,
    )
    assert agent.policy_reloads("failure") > failures
    second = root / "b.drill"
    second.write_text("two")
    decided = wait_until(
        lambda: decision_for(cfg, second), "decision while the file is garbage", 30
    )
    assert decided == ("drill-v1", v1, "low"), "the last good policy decided"
    assert agent.proc.poll() is None

    # an empty file and one cut in the middle of a rule are garbage too (a file cut right
    # before `rules:` is a valid pack with no rules: that is a policy, not garbage)
    good = PACK.format(version="1", rule="drill-v1", severity="low")
    for bad in (b"", good[: good.index("severity")].encode()):
        failures = agent.policy_reloads("failure")
        pack.write_bytes(bad)
        wait_until(lambda before=failures: agent.policy_reloads("failure") > before, "refused", 20)
    assert agent.metric("egress_agent_policy_last_reload_success") == 0

    pack.write_text(PACK.format(version="2", rule="drill-v2", severity="high"))
    wait_until(
        lambda: agent.metric("egress_agent_policy_last_reload_success") == 1,
        "good file taken up",
        20,
    )
    third = root / "c.drill"
    third.write_text("three")
    rule3, v2, sev3 = wait_until(
        lambda: decision_for(cfg, third), "decision under the new policy", 30
    )
    assert (rule3, sev3) == ("drill-v2", "high") and v2 != v1
    assert agent.stop() == 0
