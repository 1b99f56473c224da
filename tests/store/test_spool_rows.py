"""Events spooled as COPY rows are stored as the plain writer stores them, exactly once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy.exc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from agent.events import Decision, Event, FileAction, FileEvent, ProcessInfo, Severity
from agent.store import spool_rows
from agent.store.bulk import Mark, copy_rows
from agent.store.forwarder import Forwarder
from agent.store.spool import Spool
from agent.store.writer import write_batch
from tests.store.test_event_rollup import assert_exact
from tests.store.test_fleet_bulk import HOST, SNAPSHOT, _snapshot, file_events, pg  # noqa: F401
from tests.store.test_spool_codec import flows

REFUSED = (sqlalchemy.exc.DataError, psycopg.DataError)


def _clear(engine: Engine) -> None:
    """DELETE, not TRUNCATE: a handful of rows, and no lock on every day's partition."""
    with engine.begin() as c:
        for table in SNAPSHOT:
            c.execute(text(f"DELETE FROM {table}"))


def _rows(events: list[Event], first_seq: int = 1) -> spool_rows.RowsBatch | None:
    texts = [spool_rows.encode(HOST, e) for e in events]
    if any(t is None for t in texts):  # not UTF-8: spooled as JSON instead
        return None
    return spool_rows.batch([t for t in texts if t is not None], spool_rows.layout(), first_seq)


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(file_events | flows, min_size=1, max_size=30), st.integers(0, 30))
def test_spooled_rows_store_what_write_batch_stores_once(
    pg: Engine,  # noqa: F811
    events: list[Event],
    cut: int,
) -> None:
    _clear(pg)
    rows = _rows(events)
    try:
        write_batch(pg, HOST, events)
    except REFUSED:  # refused as data by the plain writer: by the rows path too
        _clear(pg)
        if rows is not None:
            with pytest.raises(REFUSED):
                copy_rows(pg, HOST, rows, None)
        return
    want = _snapshot(pg)
    if rows is None:
        return
    _clear(pg)
    copy_rows(pg, HOST, rows, Mark("spool-a", len(events)))
    assert _snapshot(pg) == want
    copy_rows(pg, HOST, rows, Mark("spool-a", len(events)))  # acknowledgement lost: again
    assert _snapshot(pg) == want
    _clear(pg)
    head = _rows(events[:cut])
    if head is not None:  # a bisection stored a head without a mark: the COPY meets it
        copy_rows(pg, HOST, head, None)
    copy_rows(pg, HOST, rows, Mark("spool-b", len(events)))
    assert _snapshot(pg) == want
    assert_exact(pg)


def test_escapes_and_non_utf8_names(pg: Engine, tmp_path: Path) -> None:  # noqa: F811
    """Texts COPY would misread unescaped, and a file name that is not UTF-8."""
    odd = ["/t\tab", "/new\nline", "/back\\slash", "/unit\x1fsep", "/cr\r", "/\\N", "/é€𝄞"]
    events: list[Event] = [FileEvent(action=FileAction.WRITTEN, path=p) for p in odd]
    events.append(FileEvent(action=FileAction.WRITTEN, path="/bad-\udcff-name"))
    events.append(FileEvent(action=FileAction.DELETED, path="/t\tab"))
    spool = Spool(tmp_path / "spool.db", 1 << 20)
    spool.append(HOST, events, as_rows=True)
    assert all(r.layout is not None for r in spool.peek(100))
    fwd = Forwarder(spool, pg, HOST, "h")
    fwd.prepare()
    while fwd.forward_once():
        pass
    with pg.connect() as c:
        stored = c.execute(text("SELECT path FROM file_events")).scalars().all()
        state = c.execute(text("SELECT path FROM file_state")).scalars().all()
    assert sorted(stored) == sorted([*odd, "/bad-\\xff-name", "/t\tab"])
    assert sorted(state) == sorted([p for p in odd if p != "/t\tab"] + ["/bad-\\xff-name"])
    assert fwd.forwarded == len(events)
    spool.close()


