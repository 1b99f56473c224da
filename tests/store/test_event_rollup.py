"""`event_rollup` (migration 0007) equals the event tables after every way rows come and go.

The per-host status reads it instead of counting events, so it must be exact: after a
re-sent batch (nothing new stored, nothing counted), a COPY that rolls back, a day's
rows moved out of the default partition, retention's dropped days and row deletes, and
the migration's backfill of a store that had rows before it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine, text

from agent.events import Event, FileAction, FileEvent, Flow
from agent.store import partitions, retention, rollup
from agent.store.bulk import Mark, copy_batch, copy_direct
from agent.store.db import alembic_config, make_engine, register_host, upgrade
from agent.store.queries import counts, host_counts
from agent.store.writer import write_batch
from tests.store.conftest import OpenIncident

HOST, OTHER = "r" * 32, "s" * 32
NOW = datetime.now(UTC)


def truth(engine: Engine) -> set[tuple[Any, ...]]:
    """(host, table, day, rows, newest time) counted from the event tables themselves."""
    out: set[tuple[Any, ...]] = set()
    with engine.connect() as c:
        for table, col in rollup.TIMED.items():
            out |= set(
                map(
                    tuple,
                    c.execute(
                        text(
                            f"SELECT host_id, '{table}', ({col} AT TIME ZONE 'UTC')::date, "
                            f"count(*), max({col}) FROM {table} GROUP BY 1, 3"
                        )
                    ),
                )
            )
    return out


def rolled(engine: Engine) -> set[tuple[Any, ...]]:
    """The rollup as its readers see it: a day's slots summed."""
    with engine.connect() as c:
        q = (
            f"SELECT host_id, table_name, day, sum(n_rows), max(last_time) FROM {rollup.TABLE}"
            " GROUP BY 1, 2, 3"
        )
        return set(map(tuple, c.execute(text(q))))


def assert_exact(engine: Engine) -> None:
    assert rolled(engine) == truth(engine)


@pytest.fixture
def pg(pg_url: str) -> Iterator[Engine]:
    engine = make_engine(pg_url)
    upgrade(engine)
    register_host(engine, HOST, "alpha")
    register_host(engine, OTHER, "beta")
    yield engine
    engine.dispose()


def _events(n: int, days_ago: float = 0, tag: str = "") -> list[Event]:
    out: list[Event] = []
    for i in range(n):
        t = NOW - timedelta(days=days_ago, seconds=i)
        out.append(FileEvent(FileAction.WRITTEN, f"/r/{tag}{i}", time=t))
        if i % 3 == 0:
            out.append(Flow("tcp", "10.0.0.1", 40000 + i, "203.0.113.9", 443, t, t))
    return out


def test_resent_and_half_stored_batches_count_once(pg: Engine) -> None:
    batch = _events(30, tag="a")
    copy_direct(pg, HOST, batch[:10], Mark("sp", 1))  # a bisection stored the head
    copy_direct(pg, HOST, batch, Mark("sp", 2))  # the COPY meets the key: rollback, merge
    copy_direct(pg, HOST, batch, Mark("sp", 2))  # lost acknowledgement: re-sent whole
    copy_batch(pg, HOST, batch)
    write_batch(pg, HOST, batch)  # the plain writer's path too
    write_batch(pg, OTHER, _events(5, days_ago=1, tag="b"))
    assert_exact(pg)
    by_host = {h.hostname: h for h in host_counts(pg)}
    assert (by_host["alpha"].file_events, by_host["alpha"].flows) == (30, 10)
    assert by_host["alpha"].last_event == max(e.time for e in batch)
    assert (by_host["beta"].file_events, by_host["beta"].flows) == (5, 2)
    total = counts(pg)
    assert (total.file_events, total.flows, total.last_file_event) == (35, 12, batch[0].time)
    assert counts(pg, OTHER).file_events == 5


def test_moves_between_partitions_and_retention_keep_it_exact(
    pg: Engine, open_incident: OpenIncident
) -> None:
    ahead = _events(4, days_ago=-20, tag="f")  # no partition yet: the default holds them
    write_batch(pg, HOST, ahead)
    with pg.begin() as c:
        partitions.ensure_days(c, [ahead[0].time.date()])  # moved into their new day
    assert_exact(pg)
    with pg.begin() as c:
        partitions.ensure_days(c, [(NOW - timedelta(days=d)).date() for d in (12, 11)])
    old, cited = (
        _events(6, days_ago=12, tag="o"),
        FileEvent(FileAction.WRITTEN, "/cited", time=NOW - timedelta(days=12)),
    )
    write_batch(pg, HOST, [*old, cited])
    write_batch(pg, OTHER, _events(3, days_ago=11, tag="p"))
    write_batch(pg, HOST, _events(3, tag="n"))
    open_incident(pg, HOST, {"events": [cited.uid]})  # an open case: spared into the default
    retention.apply_retention(pg, HOST, days=5)
    assert_exact(pg)
    assert {h.hostname: h.file_events for h in host_counts(pg)} == {"alpha": 8, "beta": 0}
    with pg.begin() as c:
        c.execute(text("UPDATE incidents SET status = 'closed'"))
    retention.apply_retention(pg, HOST, days=5)  # the spared row goes, deleted one by one
    assert_exact(pg)
    assert {h.hostname: h.file_events for h in host_counts(pg)} == {"alpha": 7, "beta": 0}


