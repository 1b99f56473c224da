"""Shared fixtures: free ports, temporary configs, a PostgreSQL database per test, the
two-namespace network rig, and a running `egress-agent run` subprocess (on the host or
inside one of the rig's namespaces) with helpers to scrape and stop it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
import yaml
from hypothesis import settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from tests.sensors.network.rig import Rig

REPO = Path(__file__).resolve().parent.parent

# Hypothesis: no per-example deadline anywhere (two property tests hit theirs on a busy
# 2-core machine: a deadline measures the machine, not the code), and under CI the
# examples are derandomised so a red run is reproduced by the next one, with the blob
# to replay a failure printed. Tests that pass their own settings(deadline=...) override.
settings.register_profile("local", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "local")
)
T = TypeVar("T")
PG_ADMIN_URL = os.environ.get("EGRESS_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def is_root() -> bool:
    return os.geteuid() == 0


def pg_available() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


def _require_pg() -> None:
    if not pg_available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL at 127.0.0.1:5432 is unreachable under CI")
        pytest.skip("PostgreSQL at 127.0.0.1:5432 is unreachable")


def _migrations_digest() -> str:
    """Names the migrated template after the scripts it ran, so a changed or added
    migration builds a new template instead of reusing a stale one."""
    h = hashlib.sha256()
    for script in sorted((REPO / "migrations").rglob("*.py")):
        h.update(script.name.encode() + b"\0" + script.read_bytes())
    return h.hexdigest()[:16]


_TEMPLATE_LOCK = 0x6561_7470_6C74  # pg_advisory_lock key: one builder of the template


def _migrated_template(admin: Any) -> str:
    """A database at the migrations' head, built once per migrations digest and cloned
    per test: `CREATE DATABASE ... TEMPLATE` copies it in a fraction of a second, where
    running the seven migrations (day partitions, triggers) takes seconds per test."""
    from sqlalchemy import text

    from agent.store.db import make_engine, upgrade

    # dated: the migrations create day partitions around today
    name = f"ea_tpl_{_migrations_digest()}_{time.strftime('%Y%m%d', time.gmtime())}"
    with admin.connect() as c:
        c.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _TEMPLATE_LOCK})
        try:
            found = c.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name})
            if found.first() is None:
                building = f"{name}_{uuid.uuid4().hex[:8]}"
                c.execute(text(f'CREATE DATABASE "{building}"'))
                engine = make_engine(
                    admin.url.set(database=building).render_as_string(hide_password=False)
                )
                try:
                    upgrade(engine)
                finally:
                    engine.dispose()
                # published under its final name only once complete
                c.execute(text(f'ALTER DATABASE "{building}" RENAME TO "{name}"'))
        finally:
            c.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _TEMPLATE_LOCK})
    return name


def _scratch_database(template: str | None) -> Iterator[str]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"ea_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    source = _migrated_template(admin) if template is None else template
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{source}"'))
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database at the migrations' head for one test, dropped
    afterwards (upgrading it again is a no-op, as for an agent restarting on its store).

    Skips when the server is unreachable — except under CI, where that is a failure.
    """
    _require_pg()
    yield from _scratch_database(template=None)


