"""Day partitions of a PostgreSQL store: made ahead, late days filled, retention by DROP."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, text, update

from agent.events import Decision, FileAction, FileEvent, Flow, Severity
from agent.store import partitions, retention
from agent.store.db import make_engine, register_host, upgrade
from agent.store.models import IncidentRow
from agent.store.writer import write_batch
from tests.store.conftest import OpenIncident

HOST, OTHER = "h" * 32, "o" * 32
NOW = datetime.now(UTC)


@pytest.fixture
def pg(pg_url: str) -> Iterator[Engine]:
    engine = make_engine(pg_url)
    upgrade(engine)
    register_host(engine, HOST, "h")
    yield engine
    engine.dispose()


def _event(days_ago: float, decided: bool = False) -> FileEvent:
    d = Decision("r1", "pack", Severity.HIGH, "alert", "v1", "because")
    return FileEvent(
        FileAction.WRITTEN,
        f"/d/{days_ago}",
        time=NOW - timedelta(days=days_ago),
        decisions=(d,) if decided else (),
    )


def _flow(days_ago: float) -> Flow:
    end = NOW - timedelta(days=days_ago)
    return Flow("tcp", "10.0.0.1", 40000, "203.0.113.9", 443, end, end)


def _where(engine: Engine, table: str) -> dict[str, str]:
    """uid -> the partition holding it."""
    with engine.connect() as c:
        rows = c.execute(text(f"SELECT uid, tableoid::regclass::text FROM {table}")).all()
    return {u: p for u, p in rows}


def test_maintenance_creates_days_ahead_once(pg: Engine) -> None:
    assert partitions.ensure_ahead(pg) == 0  # the migration made this week already
    later = NOW + timedelta(days=10)
    made = partitions.ensure_ahead(pg, now=later)
    assert made == 3 * 9  # days +9 … +17: none existed (the migration made -1 … +7)
    assert partitions.ensure_ahead(pg, now=later) == 0
    with pg.connect() as c:
        days = partitions.days(c, "flows")
    assert (later + timedelta(days=partitions.AHEAD_DAYS)).date() in days


def test_rows_of_a_day_not_yet_made_move_into_it(pg: Engine) -> None:
    early = _event(-20)  # 20 days ahead: no partition yet
    write_batch(pg, HOST, [early, _flow(-20)])
    assert _where(pg, "file_events") == {early.uid: "file_events_default"}
    day = early.time.date()
    with pg.begin() as c:
        assert partitions.ensure_days(c, [day]) == 3
    assert _where(pg, "file_events") == {early.uid: partitions.partition_name("file_events", day)}
    assert list(_where(pg, "flows").values()) == [partitions.partition_name("flows", day)]


def test_retention_drops_whole_days_and_keeps_open_evidence(
    pg: Engine, open_incident: OpenIncident
) -> None:
    with pg.begin() as c:
        partitions.ensure_days(c, [(NOW - timedelta(days=d)).date() for d in (12, 11)])
    old_mine, old_theirs, cited = _event(12), _event(11), _event(12, decided=True)
    recent = _event(0, decided=True)
    write_batch(pg, HOST, [old_mine, cited, recent, _flow(11), _flow(0)])
    write_batch(pg, OTHER, [old_theirs])
    open_incident(pg, OTHER, {"decisions": [f"{cited.uid}:0"]})  # another host's open case
    gone = {partitions.partition_name(t, (NOW - timedelta(days=12)).date()) for t in ("flows",)}

    counts = retention.apply_retention(pg, HOST, days=5)

    # whole days went, for every host; the cited event and its decision moved to default
    assert counts == {"file_events": 2, "flows": 1, "decisions": 0}
    assert _where(pg, "file_events") == {
        cited.uid: "file_events_default",
        recent.uid: partitions.partition_name("file_events", NOW.date()),
    }
    assert set(_where(pg, "decisions")) == {f"{cited.uid}:0", f"{recent.uid}:0"}
    assert len(_where(pg, "flows")) == 1
    with pg.connect() as c:
        left = {(NOW - timedelta(days=d)).date() for d in (12, 11)} & partitions.days(c, "flows")
        assert left == set()
        assert not gone & {n for (n,) in c.execute(text("SELECT relname FROM pg_class"))}

    # once the case is closed, the next run of its host's retention deletes the evidence
    with pg.begin() as c:
        c.execute(update(IncidentRow).values(status="closed"))
    assert retention.apply_retention(pg, OTHER, days=5) == {
        "file_events": 0,
        "flows": 0,
        "decisions": 0,
    }  # the evidence is HOST's: OTHER's run leaves it
    assert retention.apply_retention(pg, HOST, days=5) == {
        "file_events": 1,
        "flows": 0,
        "decisions": 1,
    }
    assert set(_where(pg, "file_events")) == {recent.uid}