def test_migration_backfills_a_store_that_had_rows(pg: Engine) -> None:
    cfg = alembic_config(pg.url.render_as_string(hide_password=False))
    write_batch(pg, HOST, _events(7, tag="x"))
    with pg.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0006")
    with pg.connect() as c:
        assert not rollup.installed(c)
    assert counts(pg).file_events == 7  # counted the old way meanwhile
    write_batch(pg, OTHER, _events(4, days_ago=2, tag="y"))  # no triggers: not counted
    upgrade(pg)
    assert_exact(pg)
    assert {h.hostname: h.file_events for h in host_counts(pg)} == {"alpha": 7, "beta": 4}


def test_status_query_reads_no_event_table(pg: Engine) -> None:
    write_batch(pg, HOST, _events(3))
    q = (
        f"SELECT host_id, table_name, sum(n_rows), max(last_time) FROM {rollup.TABLE} "
        "GROUP BY host_id, table_name"
    )
    with pg.connect() as c:
        plan = "\n".join(r[0] for r in c.execute(text("EXPLAIN " + q)))
    assert rollup.TABLE in plan
    for table in rollup.TIMED:
        assert table not in plan.replace(rollup.TABLE, "")


def test_deleting_a_days_newest_row_looks_its_time_up_again(pg: Engine) -> None:
    late = [e for e in _events(3, days_ago=-30, tag="z") if isinstance(e, FileEvent)]
    write_batch(pg, HOST, late)  # 30 days ahead: in the default partition
    with pg.begin() as c:  # retention's way: by the partition's name
        c.execute(text("DELETE FROM file_events_default WHERE uid = :u"), {"u": late[0].uid})
    assert_exact(pg)
    assert host_counts(pg, "alpha")[0].last_event == late[1].time
    with pg.begin() as c:  # and through the parent
        c.execute(text("DELETE FROM file_events WHERE uid = :u"), {"u": late[1].uid})
    assert_exact(pg)
    assert host_counts(pg, "alpha")[0].last_event == late[2].time


def _insert_file_event(cur: Any, slot: str | None, uid: str, t: datetime) -> None:
    if slot is not None:
        cur.execute("SELECT set_config(%s, %s, true)", (rollup.SLOT_SETTING, slot))
    cur.execute(
        "INSERT INTO file_events (uid, host_id, time, action, path, channel, origin, sensor)"
        " VALUES (%s, %s, %s, 'written', %s, 'local', 'watch', 'files')",
        (uid, HOST, t, f"/slot/{uid}"),
    )


def test_two_batches_in_flight_count_in_their_own_slots(pg: Engine, pg_url: str) -> None:
    """The forwarder's opened batch (slot 1 or 2) COPYs while the batch before it (slot 0
    or the other one) has counted and not committed: the second insert must not wait
    for the first commit (it did, on the one counter row of the day), and the counts of
    the slots add up; a delete folds them back into one row."""
    import psycopg

    url = pg_url.replace("postgresql+psycopg://", "postgresql://")
    first, second = psycopg.connect(url), psycopg.connect(url)
    try:
        with first.cursor() as a, second.cursor() as b:
            _insert_file_event(a, None, "slot-a", NOW)  # a direct batch: slot 0
            b.execute("SET lock_timeout = '2s'")  # waiting on a's row would fail here
            _insert_file_event(b, "1", "slot-b", NOW - timedelta(seconds=1))
            second.commit()
            first.commit()
            with first.transaction():
                _insert_file_event(a, "2", "slot-c", NOW - timedelta(seconds=2))
        with pg.connect() as c:
            slots = c.execute(
                text(f"SELECT slot, n_rows FROM {rollup.TABLE} WHERE host_id = :h ORDER BY slot"),
                {"h": HOST},
            ).all()
        assert [tuple(r) for r in slots] == [(0, 1), (1, 1), (2, 1)]
        assert_exact(pg)
        assert host_counts(pg, "alpha")[0].file_events == 3
        with pg.begin() as c:  # retention's kind of delete: the day's slots fold into 0
            c.execute(text("DELETE FROM file_events WHERE uid = 'slot-a'"))
        assert_exact(pg)
        with pg.connect() as c:
            slots = c.execute(
                text(f"SELECT slot, n_rows FROM {rollup.TABLE} WHERE host_id = :h"),
                {"h": HOST},
            ).all()
        assert [tuple(r) for r in slots] == [(0, 2)]
    finally:
        first.close()
        second.close()


def test_slots_migration_down_and_up_keeps_the_counts(pg: Engine) -> None:
    """0009's downgrade sums a day's slots into 0007's one row, the upgrade takes them
    as slot 0; counting works at both revisions."""
    cfg = alembic_config(pg.url.render_as_string(hide_password=False))
    write_batch(pg, HOST, _events(6, tag="m"))
    with pg.begin() as c:
        c.execute(text(f"UPDATE {rollup.TABLE} SET slot = 1 WHERE table_name = 'flows'"))
    assert_exact(pg)
    with pg.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0008")
    assert_exact(pg)
    write_batch(pg, OTHER, _events(3, days_ago=1, tag="k"))  # 0007's triggers count it
    assert_exact(pg)
    upgrade(pg)
    assert_exact(pg)
    write_batch(pg, HOST, _events(2, tag="q"))
    assert_exact(pg)
    assert {h.hostname: h.file_events for h in host_counts(pg)} == {"alpha": 8, "beta": 3}
