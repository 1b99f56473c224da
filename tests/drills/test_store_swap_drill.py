"""Fault drill (issue 17, class 6): the store swapped, removed and broken under a running
agent.

A running agent writes 3,000 synthetic events at 250 a second into its SQLite store.
Meanwhile the drill renames the store away and puts an empty file in its place, then
another SQLite database (with a table of its own), then deletes the file, and finally
overwrites the file in place with random bytes (the same inode: only the maintenance
job's `PRAGMA quick_check` can see it). The promise: each change is noticed, logged once
and counted (`egress_agent_store_reopened_total{reason}`), the agent keeps writing into
the file at the path, and — for the three swaps — every event is in exactly one of the
files, none lost and none twice. SIGTERM still ends it with exit 0. Run: `pytest -m drill`.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import synthetic_into, wait_until

pytestmark = pytest.mark.drill

N = 3000


def _read(db: Path, sql: str) -> list[Any]:
    """Rows of `sql` read from `db` without creating it (read-only), [] if it is not
    (yet) a store: an empty file before the agent reopens it, or no file at all."""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    except sqlite3.Error:
        return []
    try:
        return [r[0] for r in conn.execute(sql)]
    except sqlite3.Error:
        return []
    finally:
        conn.close()


def paths_in(db: Path) -> list[str]:
    return _read(db, "SELECT path FROM file_events")


def hosts_in(db: Path) -> int:
    return len(_read(db, "SELECT id FROM hosts"))


def test_store_swapped_removed_and_broken_under_a_running_agent(
    agent_config: dict[str, Any], run_agent: Any, tmp_path: Path
) -> None:
    db = tmp_path / "state" / "store.db"
    synthetic_into(agent_config, db, N, 250)
    agent_config["jobs"] = {"maintenance_interval": 1.0}
    agent = run_agent(agent_config)
    agent.wait_metrics()

    def reopened(reason: str) -> float:
        return agent.metric("egress_agent_store_reopened_total", {"reason": reason}) or 0.0

    gens: list[Path] = []

    def swap_away() -> Path:
        wait_until(lambda: len(paths_in(db)) >= 50)  # the current file is being written
        gen = tmp_path / f"gen{len(gens)}.db"
        os.replace(db, gen)
        gens.append(gen)
        return gen

    swap_away()
    db.write_bytes(b"")
    wait_until(lambda: reopened("replaced") == 1)

    swap_away()
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE unrelated (x)")
    conn.commit()
    conn.close()
    os.replace(other, db)
    wait_until(lambda: reopened("replaced") == 2)

    swap_away()
    wait_until(lambda: reopened("missing") == 1)
    wait_until(lambda: len(paths_in(db)) >= 50)

    # every event so far is in exactly one file: none lost in three swaps, none twice
    wait_until(
        lambda: agent.metric("egress_agent_sensor_events_total", {"sensor": "synthetic"}) == N
    )
    wait_until(
        lambda: agent.metric("egress_agent_store_rows_written_total", {"table": "file_events"}) == N
    )
    before_break = [p for g in gens for p in paths_in(g)] + paths_in(db)
    assert all(len(paths_in(g)) >= 50 for g in gens)

    # broken in place: the maintenance job's quick_check moves it aside, a new one opens
    with db.open("r+b") as f:
        f.write(random.Random(1).randbytes(db.stat().st_size))
    wait_until(lambda: reopened("integrity") == 1)
    moved = [p for p in db.parent.iterdir() if p.name.startswith("store.db.broken-")]
    assert len(moved) == 1
    wait_until(lambda: hosts_in(db) == 1)  # the new store: the schema and this host in it
    assert paths_in(db) == []  # no event came after the break

    assert agent.stop(signal.SIGTERM) == 0, agent.stderr()
    assert len(before_break) == len(set(before_break)) == N
    log = agent.stderr()
    assert log.count("replaced by another file under the running agent") == 2
    assert log.count("was removed under the running agent") == 1
    assert log.count("failed its integrity check") == 1
    assert "Traceback" not in log
