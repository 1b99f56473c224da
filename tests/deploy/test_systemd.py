"""The systemd unit and the daemon's side of its contract.

`systemd-analyze verify` and the offline `systemd-analyze security` score check the unit
itself. No systemd runs as PID 1 here, so the contract is checked the way systemd would
exercise it: the real agent runs as an unprivileged user with exactly the unit's
capabilities (setpriv: ambient set, bounding set, no_new_privs), a real NOTIFY_SOCKET
and WATCHDOG_USEC, and must send READY=1, WATCHDOG=1 every half interval and STOPPING=1,
with both sensors up and reading a root-only directory.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, free_port, have, wait_until

DEPLOY = REPO / "deploy"
UNIT = DEPLOY / "egress-agent.service"
FANOTIFY = DEPLOY / "egress-agent.service.d" / "fanotify.conf"
MAX_EXPOSURE = 3.5  # systemd-analyze security: "OK" ends at 4.9; we hold ourselves to this

needs_analyze = pytest.mark.skipif(
    not have("systemd-analyze"), reason="systemd-analyze not installed (Debian package systemd)"
)


def directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def runnable_unit(tmp_path: Path, with_fanotify: bool = False) -> Path:
    """The shipped unit with ExecStart pointed at this checkout's command (verify checks
    that it exists), and optionally the fanotify drop-in merged into [Service]."""
    text = UNIT.read_text().replace(
        "/opt/egress-agent/venv/bin/egress-agent", str(Path(sys.executable).parent / "egress-agent")
    )
    if with_fanotify:
        extra = [
            line
            for line in FANOTIFY.read_text().splitlines()
            if line and not line.startswith(("#", "["))
        ]
        text = text.replace("[Install]", "\n".join(extra) + "\n\n[Install]")
    path = tmp_path / "egress-agent.service"
    path.write_text(text)
    return path


def test_unit_has_the_contract_the_daemon_implements() -> None:
    d = directives(UNIT.read_text())
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert d["WatchdogSec"] and d["Restart"] == ["on-failure"]
    assert d["User"] == ["egress-agent"] and d["NoNewPrivileges"] == ["yes"]
    caps = {"CAP_NET_RAW", "CAP_NET_ADMIN", "CAP_DAC_READ_SEARCH", "CAP_SYS_PTRACE"}
    assert set(d["AmbientCapabilities"][0].split()) == caps
    assert set(d["CapabilityBoundingSet"][0].split()) == caps
    assert d["ProtectSystem"] == ["strict"] and d["ProtectHome"] == ["read-only"]
    assert set(d["RestrictAddressFamilies"][0].split()) == {
        "AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK", "AF_PACKET",
    }  # fmt: skip
    assert "@system-service" in d["SystemCallFilter"]
    assert d["SystemCallErrorNumber"] == ["EPERM"]  # a blocked call fails, never kills
    for key in ("StateDirectory", "ConfigurationDirectory", "LogsDirectory"):
        assert d[key] == ["egress-agent"]
    fan = directives(FANOTIFY.read_text())
    assert fan["AmbientCapabilities"] == ["CAP_SYS_ADMIN"]
    assert set(fan["SystemCallFilter"][0].split()) >= {"fanotify_init", "fanotify_mark"}


@needs_analyze
@pytest.mark.parametrize("with_fanotify", [False, True], ids=["base", "fanotify"])
def test_systemd_analyze_verify(tmp_path: Path, with_fanotify: bool) -> None:
    unit = runnable_unit(tmp_path, with_fanotify)
    res = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "egress-agent.service" not in res.stderr, res.stderr  # no warnings about it


def exposure(unit: Path) -> float:
    res = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", res.stdout + res.stderr)
    assert m, res.stdout + res.stderr
    return float(m.group(1))


@needs_analyze
def test_systemd_analyze_security_score(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "f").mkdir()
    base = exposure(runnable_unit(tmp_path / "b"))
    fan = exposure(runnable_unit(tmp_path / "f", with_fanotify=True))
    print(f"systemd-analyze security: base {base}, with fanotify drop-in {fan}")
    assert base <= MAX_EXPOSURE and fan <= MAX_EXPOSURE
    assert base <= fan


def test_sysctl_raises_the_inotify_limits() -> None:
    values = {}
    for line in (DEPLOY / "sysctl.d/90-egress-agent.conf").read_text().splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.partition("=")
            values[k.strip()] = int(v)
    assert values["fs.inotify.max_user_watches"] >= 524288
    assert values["fs.inotify.max_queued_events"] >= 65536
    assert values["fs.inotify.max_user_instances"] >= 512


# --- the daemon under the unit's privileges ---------------------------------------------
def unit_caps(*units: Path) -> str:
    caps = [
        c
        for u in units or (UNIT,)
        for c in directives(u.read_text())["AmbientCapabilities"][0].split()
    ]
    return ",".join("+" + c.removeprefix("CAP_").lower() for c in caps)


@pytest.fixture
def sandbox() -> Iterator[Path]:
    """A directory the unprivileged user can reach (pytest's tmp_path is root-only)."""
    d = Path(tempfile.mkdtemp(prefix="ea-unit-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


class Notifications:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        path.chmod(0o777)
        self.sock.settimeout(0.2)
        self.seen: list[tuple[float, str]] = []

    def wait_for(self, state: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            now = time.monotonic()
            for line in msg.splitlines():
                self.seen.append((now, line))
                if line == state:
                    return now
        raise AssertionError(f"no {state} within {timeout}s; got {self.seen}")

    def close(self) -> None:
        self.sock.close()


def run_as_service(
    sandbox: Path, caps: str | None, seccomp: Path | None = None, fanotify: str = "auto"
) -> tuple[subprocess.Popen[bytes], str, Path]:
    nobody = 65534
    state = sandbox / "state"
    state.mkdir()
    os.chown(state, nobody, nobody)
    watched = sandbox / "secret-lab"  # root-only: reading it takes CAP_DAC_READ_SEARCH
    watched.mkdir(mode=0o700)
    (watched / "existing.txt").write_text("already here\n")
    port = free_port()
    cfg = sandbox / "agent.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "agent": {"state_dir": str(state)},
                "metrics": {"listen": f"127.0.0.1:{port}"},
                "sensors": {"enabled": ["files", "network"]},
                "files": {"roots": [str(watched)], "follow_mounts": False, "fanotify": fanotify},
                "network": {"interfaces": ["lo"]},
            }
        )
    )
    cfg.chmod(0o644)
    setpriv = ["setpriv", f"--reuid={nobody}", f"--regid={nobody}", "--clear-groups"]
    if caps:
        setpriv += [f"--inh-caps={caps}", f"--ambient-caps={caps}", f"--bounding-set=-all,{caps}"]
    else:
        setpriv += ["--inh-caps=-all", "--bounding-set=-all"]
    setpriv += ["--no-new-privs", "--"]
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": "/nonexistent",
        "NOTIFY_SOCKET": str(sandbox / "notify.sock"),
        "WATCHDOG_USEC": "2000000",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    # the unit's SystemCallFilter, loaded by a wrapper that then execs the agent
    wrapper = [sys.executable, str(Path(__file__).with_name("seccomp_exec.py")), str(seccomp), "--"]
    proc = subprocess.Popen(
        [
            *setpriv,
            *(wrapper if seccomp else []),
            sys.executable,
            "-m",
            "agent",
            "--config",
            str(cfg),
            "run",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(sandbox / "stderr").open("wb"),
    )
    return proc, f"http://127.0.0.1:{port}/metrics", watched


@dataclass
class Service:
    proc: subprocess.Popen[bytes]
    url: str  # its metrics
    watched: Path  # the root-only directory its file sensor watches
    notes: Notifications  # what it told the NOTIFY_SOCKET

    def stop(self) -> None:
        """SIGTERM, as systemd stops it: the agent exits 0 within a minute."""
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=60) == 0


@contextmanager
def service(
    sandbox: Path, caps: str | None, seccomp: Path | None = None, fanotify: str = "auto"
) -> Iterator[Service]:
    """The agent run as the unit runs it (`run_as_service`), killed if a test left it running."""
    notes = Notifications(sandbox / "notify.sock")
    proc, url, watched = run_as_service(sandbox, caps, seccomp, fanotify)
    try:
        yield Service(proc, url, watched, notes)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notes.close()


def sample(url: str, name: str, **labels: str) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    total = None
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total = (total or 0.0) + s.value
    return total


needs_root_tools = pytest.mark.skipif(
    os.geteuid() != 0 or not have("setpriv"),
    reason="needs root and setpriv (util-linux) to drop to the service's user and capabilities",
)


@needs_root_tools
@pytest.mark.slow
def test_daemon_under_the_units_capabilities_speaks_sd_notify(sandbox: Path) -> None:
    with service(sandbox, unit_caps(), seccomp=UNIT) as agent:
        ready = agent.notes.wait_for("READY=1", timeout=60)
        status = Path(f"/proc/{agent.proc.pid}/status").read_text()
        assert re.search(r"^Uid:\s+65534\s", status, re.M), status
        eff = int(re.search(r"^CapEff:\s+([0-9a-f]+)", status, re.M).group(1), 16)  # type: ignore[union-attr]
        # CAP_DAC_READ_SEARCH=2, CAP_NET_ADMIN=12, CAP_NET_RAW=13, CAP_SYS_PTRACE=19
        assert eff == (1 << 2) | (1 << 12) | (1 << 13) | (1 << 19), hex(eff)
        pings = [agent.notes.wait_for("WATCHDOG=1", timeout=3) for _ in range(3)]
        # WATCHDOG_USEC=2s: systemd kills a service whose pings are 2 s apart; ours come ~1 s
        assert all(b - a < 2.0 for a, b in zip([ready, *pings], pings)), agent.notes.seen
        assert sample(agent.url, "egress_agent_sensor_up", sensor="files") == 1
        assert sample(agent.url, "egress_agent_sensor_up", sensor="network") == 1
        (agent.watched / "new-design.step").write_text("a file in a root-only directory\n")
        wait_until(
            lambda: sample(agent.url, "egress_agent_file_events_total"),
            "a file event",
            20,
            why=lambda: (sandbox / "stderr").read_text()[-3000:],
        )
        # classified under the unit's syscall filter (hashing, parsers, keyword matching)
        assert sample(agent.url, "egress_agent_artefacts_classified_total")
        assert "seccomp: " in (sandbox / "stderr").read_text()
        agent.proc.send_signal(signal.SIGTERM)
        agent.notes.wait_for("STOPPING=1", timeout=10)
        assert agent.proc.wait(timeout=60) == 0


@needs_root_tools
@pytest.mark.slow
def test_without_the_capabilities_the_network_sensor_is_down_not_the_agent(
    sandbox: Path,
) -> None:
    with service(sandbox, caps=None) as agent:
        agent.notes.wait_for("READY=1", timeout=60)
        assert sample(agent.url, "egress_agent_sensor_up", sensor="network") == 0
        agent.stop()


def file_events(sandbox: Path) -> list[tuple[str, str, int | None, str | None]]:
    with sqlite3.connect(sandbox / "state" / "agent.db") as c:
        return c.execute("SELECT action, path, pid, exe FROM file_events").fetchall()


@needs_root_tools
@pytest.mark.slow
def test_fanotify_drop_in_gives_file_events_their_process(sandbox: Path) -> None:
    """The base unit plus the drop-in: CAP_SYS_ADMIN and the fanotify calls let
    `files.fanotify: on` start, and a write by a shell carries that shell's pid."""
    merged = runnable_unit(sandbox, with_fanotify=True)
    with service(sandbox, unit_caps(UNIT, FANOTIFY), seccomp=merged, fanotify="on") as agent:
        agent.notes.wait_for("READY=1", timeout=60)
        assert sample(agent.url, "egress_agent_sensor_up", sensor="files") == 1
        writer = subprocess.run(
            ["sh", "-c", f"echo $$; echo payload > {agent.watched}/by-shell.txt"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        shell_pid = int(writer.stdout.split()[0])
        wait_until(
            lambda: any(p == shell_pid for _a, _p, p, _e in file_events(sandbox)),
            "the shell's write with its pid",
            20,
            why=lambda: str((file_events(sandbox), sample(agent.url, "up"))),
        )
        agent.stop()


@needs_root_tools
@pytest.mark.slow
def test_without_the_drop_in_fanotify_on_is_refused_and_only_the_file_sensor_is_down(
    sandbox: Path,
) -> None:
    with service(sandbox, unit_caps(), seccomp=UNIT, fanotify="on") as agent:
        agent.notes.wait_for("READY=1", timeout=60)
        assert sample(agent.url, "egress_agent_sensor_up", sensor="files") == 0
        assert sample(agent.url, "egress_agent_sensor_up", sensor="network") == 1
        agent.stop()


@needs_analyze
def test_the_seccomp_wrapper_enforces_the_units_filter() -> None:
    """The filter the tests above run under really blocks (so their passing means
    something): ptrace and sched_setaffinity fail with EPERM, ordinary calls work."""
    probe = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "r = libc.ptrace(0, 0, 0, 0)\n"
        "print('ptrace', r, ctypes.get_errno())\n"
        "try:\n"
        "    os.sched_setaffinity(0, {0}); print('affinity ok')\n"
        "except PermissionError:\n"
        "    print('affinity EPERM')\n"
        "print('getpid', os.getpid() > 0)\n"
    )
    wrapper = Path(__file__).with_name("seccomp_exec.py")
    res = subprocess.run(
        [sys.executable, str(wrapper), str(UNIT), "--", sys.executable, "-c", probe],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert f"ptrace -1 {errno.EPERM}" in res.stdout
    assert "affinity EPERM" in res.stdout and "getpid True" in res.stdout
