"""An agent upgraded with events still spooled forwards them, each exactly once.

The spool keeps a run of rows-form events as one record since the version that added
the `n` column (agent/store/spool.py); versions before it wrote one record per event
and no `n`. Here a spool file is written exactly as such a version did (its schema and
statements), with part of it already forwarded and part committed centrally whose
deletion never happened (the old agent died between the two), then opened, added to
and drained by this version.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, text

from agent.events import Event, FileAction, FileEvent, Flow
from agent.store import codec, spool_rows
from agent.store.bulk import Mark, copy_direct, copy_rows
from agent.store.forwarder import Forwarder
from agent.store.spool import Spool, read_stats
from tests.store.test_event_rollup import assert_exact
from tests.store.test_fleet_bulk import HOST, pg  # noqa: F401

# the previous version's schema, as it stood after its own upgrade added layout and at
_OLD_SCHEMA = """
CREATE TABLE spool (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    host_id TEXT NOT NULL,
    event TEXT NOT NULL
);
CREATE TABLE spool_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
ALTER TABLE spool ADD COLUMN layout INTEGER;
ALTER TABLE spool ADD COLUMN at REAL;
"""


def _events(n: int, tag: str) -> list[Event]:
    out: list[Event] = []
    for i in range(n):
        if i % 3 == 2:
            now = datetime.now(UTC)
            out.append(Flow("tcp", "10.0.0.1", 40000 + i, "203.0.113.9", 443, now, now, i))
        elif i % 5 == 4:  # a path written before goes: a file-state delete
            out.append(FileEvent(action=FileAction.DELETED, path=f"/{tag}/{i - 4}"))
        else:
            out.append(FileEvent(action=FileAction.WRITTEN, path=f"/{tag}/{i}", size=i))
    return out


def _old_spool(path: Path, json_events: list[Event], row_events: list[Event]) -> str:
    """A spool as the previous version wrote it: one record per event. Its spool id."""
    db = sqlite3.connect(str(path), isolation_level=None)
    db.execute("PRAGMA auto_vacuum=INCREMENTAL")
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(_OLD_SCHEMA)
    spool_id = uuid.uuid4().hex
    db.execute("INSERT INTO spool_meta (key, value) VALUES ('spool_id', ?)", (spool_id,))
    db.execute(
        "INSERT INTO spool_meta (key, value) VALUES ('layout:1', ?)",
        (json.dumps(spool_rows.layout()),),
    )
    for e in json_events:
        db.execute(
            "INSERT INTO spool (host_id, event, layout, at) VALUES (?, ?, NULL, ?)",
            (HOST, codec.encode(e), e.time.timestamp()),
        )
    for e in row_events:
        db.execute(
            "INSERT INTO spool (host_id, event, layout, at) VALUES (?, ?, 1, ?)",
            (HOST, spool_rows.encode(HOST, e), e.time.timestamp()),
        )
    db.close()
    return spool_id


def _spooled(path: Path) -> int:
    """Events spooled, as `egress-agent status` reads them."""
    stats = read_stats(path)
    assert stats is not None
    return stats.events


def _stored(engine: Engine) -> list[str]:
    with engine.connect() as c:
        return list(
            c.execute(
                text(
                    "SELECT uid FROM (SELECT id, uid FROM file_events UNION ALL "
                    "SELECT id + 1000000, uid FROM flows) u ORDER BY id"
                )
            ).scalars()
        )


def test_a_spool_of_the_previous_version_is_forwarded_exactly_once(
    pg: Engine,  # noqa: F811
    tmp_path: Path,
) -> None:
    path = tmp_path / "spool.db"
    old_json, old_rows = _events(6, "j"), _events(24, "r")
    spool_id = _old_spool(path, old_json, old_rows)
    # the old agent forwarded records 1-6 and 7-12 (marks 6 and 12), deleted 1-6 only,
    # then was upgraded: 7-12 are still spooled and committed centrally
    copy_direct(pg, HOST, old_json, Mark(spool_id, 6))
    first = spool_rows.batch(
        [spool_rows.encode(HOST, e) or "" for e in old_rows[:6]], spool_rows.layout(), 7
    )
    copy_rows(pg, HOST, first, Mark(spool_id, 12))
    db = sqlite3.connect(str(path), isolation_level=None)
    db.execute("DELETE FROM spool WHERE seq <= 6")
    db.close()
    assert _spooled(path) == 24

    spool = Spool(path, 1 << 24)
    assert (spool.spool_id, len(spool)) == (spool_id, 24)
    new = _events(40, "n")
    fwd = Forwarder(spool, pg, HOST, "h", batch_size=16)
    for i in range(0, len(new), 10):
        fwd.commit(new[i : i + 10])
    records = spool.peek(10**6)
    assert [r.events for r in records] == [1] * 24 + [10] * 4
    assert [r.seq for r in records[-4:]] == [40, 50, 60, 70]  # positions go on past 30
    assert _spooled(path) == 64
    fwd.prepare()
    sent = []
    while n := fwd.forward_once():
        sent.append(n)
    assert sum(sent) == 64 and max(sent) <= 16
    stored = _stored(pg)
    assert sorted(stored) == sorted(e.uid for e in old_json + old_rows + new)
    assert len(stored) == len(set(stored)), "an event was stored twice"
    with pg.connect() as c:
        mark = c.execute(
            text("SELECT last_seq FROM forward_marks WHERE spool_id = :s"), {"s": spool_id}
        ).scalar_one()
        paths = c.execute(text("SELECT path FROM file_state ORDER BY path")).scalars().all()
    assert mark == 70
    assert_exact(pg)
    # file state as the events left it, in their order: deleted paths gone
    everything = [e for e in old_json + old_rows + new if isinstance(e, FileEvent)]
    gone = {e.path for e in everything if e.action == FileAction.DELETED}
    written = {e.path for e in everything if e.path not in gone}
    assert set(paths) == written
    assert len(spool) == 0
    spool.close()
