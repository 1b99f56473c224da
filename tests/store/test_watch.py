"""A SQLite store swapped, removed or broken under the running agent is noticed, counted
once and reopened (agent/store/watch.py), in-process and in a running daemon."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Engine

from agent.events import FileAction, FileEvent
from agent.store.db import make_engine, register_host, upgrade
from agent.store.watch import (
    MISSING,
    REPLACED,
    FileIdentity,
    StoreWatch,
    change_reason,
    quick_check_problems,
)
from agent.store.writer import StoreWriter, write_batch
from tests.conftest import synthetic_into, wait_until

HOST = "host-watch"


def reopened(reason: str) -> float:
    return REGISTRY.get_sample_value("egress_agent_store_reopened_total", {"reason": reason}) or 0.0


def file_events(path: Path) -> list[str]:
    """The paths of the file events in the database file at `path` (a fresh connection)."""
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute("SELECT path FROM file_events ORDER BY path")]


def store(path: Path) -> tuple[Engine, StoreWatch]:
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    register_host(engine, HOST, "h")
    watch = StoreWatch.for_engine(engine, HOST, "h")
    assert watch is not None
    return engine, watch


def write(engine: Engine, *paths: str) -> None:
    write_batch(engine, HOST, [FileEvent(FileAction.WRITTEN, p, size=1) for p in paths])


def test_change_reason_and_quick_check_answers() -> None:
    a, b = FileIdentity(1, 2), FileIdentity(1, 3)
    assert change_reason(a, a) is None
    assert change_reason(a, b) == REPLACED
    assert change_reason(a, None) == MISSING
    assert quick_check_problems([("ok",)]) == []
    assert quick_check_problems([("row 3 missing from index i",), ("page 7: btree",)]) == [
        "row 3 missing from index i",
        "page 7: btree",
    ]
    assert quick_check_problems([]) == ["quick_check returned nothing"]
    # several problems in one row, newline-separated: one line each, never a raw newline
    assert quick_check_problems(
        [("*** in database main ***\nPage 2: btreeInitPage() returns error code 11\nPage 3: x",)]
    ) == ["Page 2: btreeInitPage() returns error code 11", "Page 3: x"]


def test_no_watch_for_memory_or_central_stores(pg_url: str) -> None:
    assert StoreWatch.for_engine(make_engine("sqlite://"), HOST, "h") is None
    assert StoreWatch.for_engine(make_engine(pg_url), HOST, "h") is None


def test_a_store_renamed_away_and_replaced_by_an_empty_file_is_reopened(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "store.db"
    engine, watch = store(db)
    write(engine, "/before")
    assert not watch.check()  # nothing moved: one stat, no reopen
    before = reopened(REPLACED)
    db.rename(tmp_path / "old.db")
    db.write_bytes(b"")
    assert watch.check()
    assert not watch.check()  # said and counted once
    assert reopened(REPLACED) == before + 1
    assert sum("reopening it" in r.getMessage() for r in caplog.records) == 1
    write(engine, "/after")
    assert file_events(db) == ["/after"]
    assert file_events(tmp_path / "old.db") == ["/before"]
    engine.dispose()


def test_a_removed_store_is_created_again(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    engine, watch = store(db)
    write(engine, "/before")
    before = reopened(MISSING)
    os.unlink(db)
    assert watch.check()
    assert reopened(MISSING) == before + 1
    write(engine, "/after")
    assert file_events(db) == ["/after"]
    engine.dispose()


def test_a_store_swapped_for_another_database_gets_the_schema_and_the_host(
    tmp_path: Path,
) -> None:
    db = tmp_path / "store.db"
    engine, watch = store(db)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE unrelated (x)")
    conn.close()
    os.replace(other, db)
    assert watch.check()
    write(engine, "/after")
    assert file_events(db) == ["/after"]
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT id FROM hosts").fetchall() == [(HOST,)]
        assert conn.execute("SELECT count(*) FROM unrelated").fetchone() == (0,)
    conn.close()
    engine.dispose()


def test_a_broken_store_is_moved_aside_by_the_integrity_check(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    engine, watch = store(db)
    write(engine, *(f"/f{i}" for i in range(200)))
    assert watch.check_integrity() == []
    engine.dispose()
    before = reopened("integrity")
    with db.open("r+b") as f:  # the same inode, now garbage: only the check can see it
        f.write(random.Random(1).randbytes(db.stat().st_size))
    problems = watch.check_integrity()
    assert problems
    assert reopened("integrity") == before + 1
    moved = [p.name for p in tmp_path.iterdir() if p.name.startswith("store.db.broken-")]
    assert len(moved) == 1
    write(engine, "/after")
    assert file_events(db) == ["/after"]
    assert watch.check_integrity() == []
    engine.dispose()


def test_a_file_that_cannot_be_a_store_is_retried_not_raised(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    engine = make_engine(f"sqlite:///{db}")
    upgrade(engine)
    register_host(engine, HOST, "h")
    t = [0.0]
    watch = StoreWatch(engine, db, HOST, "h", clock=lambda: t[0])
    os.replace(db, tmp_path / "old.db")
    db.write_bytes(b"not a database" * 100)
    assert not watch.check()  # cannot reopen: logged, retried later
    assert not watch.check()  # not before the retry interval
    db.unlink()
    t[0] += 10
    assert watch.check()
    write(engine, "/after")
    assert file_events(db) == ["/after"]
    engine.dispose()


def test_the_writer_reopens_before_its_next_batch(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    engine, watch = store(db)
    writer = StoreWriter(engine, HOST, flush_interval=0.01, watch=watch)
    writer.start()
    try:
        writer.submit(FileEvent(FileAction.WRITTEN, "/before", size=1))
        wait_until(lambda: writer.written == 1)
        db.rename(tmp_path / "old.db")
        db.write_bytes(b"")
        writer.submit(FileEvent(FileAction.WRITTEN, "/after", size=1))
        wait_until(lambda: writer.written == 2)
    finally:
        writer.stop()
    assert file_events(db) == ["/after"]
    assert file_events(tmp_path / "old.db") == ["/before"]
    engine.dispose()


def test_a_running_agent_notices_its_store_replaced_and_writes_to_the_new_one(
    agent_config: dict[str, Any], run_agent: Any, tmp_path: Path
) -> None:
    db = tmp_path / "state" / "store.db"
    synthetic_into(agent_config, db, 600, 150)
    agent = run_agent(agent_config)
    agent.wait_metrics()
    wait_until(lambda: db.exists() and len(file_events(db)) >= 20)
    os.replace(db, tmp_path / "old.db")
    db.write_bytes(b"")
    wait_until(lambda: agent.metric("egress_agent_store_reopened_total", {"reason": REPLACED}) == 1)
    wait_until(
        lambda: agent.metric("egress_agent_sensor_events_total", {"sensor": "synthetic"}) == 600
    )
    assert agent.stop(signal.SIGTERM) == 0, agent.stderr()
    old, new = file_events(tmp_path / "old.db"), file_events(db)
    # every event is in one file or the other: none lost in the swap, none stored twice
    assert len(old) >= 20 and len(new) > 100
    assert not set(old) & set(new)
    assert len(old) + len(new) == 600
    assert agent.stderr().count("reopening it") == 1
