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
import time
from pathlib import Path
from typing import Any

import pytest

from tests.classify.test_repository import GIT_ENV, git, make_repo
from tests.conftest import is_root
from tests.e2e.test_exfiltration import query, wait
from tests.sensors.network.rig import Rig, free_port_in

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def push(rig: Rig, repo: Path, url: str) -> None:
    p = rig.exec(
        rig.sender_ns,
        "git",
        "push",
        "-q",
        url,
        "main",
        cwd=repo,
        env=GIT_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err.decode(errors="replace")


@pytest.mark.skipif(not is_root(), reason="needs root: namespaces, sock_diag")
def test_git_push_is_one_incident_unless_approved(
    rig: Rig, tmp_path: Path, sender_agent: Any
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    repo = make_repo(work / "motor-ctl", files=30)
    for i in range(30):  # some weight, so the push is a real transfer (~600 KB)
        (repo / "src" / f"table_{i:02d}.py").write_text(
            "".join(f"K{i}_{j} = {j * 7919 % 104729}\n" for j in range(1500))
        )
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "tables")
    head = git(repo, "rev-parse", "HEAD")
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
        agent = sender_agent("lab-ws-git", network={"approved_git_remotes": [approved]})
        state = agent.state_dir
        diag, status = agent.stderr, agent.status

        wait(lambda: "network" in status().get("sensors", {}), "sensors", diag=diag)
        db = state / "agent.db"

        push(rig, repo, f"{approved}motor-ctl.git")
        wait(
            lambda: query(db, "SELECT 1 FROM flows WHERE dst_port = ?", port),
            "the approved push's flow",
            diag=diag,
        )
        push(rig, repo, f"git://{rig.peer_v4}:{port}/personal/motor-ctl.git")

        def pushes() -> list[tuple[Any, ...]]:
            return query(
                db,
                "SELECT kind, rule_id, severity, title, evidence FROM incidents "
                "WHERE kind = 'repository_push'",
            )

        wait(
            pushes,
            "the repository_push incident",
            timeout=45,
            diag=lambda: diag() + json.dumps(query(db, "SELECT * FROM flows"), default=str),
        )
        time.sleep(2)  # anything else it would (wrongly) open comes now
        rows = pushes()
        assert len(rows) == 1, rows
        _kind, rule_id, severity, title, evidence = rows[0]
        assert rule_id == "rd-assets-repository-push" and severity == "high"
        assert title.startswith("repository motor-ctl (git://"), title
        assert "/personal/motor-ctl.git" in title and head[:12] in title
        assert f"{rig.peer_v4} (US, foreign)" in title and "by git" in title
        ev = json.loads(evidence)
        assert ev["repository"]["commit"] == head and ev["repository"]["root"] == str(repo)
        assert ev["repository"]["files_count"] == 62 and ev["repository"]["approved"] is False
        (flow,) = ev["flows"]
        assert flow["dst_port"] == port and flow["bytes_out"] > 100_000
        assert len(query(db, "SELECT 1 FROM flows WHERE dst_port = ?", port)) >= 2
        assert not query(db, "SELECT 1 FROM incidents WHERE title LIKE '%/corp/%'")
    finally:
        daemon.terminate()
        daemon.wait(10)