@pytest.fixture
def pg_empty_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database: for tests of the migrations themselves and of
    agents creating the schema on first start."""
    _require_pg()
    yield from _scratch_database(template="template1")


def write_config(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    return path


@pytest.fixture
def agent_config(tmp_path: Path) -> dict[str, Any]:
    """A minimal config document: state in tmp, a free metrics port, no sensors."""
    return {
        "agent": {"state_dir": str(tmp_path / "state")},
        "metrics": {"listen": f"127.0.0.1:{free_port()}"},
        "sensors": {"enabled": []},
        "jobs": {},
    }


class AgentProcess:
    """`egress-agent run` in a subprocess, with its metrics URL and status file.

    `prefix` runs it through another command that then execs it, such as
    `rig.netns_exec(ns)` for a network namespace (whose metrics port the test process
    cannot reach: read `status()` there)."""

    def __init__(
        self, config_path: Path, env: dict[str, str] | None = None, prefix: Sequence[str] = ()
    ) -> None:
        self.config_path = config_path
        doc = yaml.safe_load(config_path.read_text())
        self.metrics_url = f"http://{doc['metrics']['listen']}/metrics"
        self.state_dir = Path(doc["agent"]["state_dir"])
        full_env = {**os.environ, **(env or {})}
        self.stderr_path = config_path.with_suffix(".stderr")
        self._stderr = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "agent", "--config", str(config_path), "run"],
            cwd=REPO,
            env=full_env,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
        )

    def wait_metrics(self, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited {self.proc.returncode}: {self.stderr(6000)}")
            try:
                return self.scrape()
            except OSError as e:
                last = e
                time.sleep(0.1)
        raise AssertionError(f"metrics never came up: {last}; stderr: {self.stderr(6000)}")

    def scrape(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as r:
            return str(r.read().decode())

    def metric(
        self, name: str, labels: dict[str, str] | None = None, text: str | None = None
    ) -> float | None:
        """One sample's value from a new scrape, or from `text` (an earlier scrape) so that
        several values can be read at one instant."""
        from prometheus_client.parser import text_string_to_metric_families

        for fam in text_string_to_metric_families(self.scrape() if text is None else text):
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in (labels or {}).items()):
                    return float(s.value)
        return None

    def policy_reloads(self, result: str) -> float:
        """How many policy reloads ended in `result` ("success", "failure") so far."""
        return self.metric("egress_agent_policy_reloads_total", {"result": result}) or 0

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._stderr.close()

    def stop_or_kill(self, timeout: float = 30.0) -> None:
        """Teardown: SIGTERM, then SIGKILL if it has not exited within `timeout`."""
        if self.proc.poll() is None:
            try:
                self.stop(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()

    def stderr(self, tail: int | None = None) -> str:
        """The agent's whole log so far (a test that counts lines must see all of them; a
        busy run logs more), or its last `tail` characters for an error message."""
        if not self._stderr.closed:  # also readable after stop()
            self._stderr.flush()
        text = self.stderr_path.read_text(errors="replace")
        return text if tail is None else text[-tail:]

    def status(self) -> dict[str, Any]:
        """The agent's status.json ({} until it has written one)."""
        try:
            return dict(json.loads((self.state_dir / "status.json").read_text()))
        except (OSError, ValueError):
            return {}


@pytest.fixture
def run_agent(tmp_path: Path) -> Iterator[Any]:
    """Start agents from config documents; every one is stopped at the end of the test."""
    procs: list[AgentProcess] = []

    def start(
        doc: dict[str, Any], env: dict[str, str] | None = None, name: str = "agent"
    ) -> AgentProcess:
        cfg = write_config(tmp_path / f"{name}-{len(procs)}.yaml", doc)
        p = AgentProcess(cfg, env)
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()


@pytest.fixture
def rig() -> Iterator[Rig]:
    """Two network namespaces joined by a veth pair (tests/sensors/network/rig.py),
    deleted afterwards; skips where they cannot be made (not root, no `ip`, no
    CAP_SYS_ADMIN in a container)."""
    from tests.sensors.network.rig import make_rig, unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    try:
        with make_rig() as r:
            yield r
    except Exception as e:  # `ip netns add` refused
        if "netns" in str(e) or "RTNETLINK" in str(getattr(e, "stderr", "")):
            pytest.skip(f"cannot create network namespaces: {getattr(e, 'stderr', e)}")
        raise


