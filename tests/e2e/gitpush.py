"""What the three `git push` end-to-end tests share (git://, HTTPS, ssh): the repository
that is pushed, the agent in the sender namespace, the push itself, and the one
`repository_push` incident each expects. Only the server and the transport differ."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.classify.test_repository import GIT_ENV, git, make_repo
from tests.conftest import store_rows, wait_until
from tests.sensors.network.rig import Rig


def weighty_repo(work: Path) -> tuple[Path, str]:
    """A 30-file repository with some weight, so its push is a real transfer (~600 KB);
    returns it and its HEAD commit."""
    work.mkdir()
    repo = make_repo(work / "motor-ctl", files=30)
    for i in range(30):
        (repo / "src" / f"table_{i:02d}.py").write_text(
            "".join(f"K{i}_{j} = {j * 7919 % 104729}\n" for j in range(1500))
        )
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "tables")
    return repo, git(repo, "rev-parse", "HEAD")


def agent_up(sender_agent: Any, host: str, approved: str) -> tuple[Any, Path]:
    """The agent on the sender side, `approved` its one approved git remote, once its
    network sensor runs; returns it and its SQLite store."""
    agent = sender_agent(host, network={"approved_git_remotes": [approved]})
    wait_until(lambda: "network" in agent.status().get("sensors", {}), "sensors", why=agent.stderr)
    return agent, agent.state_dir / "agent.db"


def push(
    rig: Rig,
    repo: Path,
    url: str,
    *git_config: str,
    env: dict[str, str] | None = None,
    why: Callable[[], str] = str,
) -> None:
    """`git push -q url main` from the sender namespace, with `-c` options `git_config`;
    a failed push shows git's stderr and `why()` (a server log)."""
    options = [arg for option in git_config for arg in ("-c", option)]
    p = rig.exec(
        rig.sender_ns,
        "git",
        *options,
        "push",
        "-q",
        url,
        "main",
        cwd=repo,
        env={**GIT_ENV, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err.decode(errors="replace") + why()


def the_push_incident(agent: Any, db: Path) -> tuple[Any, ...]:
    """The `repository_push` incident's (rule_id, severity, title, evidence), after
    checking that it is the only one, also two seconds on (when a wrong second would
    have come)."""

    def pushes() -> list[tuple[Any, ...]]:
        return store_rows(
            db,
            "SELECT rule_id, severity, title, evidence FROM incidents "
            "WHERE kind = 'repository_push'",
        )

    wait_until(
        pushes,
        "the repository_push incident",
        45,
        why=lambda: agent.stderr() + json.dumps(store_rows(db, "SELECT * FROM flows"), default=str),
    )
    time.sleep(2)
    rows = pushes()
    assert len(rows) == 1, rows
    return rows[0]
