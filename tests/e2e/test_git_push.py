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
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.classify.test_repository import GIT_ENV, git, make_repo
from tests.conftest import REPO, free_port, is_root
from tests.e2e.test_exfiltration import query, wait
from tests.sensors.network.rig import Rig, free_port_in, make_rig, unavailable_reason

pytestmark = [pytest.mark.netns, pytest.mark.slow]


@pytest.fixture
def rig() -> Iterator[Rig]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with make_rig() as r:
        yield r


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
def test_git_push_is_one_incident_unless_approved(rig: Rig, tmp_path: Path) -> None:
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
    agent = None
    try:
        state = tmp_path / "state"
        countries = tmp_path / "countries.csv"
        countries.write_text(f"network,country\n{rig.peer_v4}/32,US\n")
        approved = f"git://{rig.peer_v4}:{port}/corp/"
        cfg = tmp_path / "agent.yaml"
        cfg.write_text(
            yaml.safe_dump(
                {
                    "agent": {"state_dir": str(state), "hostname": "lab-ws-git"},
                    "metrics": {"listen": f"127.0.0.1:{free_port()}"},
                    "sensors": {"enabled": ["network"]},
                    "network": {
                        "interfaces": [rig.sender_if],
                        "internal_networks": ["192.168.0.0/16"],
                        "foreign_networks": [f"{rig.peer_v4}/32"],
                        "country_db": str(countries),
                        "approved_git_remotes": [approved],
                    },
                    "classify": {"use_magika": False},
                }
            )
        )
        stderr = (tmp_path / "agent.stderr").open("wb")
        agent = rig.exec(
            rig.sender_ns,
            sys.executable,
            "-m",
            "agent",
            "--config",
            str(cfg),
            "run",
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )

        def diag() -> str:
            stderr.flush()
            return (tmp_path / "agent.stderr").read_text(errors="replace")[-6000:]

        def status() -> dict[str, Any]:
            try:
                return dict(json.loads((state / "status.json").read_text()))
            except (OSError, ValueError):
                return {}

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
        if agent is not None:
            agent.terminate()
            agent.wait(30)
        daemon.terminate()
        daemon.wait(10)
