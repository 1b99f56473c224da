"""Fault drills for the store: disk full and a database locked by another process.

The promise under test: the agent keeps running, counts every event it could not keep,
and recovers by itself when the fault goes away. Run alone with `pytest -m drill`.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import is_root, synthetic_into, wait_until

pytestmark = pytest.mark.drill


def _rows(db: Path) -> int:
    con = sqlite3.connect(db, timeout=30)
    try:
        return int(con.execute("SELECT count(*) FROM file_events").fetchone()[0])
    finally:
        con.close()


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Any:
    if not is_root():
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=128m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_counts_and_recovers(
    small_tmpfs: Path, agent_config: dict[str, Any], run_agent: Any
) -> None:
    db = small_tmpfs / "agent.db"
    synthetic_into(agent_config, db, 150_000, 10_000, queue_size=2000)
    agent = run_agent(agent_config)
    agent.wait_metrics()
    # fill the rest of the file system so the store hits ENOSPC
    filler = small_tmpfs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:  # unbuffered: a file object whose last write was partial raises again on close
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError:
        pass
    finally:
        os.close(fd)
    wait_until(
        lambda: (
            (agent.metric("egress_agent_store_write_errors_total") or 0) > 0
            or any("full" in line for line in agent.stderr().splitlines())
        )
    )
    # the writer is stuck, queues fill, and the sensor's puts start to be refused
    wait_until(lambda: _sensor_dropped(agent_config) > 0, timeout=90)
    assert agent.proc.poll() is None, "the agent must keep running on a full disk"
    dropped_metric = agent.metric(
        "egress_agent_events_dropped_total", {"queue": "classify", "reason": "queue_full"}
    ) or agent.metric("egress_agent_events_dropped_total", {"reason": "queue_full"})
    assert dropped_metric and dropped_metric > 0
    before = agent.metric("egress_agent_store_rows_written_total", {"table": "file_events"}) or 0
    filler.unlink()  # space returns
    wait_until(
        lambda: (
            (agent.metric("egress_agent_store_rows_written_total", {"table": "file_events"}) or 0)
            > before + 1000
        )
    )
    assert agent.stop() == 0
    final = _status(agent_config)["sensors"]["synthetic"]
    # conservation: every event the pipeline accepted is stored; the rest were counted
    assert _rows(db) == final["emitted"]
    assert final["dropped"] > 0


def _status(cfg: dict[str, Any]) -> dict[str, Any]:
    import json

    return dict(json.loads((Path(cfg["agent"]["state_dir"]) / "status.json").read_text()))


def _sensor_dropped(cfg: dict[str, Any]) -> int:
    try:
        return int(_status(cfg)["sensors"]["synthetic"]["dropped"])
    except (OSError, ValueError, KeyError):
        return 0


def test_locked_database_delays_but_loses_nothing(
    agent_config: dict[str, Any], run_agent: Any, tmp_path: Path
) -> None:
    db = tmp_path / "locked.db"
    synthetic_into(agent_config, db, 5000, 2000)
    agent = run_agent(agent_config)
    agent.wait_metrics()
    # another process takes an exclusive lock for a few seconds
    locker = subprocess.Popen(
        [
            "python3",
            "-c",
            "import sqlite3,time,sys; c=sqlite3.connect(sys.argv[1]); "
            "c.execute('BEGIN EXCLUSIVE'); time.sleep(4); c.rollback()",
            str(db),
        ],
    )
    locker.wait(timeout=30)
    wait_until(
        lambda: agent.metric("egress_agent_sensor_events_total", {"sensor": "synthetic"}) == 5000
    )
    assert agent.stop() == 0
    assert _rows(db) == 5000
    assert os.path.exists(db)
