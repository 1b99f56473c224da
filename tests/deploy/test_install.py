"""deploy/install.sh and uninstall.sh, run for real into a staging root.

The install creates a real virtualenv (pip from the configured index), the user with
systemd-sysusers --root, the directories with systemd-tmpfiles --root, and the SQLite
store with `egress-agent db upgrade`; the staged agent is then run and checked.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, have

pytestmark = pytest.mark.slow
PREFIX = "/opt/egress-agent"


def sh(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        ["bash", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )
    assert res.returncode == 0, f"{args} exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
    return res


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if not have("python3"):
        pytest.skip("python3 is needed to build the virtualenv")
    r = tmp_path_factory.mktemp("root")
    sh("deploy/install.sh", "--root", str(r), "--with-fanotify")
    yield r


def staged(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The staged command, with the absolute paths of the staged config kept in the root."""
    env = {
        **os.environ,
        "EGRESS_AGENT_AGENT__STATE_DIR": str(root / "var/lib/egress-agent"),
        "EGRESS_AGENT_POLICIES__PATHS": json.dumps([str(root / "etc/egress-agent/policies.d")]),
    }
    env.pop("EGRESS_AGENT_CONFIG", None)
    return subprocess.run(
        [str(root / PREFIX.lstrip("/") / "venv/bin/egress-agent"),
         "--config", str(root / "etc/egress-agent/agent.yaml"), *args],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip


def test_layout(root: Path) -> None:
    for rel in (
        "etc/systemd/system/egress-agent.service",
        "etc/systemd/system/egress-agent.service.d/fanotify.conf",
        "etc/sysusers.d/egress-agent.conf",
        "etc/tmpfiles.d/egress-agent.conf",
        "etc/sysctl.d/90-egress-agent.conf",
        "etc/egress-agent/agent.yaml",
        "opt/egress-agent/app/agent/__init__.py",
        "opt/egress-agent/app/migrations/versions",
        "opt/egress-agent/app/policies/cn-export-catalogue.yaml",
        "opt/egress-agent/venv/bin/egress-agent",
        "var/lib/egress-agent/agent.db",
    ):
        assert (root / rel).exists(), rel
    assert (root / "etc/egress-agent/policies.d").is_dir()
    assert (root / "var/log/egress-agent/incidents").is_dir()
    assert os.readlink(root / "usr/local/bin/egress-agent") == f"{PREFIX}/venv/bin/egress-agent"
    assert not list((root / "opt/egress-agent/app").rglob("*.pyc")) or all(
        "__pycache__" in str(p) for p in (root / "opt/egress-agent/app").rglob("*.pyc")
    )
    # precompiled: ProtectSystem=strict leaves no chance to write bytecode later
    assert list((root / "opt/egress-agent/app/agent").glob("__pycache__/*.pyc"))


def test_user_and_directory_ownership(root: Path) -> None:
    passwd = (root / "etc/passwd").read_text()
    line = next(x for x in passwd.splitlines() if x.startswith("egress-agent:"))
    _name, _x, uid, gid, _gecos, home, shell = line.split(":")
    assert int(uid) < 1000 and home == "/var/lib/egress-agent" and shell.endswith("nologin")
    for rel in ("var/lib/egress-agent", "var/log/egress-agent", "var/log/egress-agent/incidents"):
        st = (root / rel).stat()
        assert (st.st_uid, st.st_gid) == (int(uid), int(gid)), rel
        assert stat.S_IMODE(st.st_mode) == 0o750, rel
    cfg = (root / "etc/egress-agent/agent.yaml").stat()
    assert stat.S_IMODE(cfg.st_mode) == 0o640 and cfg.st_gid == int(gid)
    if os.geteuid() == 0:
        assert (root / "var/lib/egress-agent/agent.db").stat().st_uid == int(uid)


def test_installed_unit_points_at_the_venv_and_verifies(root: Path, tmp_path: Path) -> None:
    unit = (root / "etc/systemd/system/egress-agent.service").read_text()
    assert (
        f"ExecStart={PREFIX}/venv/bin/egress-agent --config /etc/egress-agent/agent.yaml run"
        in unit
    )
    if not have("systemd-analyze"):
        pytest.skip("systemd-analyze not installed (Debian package systemd)")
    # verify checks that ExecStart exists: point it at the staged binary
    copy = tmp_path / "egress-agent.service"
    copy.write_text(unit.replace(PREFIX, str(root / PREFIX.lstrip("/"))))
    res = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_staged_agent_has_the_schema_and_the_shipped_packs(root: Path) -> None:
    status = staged(root, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["schema_revision"]
    packs = staged(root, "policy", "list")
    assert packs.returncode == 0, packs.stderr
    for pack in ("cn-export-catalogue", "us-ear"):
        assert pack in packs.stdout
    check = staged(root, "config", "check")
    assert check.returncode == 0, check.stderr


def test_example_config_is_valid_and_documented() -> None:
    from agent.config import load_settings

    s = load_settings(REPO / "deploy/agent.yaml")
    assert str(s.state_dir) == "/var/lib/egress-agent"
    assert s.metrics.host == "127.0.0.1"  # local by default
    doc = yaml.safe_load((REPO / "deploy/agent.yaml").read_text())
    reference = (REPO / "README.md").read_text()
    for section in ("metrics", "jobs"):  # the sections this area owns
        for key in doc[section]:
            assert f"`{section}.{key}`" in reference or f"{section}.{key}`" in reference, (
                f"{section}.{key} is not in README.md"
            )


def test_reinstall_keeps_an_edited_config_and_uninstall_keeps_evidence(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    r = tmp_path_factory.mktemp("reinstall")
    sh("deploy/install.sh", "--root", str(r), "--no-db-upgrade")
    cfg = r / "etc/egress-agent/agent.yaml"
    cfg.write_text(cfg.read_text() + "\n# edited by the admin\n")
    (r / "var/lib/egress-agent/agent.db").write_bytes(b"evidence")
    kept = r / "opt/egress-agent/venv/kept"  # an upgrade with the same interpreter keeps
    kept.touch()  # the venv (pip updates it), also when python3 is a pyenv shim
    sh("deploy/install.sh", "--root", str(r), "--no-db-upgrade")
    assert kept.exists()
    assert cfg.read_text().endswith("# edited by the admin\n")
    assert (r / "etc/egress-agent/agent.yaml.dist").exists()
    assert not (r / "etc/systemd/system/egress-agent.service.d/fanotify.conf").exists()

    sh("deploy/uninstall.sh", "--root", str(r))
    assert not (r / "opt/egress-agent").exists()
    assert not (r / "etc/systemd/system/egress-agent.service").exists()
    assert not (r / "usr/local/bin/egress-agent").exists()
    assert cfg.exists() and (r / "var/lib/egress-agent/agent.db").read_bytes() == b"evidence"

    sh("deploy/uninstall.sh", "--root", str(r), "--purge")
    assert not (r / "etc/egress-agent").exists()
    assert not (r / "var/lib/egress-agent").exists()
    assert "egress-agent:" not in (r / "etc/passwd").read_text()


def test_install_refuses_a_relative_prefix(tmp_path: Path) -> None:
    res = subprocess.run(
        ["bash", "deploy/install.sh", "--root", str(tmp_path), "--prefix", "opt/x"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode != 0 and "absolute" in res.stderr
    assert not any(tmp_path.iterdir()) or not (tmp_path / "opt").exists()


def test_scripts_have_no_syntax_errors() -> None:
    for script in ("deploy/install.sh", "deploy/uninstall.sh"):
        subprocess.run(["bash", "-n", script], cwd=REPO, check=True)
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", "deploy/install.sh", "deploy/uninstall.sh"], cwd=REPO,
                       check=True)  # fmt: skip


LIVE_SCRIPT = r"""
set -euo pipefail
# copy-on-write views of the directories the install writes to: the real ones stay as
# they are, and everything vanishes with this mount namespace
for d in /etc /opt /var /usr/local; do
  n="${d//\//_}"
  mkdir -p "$WORK/upper$n" "$WORK/work$n"
  mount -t overlay overlay -o "lowerdir=$d,upperdir=$WORK/upper$n,workdir=$WORK/work$n" "$d"
done
! id egress-agent 2>/dev/null
# an interpreter the service user cannot run (pyenv under /root here) is refused clearly
if [ -n "$PRIVATE_PY" ]; then
  if bash "$SRC/deploy/install.sh" --no-sysctl --python "$PRIVATE_PY" 2> "$WORK/refused"; then
    echo "installed with an unreadable interpreter"; exit 1
  fi
fi
bash "$SRC/deploy/install.sh" --no-sysctl --python "$PY"
echo "--- checks"
id -u egress-agent
stat -c 'db %U:%G %a' /var/lib/egress-agent/agent.db
stat -c 'state %U:%G %a' /var/lib/egress-agent
stat -c 'config %U:%G %a' /etc/egress-agent/agent.yaml
runuser -u egress-agent -- /usr/local/bin/egress-agent --config /etc/egress-agent/agent.yaml \
  status --json > "$WORK/status.json"
runuser -u egress-agent -- /usr/local/bin/egress-agent --config /etc/egress-agent/agent.yaml \
  policy check > "$WORK/policy.txt"
bash "$SRC/deploy/uninstall.sh" --purge
if id egress-agent 2>/dev/null; then echo "user still there"; exit 1; fi
[ ! -e /opt/egress-agent ] && [ ! -e /etc/egress-agent ] && [ ! -e /var/lib/egress-agent ]
echo "--- purged"
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or not have("unshare"),
    reason="needs root and unshare (util-linux) for a private mount namespace",
)
def test_live_install_and_purge_in_a_private_mount_namespace(tmp_path: Path) -> None:
    """install.sh onto `/` (not a staging root): the live branch — runuser, chown, the
    real sysusers and tmpfiles — run in a mount namespace whose /etc, /opt, /var and
    /usr/local are overlays, so this machine is left untouched."""
    system_py = "/usr/bin/python3"
    if not os.access(system_py, os.X_OK):
        pytest.skip("no /usr/bin/python3 for the service user to run")
    # this checkout's interpreter, if it lives where other users cannot read it
    private = Path(sys.base_prefix)
    private_py = str(private / "bin" / "python3") if not _world_readable(private) else ""
    res = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "bash", "-c", LIVE_SCRIPT],
        env={
            **os.environ,
            "SRC": str(REPO),
            "WORK": str(tmp_path),
            "PY": system_py,
            "PRIVATE_PY": private_py,
        },
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout
    assert "db egress-agent:egress-agent" in out
    assert "state egress-agent:egress-agent 750" in out
    assert "config root:egress-agent 640" in out
    assert "--- purged" in out
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["schema_revision"] and status["store_reachable"]
    assert not Path("/opt/egress-agent").exists() and not Path("/etc/egress-agent").exists()
    if private_py:
        assert "Re-run with --python /usr/bin/python3" in (tmp_path / "refused").read_text()


def _world_readable(path: Path) -> bool:
    """Whether every directory from / down to `path` lets other users through."""
    return all(p.stat().st_mode & 0o001 for p in [path, *path.parents])
