"""End to end: a real `git push` over git:// leaves the host, and the agent names the repository.

The real agent runs in the sender namespace of a two-namespace rig; the peer runs
`git daemon` with two bare repositories, `corp/` (an approved remote,
`network.approved_git_remotes`) and `personal/`, at an address configured as foreign. A
push of a 30-file repository to the approved remote opens nothing; the same push to the
personal remote opens exactly one `repository_push` incident naming the repository, its
commit and the destination.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.classify.test_repository import GIT_ENV, git
from tests.conftest import is_root, store_rows, wait_until
from tests.e2e.gitpush import agent_up, push, the_push_incident, weighty_repo
from tests.sensors.network.rig import Rig, free_port_in

pytestmark = [pytest.mark.netns, pytest.mark.slow]


@pytest.mark.skipif(not is_root(), reason="needs root: namespaces, sock_diag")
def test_git_push_is_one_incident_unless_approved(
    rig: Rig, tmp_path: Path, sender_agent: Any
) -> None:
    repo, head = weighty_repo(tmp_path / "work")
    srv = tmp_path / "srv"
    for sub in ("corp", "personal"):
        (srv / sub).mkdir(parents=True)
        git(srv / sub, "init", "-q", "--bare", "motor-ctl.git")
    port = free_port_in(rig, rig.peer_ns)
    daemon = rig.exec(
        rig.peer_ns,
        "git",
        "daemon",
        "--reuseaddr",
        "--export-all",
        "--enable=receive-pack",
        f"--base-path={srv}",
        f"--listen={rig.peer_v4}",
        f"--port={port}",
        str(srv),
        env=GIT_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        approved = f"git://{rig.peer_v4}:{port}/corp/"
        agent, db = agent_up(sender_agent, "lab-ws-git", approved)
        push(rig, repo, f"{approved}motor-ctl.git")
        wait_until(
            lambda: store_rows(db, "SELECT 1 FROM flows WHERE dst_port = ?", port),
            "the approved push's flow",
            why=agent.stderr,
        )
        push(rig, repo, f"git://{rig.peer_v4}:{port}/personal/motor-ctl.git")

        rule_id, severity, title, evidence = the_push_incident(agent, db)
        assert rule_id == "rd-assets-repository-push" and severity == "high"
        assert title.startswith("repository motor-ctl (git://"), title
        assert "/personal/motor-ctl.git" in title and head[:12] in title
        assert f"{rig.peer_v4} (US, foreign)" in title and "by git" in title
        ev = json.loads(evidence)
        assert ev["repository"]["commit"] == head and ev["repository"]["root"] == str(repo)
        assert ev["repository"]["files_count"] == 62 and ev["repository"]["approved"] is False
        (flow,) = ev["flows"]
        assert flow["dst_port"] == port and flow["bytes_out"] > 100_000
        assert len(store_rows(db, "SELECT 1 FROM flows WHERE dst_port = ?", port)) >= 2
        assert not store_rows(db, "SELECT 1 FROM incidents WHERE title LIKE '%/corp/%'")
    finally:
        daemon.terminate()
        daemon.wait(10)