def test_json_spooled_before_then_rows_forward_in_order_once(
    pg: Engine,  # noqa: F811
    tmp_path: Path,
    monkeypatch: Any,
) -> None:
    """An old spool's JSON records, then rows; one acknowledgement lost on the way."""
    spool = Spool(tmp_path / "spool.db", 1 << 22)
    events = [FileEvent(action=FileAction.WRITTEN, path=f"/f/{i}", size=i) for i in range(30)]
    spool.append(HOST, events[:10])  # JSON, as spooled before the rows form
    fwd = Forwarder(spool, pg, HOST, "h", batch_size=8)
    for i in range(10, 30, 4):  # the bulk forwarder spools rows, a record a commit
        fwd.commit(events[i : i + 4])
    assert [(r.layout is None, r.events) for r in spool.peek(100)] == [(True, 1)] * 10 + [
        (False, 4)
    ] * 5
    fwd.prepare()
    acknowledge = spool.acknowledge
    lost = {"n": 0}

    def lose_once(records: Any) -> None:
        if records[0].layout is not None and not lost["n"]:
            lost["n"] += 1
            raise OSError("acknowledgement lost")
        acknowledge(records)

    monkeypatch.setattr(spool, "acknowledge", lose_once)
    sent = []
    while True:
        try:
            n = fwd.forward_once()
        except OSError:
            continue
        if not n:
            break
        sent.append(n)
    assert lost["n"] == 1
    assert sent == [8, 2, 8, 8, 4]  # a run never mixes forms
    with pg.connect() as c:
        paths = c.execute(text("SELECT path FROM file_events ORDER BY id")).scalars().all()
        mark = c.execute(text("SELECT last_seq FROM forward_marks")).scalar_one()
    assert_exact(pg)
    assert paths == [e.path for e in events]
    assert mark == 30
    assert len(spool) == 0
    spool.close()


def test_a_text_that_is_not_utf8_is_spooled_as_json(tmp_path: Path) -> None:
    """A lone surrogate where `storable_text` does not go cannot be UTF-8 in SQLite."""
    odd = FileEvent(action=FileAction.WRITTEN, path="/p", process=ProcessInfo(pid=1, user="\udcff"))
    assert spool_rows.encode(HOST, odd) is None
    spool = Spool(tmp_path / "spool.db", 1 << 20)
    spool.append(HOST, [odd, FileEvent(action=FileAction.WRITTEN, path="/q")], as_rows=True)
    assert [r.layout is None for r in spool.peek(10)] == [True, False]
    spool.close()


def test_a_refused_row_is_isolated_and_the_rest_stored(pg: Engine, tmp_path: Path) -> None:  # noqa: F811
    """A NUL in a rule's reason: PostgreSQL refuses that event's rows, not its batch's."""
    poison = Decision("r", "p", Severity.HIGH, "alert", "v1", "a NUL \x00 PostgreSQL refuses")
    events: list[Event] = [FileEvent(action=FileAction.WRITTEN, path=f"/r/{i}") for i in range(10)]
    events[4] = FileEvent(action=FileAction.WRITTEN, path="/poison", decisions=(poison,))
    spool = Spool(tmp_path / "spool.db", 1 << 20)
    fwd = Forwarder(spool, pg, HOST, "h")
    fwd.commit(events)
    fwd.prepare()
    assert fwd.forward_once() == 10
    with pg.connect() as c:
        stored = set(c.execute(text("SELECT uid FROM file_events")).scalars())
    assert stored == {e.uid for i, e in enumerate(events) if i != 4}
    assert fwd.forwarded == 9
    assert len(spool) == 0
    assert_exact(pg)
    spool.close()


def test_rows_of_an_older_layout_are_sent_with_their_own_columns(
    pg: Engine,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Rows spooled before a column existed (here: file events without `skipped`,
    `skipped_at`) are sent with the columns they were written with, after the new ones."""
    import json

    spool = Spool(tmp_path / "spool.db", 1 << 20)
    old = {**spool_rows.layout(), "file_events": spool_rows.layout()["file_events"][:-2]}
    spool._db.execute(
        "INSERT INTO spool_meta (key, value) VALUES ('layout:7', ?)", (json.dumps(old),)
    )
    spool.close()
    spool = Spool(tmp_path / "spool.db", 1 << 20)  # reopened: both layouts known
    assert spool.layouts[7]["file_events"] == old["file_events"]
    before = FileEvent(action=FileAction.WRITTEN, path="/old", size=1)
    sections = (spool_rows.encode(HOST, before) or "").split(spool_rows.SECTION)
    sections[0] = sections[0][:-1].rsplit("\t", 2)[0] + "\n"  # the line as it was then
    text_old = spool_rows.SECTION.join(sections)
    spool._db.execute(
        "INSERT INTO spool (host_id, event, layout, at) VALUES (?, ?, 7, 0)", (HOST, text_old)
    )
    spool._events += 1
    spool._bytes += len(text_old)
    fwd = Forwarder(spool, pg, HOST, "h")
    fwd.commit([FileEvent(action=FileAction.WRITTEN, path="/new", size=2)])
    fwd.prepare()
    assert [fwd.forward_once(), fwd.forward_once(), fwd.forward_once()] == [1, 1, 0]
    with pg.connect() as c:
        rows = c.execute(text("SELECT path, size, skipped FROM file_events ORDER BY id")).all()
    assert [tuple(r) for r in rows] == [("/old", 1, None), ("/new", 2, None)]
    spool.close()
