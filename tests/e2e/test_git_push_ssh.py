"""End to end: a real `git push` over ssh, the connection owned by the `ssh` that git runs.

The peer namespace runs its own `sshd` (a throwaway host key and authorized key, no
system configuration touched). git starts `ssh … git-receive-pack '<path>'` in the
repository's directory; the agent ties that ssh's flow to the repository and opens
exactly one `repository_push` incident.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.classify.test_repository import git
from tests.conftest import is_root
from tests.e2e.gitpush import agent_up, push, the_push_incident, weighty_repo
from tests.sensors.network.rig import Rig, free_port_in

SSHD = "/usr/sbin/sshd"
pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(SSHD).exists() or shutil.which("ssh-keygen") is None,
        reason="openssh-server not installed (scripts/system-deps.sh)",
    ),
]


def keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
        check=True,
        capture_output=True,
    )


@pytest.mark.skipif(not is_root(), reason="needs root: namespaces, sshd")
def test_ssh_push_is_one_incident(rig: Rig, tmp_path: Path, sender_agent: Any) -> None:
    repo, head = weighty_repo(tmp_path / "work")
    bare = tmp_path / "srv" / "motor-ctl.git"
    bare.parent.mkdir()
    git(bare.parent, "init", "-q", "--bare", bare.name)
    ssh_dir = tmp_path / "ssh"
    ssh_dir.mkdir(mode=0o700)
    keygen(ssh_dir / "host")
    keygen(ssh_dir / "client")
    (ssh_dir / "authorized_keys").write_text((ssh_dir / "client.pub").read_text())
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
    port = free_port_in(rig, rig.peer_ns)
    cfg_sshd = ssh_dir / "sshd_config"
    cfg_sshd.write_text(
        f"Port {port}\nListenAddress {rig.peer_v4}\nHostKey {ssh_dir / 'host'}\n"
        f"AuthorizedKeysFile {ssh_dir / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nStrictModes no\nUsePAM no\n"
        f"PidFile {ssh_dir / 'sshd.pid'}\n"
    )
    sshd = rig.exec(
        rig.peer_ns,
        SSHD,
        "-D",
        "-e",
        "-f",
        str(cfg_sshd),
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "sshd.log").open("wb"),
    )
    try:
        agent, db = agent_up(sender_agent, "lab-ws-ssh", "git.corp.example")
        ssh_cmd = (
            f"ssh -i {ssh_dir / 'client'} -o StrictHostKeyChecking=no "
            f"-o UserKnownHostsFile=/dev/null -o BatchMode=yes -p {port}"
        )
        url = f"ssh://root@{rig.peer_v4}:{port}{bare}"
        sshd_log = tmp_path / "sshd.log"
        push(
            rig,
            repo,
            url,
            env={"GIT_SSH_COMMAND": ssh_cmd},
            why=lambda: sshd_log.read_text(errors="replace"),
        )
        assert git(bare, "rev-parse", "main") == head

        rule_id, severity, title, evidence = the_push_incident(agent, db)
        assert rule_id == "rd-assets-repository-push" and severity == "high"
        pushed = f"ssh://{rig.peer_v4}:{port}{bare}"  # the user name is not kept
        assert title.startswith(f"repository motor-ctl ({pushed}, commit {head[:12]}"), title
        assert f"pushed to {rig.peer_v4} (US, foreign) by ssh" in title, title
        ev = json.loads(evidence)
        assert ev["repository"]["direction"] == "push" and ev["repository"]["root"] == str(repo)
        (flow,) = ev["flows"]
        assert flow["dst_port"] == port and flow["bytes_out"] > 100_000
    finally:
        sshd.terminate()
        sshd.wait(10)