def eventually(fn: Callable[[], T], timeout: float = 60.0, interval: float = 0.2) -> T:
    """`fn()`'s first truthy value within `timeout` seconds, else its last value (for the
    caller's assert to show). Generous by default: it only delays a failing test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(interval)
    return fn()


def wait_until(
    fn: Callable[[], T],
    what: str = "condition",
    timeout: float = 60.0,
    *,
    interval: float = 0.1,
    why: Callable[[], Any] | None = None,
) -> T:
    """`fn()`'s first truthy value within `timeout` seconds; else an AssertionError that
    names `what` and, when given, `why()` (a log tail, a status) to say what went wrong."""
    value = eventually(fn, timeout, interval)
    if not value:
        detail = f": {why()}" if why is not None else ""
        raise AssertionError(f"{what} not met within {timeout:.0f}s{detail}")
    return value


def synthetic_into(
    agent_config: dict[str, Any], db: Path, count: int, rate: int, **database: Any
) -> None:
    """`agent_config` with the synthetic sensor alone (`count` events, `rate` a second)
    writing to the SQLite store `db` (more `database` settings as keywords)."""
    agent_config["database"] = {"url": f"sqlite:///{db}", **database}
    agent_config["sensors"] = {
        "enabled": ["synthetic"],
        "synthetic_count": count,
        "synthetic_rate": rate,
    }


def store_rows(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """`sql`'s rows in the running agent's SQLite store `db`; [] while there is no such
    store or table yet (the agent creates them after it starts)."""
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db, timeout=10) as c:
            return c.execute(sql, args).fetchall()
    except sqlite3.OperationalError:
        return []


def registry_value(name: str, labels: dict[str, str] | None = None) -> float:
    """`name`'s sample with `labels` in this process's metrics registry (0 before the
    first count), for tests that drive the product in-process."""
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def decision_labels(pack: str, rule: str, severity: str, dest_class: str) -> dict[str, str]:
    """The labels of egress_agent_decisions_total for one rule's decisions."""
    return {"pack": pack, "rule": rule, "severity": severity, "dest_class": dest_class}


def insert_incident(
    engine: Engine,
    host: str,
    status: str,
    evidence: dict[str, Any],
    *,
    uid: str,
    dedup_key: str,
    at: datetime,
) -> None:
    """One incident row of `host` citing `evidence`, inserted as is (no incident log, no
    chain): what the retention tests need of a case, that it stands and what it cites."""
    from sqlalchemy import insert

    from agent.store.models import IncidentRow

    with engine.begin() as c:
        c.execute(
            insert(IncidentRow).values(
                uid=uid,
                host_id=host,
                kind="exfiltration",
                rule_id="r1",
                pack="pack",
                severity="high",
                status=status,
                title="t",
                dedup_key=dedup_key,
                opened_at=at,
                updated_at=at,
                evidence=evidence,
                policy_version="v1",
            )
        )


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """A migrated SQLite store in the test's directory (a test module may define its own,
    e.g. one parametrized over SQLite and PostgreSQL)."""
    from agent.store.db import make_engine, upgrade

    eng = make_engine(f"sqlite:///{tmp_path / 'agent.db'}")
    upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def usb(tmp_path: Path, agent_config: dict[str, Any]) -> Path:
    """A directory the daemon's file sensor watches as removable media: `agent_config`
    gets the files sensor alone, on this root only (no mount following), magika off."""
    root = tmp_path / "usb"
    root.mkdir()
    agent_config["sensors"] = {"enabled": ["files"]}
    agent_config["files"] = {"roots": [str(root)], "removable": [str(root)], "follow_mounts": False}
    agent_config["classify"] = {"use_magika": False}
    return root


def cli(
    *args: str,
    config: Path | None = None,
    check: bool = True,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run `egress-agent ARGS` as a user would."""
    cmd = [sys.executable, "-m", "agent"]
    if config is not None:
        cmd += ["--config", str(config)]
    cmd += list(args)
    res = subprocess.run(
        cmd,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {res.returncode}: {res.stderr}")
    return res


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


def _utf8_safe(text: str) -> str:
    """Lone surrogates (non-UTF-8 file names in logs) as \\udcXX text."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """pytest-xdist sends reports between processes as UTF-8: a captured log line or an
    assertion message naming a non-UTF-8 file would crash the run (INTERNALERROR)."""
    report.sections = [(name, _utf8_safe(text)) for name, text in report.sections]
    longrepr = report.longrepr
    if longrepr is not None and not isinstance(longrepr, tuple):
        text = str(longrepr)
        if text != _utf8_safe(text):
            report.longrepr = _utf8_safe(text)
