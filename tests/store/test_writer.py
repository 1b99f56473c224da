"""The single writer on real SQLite and PostgreSQL: round trip, idempotency, flush on stop."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from agent import events, metrics
from agent.store.db import make_engine
from agent.store.models import Artefact as ArtefactRow
from agent.store.models import DecisionRow, FileEventRow, FileState, FlowRow, Lineage
from agent.store.queries import counts, list_events
from agent.store.writer import StoreWriter, write_batch
from tests.incidents.helpers import new_store

HOST = "host-test"


def _engine(url: str) -> Engine:
    return new_store(url, HOST, "test-host")


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    if request.param == "sqlite":
        return _engine(f"sqlite:///{tmp_path / 'store.db'}")
    return _engine(request.getfixturevalue("pg_url"))


def _sample() -> list[events.FileEvent | events.Flow]:
    art = events.Artefact(
        sha256="a" * 64,
        size=1234,
        content_type="safetensors",
        tags=(
            events.Tag(
                "model_weights",
                "safetensors header, 1.1e8 parameters, bf16",
                {"parameters": 110_000_000},
            ),
        ),
        matches=(events.CategoryMatch("CN-AI-1", 3, "cn"),),
        parents=("b" * 64,),
    )
    weird = os.fsdecode(b"/data/caf\xe9\nname.bin")  # not UTF-8, with a newline
    now = datetime.now(UTC)
    return [
        events.FileEvent(
            events.FileAction.WRITTEN,
            "/data/model.safetensors",
            events.Channel.LOCAL,
            size=1234,
            inode=7,
            mtime_ns=1,
            artefact=art,
            process=events.ProcessInfo(pid=42, exe="/usr/bin/cp", uid=1000, user="alice"),
            decisions=(
                events.Decision(
                    "R1", "cn", events.Severity.HIGH, "alert", "v1", "why", ("CN-AI-1",)
                ),
            ),
        ),
        events.FileEvent(
            events.FileAction.MOVED,
            "/data/model.safetensors",
            events.Channel.REMOVABLE,
            dest_path="/media/usb/m.bin",
            size=1234,
        ),
        events.FileEvent(events.FileAction.CREATED, weird, size=0),
        events.Flow(
            "tcp",
            "10.0.0.1",
            40000,
            "203.0.113.9",
            443,
            now,
            now,
            bytes_out=5_000_000_000,
            sni="example.org",
            name="example.org",
            name_source="sni",
            dest_class="foreign",
            country="US",
        ),
    ]


def test_round_trip(engine: Engine) -> None:
    batch = _sample()
    write_batch(engine, HOST, batch)
    c = counts(engine)
    assert (c.file_events, c.flows, c.artefacts, c.decisions) == (3, 1, 1, 1)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Lineage)).scalar_one() == 1
        row = conn.execute(select(ArtefactRow)).one()
        assert row.kinds == ["model_weights"]
        assert row.tags[0]["details"]["parameters"] == 110_000_000
        flow = conn.execute(select(FlowRow)).one()
        assert flow.bytes_out == 5_000_000_000  # past 2^32: needs BIGINT
        paths = set(conn.execute(select(FileEventRow.path)).scalars())
        assert "/data/caf\\xe9\nname.bin" in paths
        state = {r.path: r for r in conn.execute(select(FileState)).all()}
        # the move removed the old path and recorded the new one
        assert "/data/model.safetensors" not in state
        assert "/media/usb/m.bin" in state
        d = conn.execute(select(DecisionRow)).one()
        assert (d.rule_id, d.severity, d.subject_kind) == ("R1", "high", "file_event")
    listed = list(list_events(engine, limit=10))
    assert {e["kind"] for e in listed} == {"file", "flow"}
    moved = next(e for e in listed if e["type"] == "moved")
    assert moved["new_path"] == "/media/usb/m.bin" and moved["channel"] == "removable"
    written = next(e for e in listed if e["type"] == "written")
    assert written["tags"][0]["kind"] == "model_weights"


def test_batch_is_idempotent(engine: Engine) -> None:
    batch = _sample()
    write_batch(engine, HOST, batch)
    write_batch(engine, HOST, batch)  # a retry after an unknown outcome
    c = counts(engine)
    assert (c.file_events, c.flows, c.decisions) == (3, 1, 1)


def test_writer_flushes_everything_on_stop(tmp_path: Path) -> None:
    engine = _engine(f"sqlite:///{tmp_path / 's.db'}")
    writer = StoreWriter(engine, HOST, batch_size=500, flush_interval=5.0, queue_size=20_000)
    for i in range(10_000):
        writer.submit(events.FileEvent(events.FileAction.WRITTEN, f"/x/{i}", size=i))
    writer.start()
    writer.stop()
    assert counts(engine).file_events == 10_000
    assert writer.written == 10_000


def test_writer_retries_until_the_store_returns(tmp_path: Path) -> None:
    """A locked database delays the batch; nothing is lost once the lock is gone."""
    import sqlite3
    import threading

    db = tmp_path / "locked.db"
    engine = _engine(f"sqlite:///{db}")
    engine.dispose()
    engine = make_engine(f"sqlite:///{db}", sqlite_busy_ms=50)

    holder = sqlite3.connect(db, timeout=1, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    errors_before = sum(
        s.value
        for m in metrics.STORE_ERRORS.collect()
        for s in m.samples
        if s.name.endswith("_total")
    )
    writer = StoreWriter(engine, HOST, flush_interval=0.01)
    writer.start()
    for i in range(100):
        writer.submit(events.FileEvent(events.FileAction.WRITTEN, f"/y/{i}"))
    release = threading.Timer(1.0, holder.rollback)
    release.start()
    writer.stop()
    release.join()
    holder.close()
    errors_after = sum(
        s.value
        for m in metrics.STORE_ERRORS.collect()
        for s in m.samples
        if s.name.endswith("_total")
    )
    assert errors_after > errors_before
    assert counts(engine).file_events == 100


def test_a_trickle_of_events_shares_commits(tmp_path: Path) -> None:
    """Events arriving a few ms apart (short connections) wait up to flush_interval for
    each other: a handful of transactions, not one per event, and none lost."""
    import time
    from collections.abc import Sequence

    engine = _engine(f"sqlite:///{tmp_path / 't.db'}")
    batches: list[int] = []

    def commit(batch: Sequence[events.Event]) -> dict[str, int]:
        batches.append(len(batch))
        return write_batch(engine, HOST, batch)

    writer = StoreWriter(engine, HOST, flush_interval=0.5, commit=commit)
    writer.start()
    for i in range(10):
        writer.submit(events.FileEvent(events.FileAction.WRITTEN, f"/t/{i}"))
        time.sleep(0.01)
    writer.stop()
    assert sum(batches) == 10 and counts(engine).file_events == 10
    assert len(batches) <= 3, batches


def test_a_batch_stores_each_content_once_as_its_last_event_saw_it() -> None:
    """`batch_rows` gives each hash one artefact row — from the last event that carried it
    (a file name's keyword may differ between copies), in the order the hashes first came —
    and the lineage of every event that has parents."""
    from agent.store.writer import batch_rows

    def art(sha: str, kind: str, parents: tuple[str, ...] = ()) -> events.Artefact:
        return events.Artefact(
            sha256=sha, size=1, tags=(events.Tag(kind, "test"),), parents=parents
        )

    x, y, z = "1" * 64, "2" * 64, "3" * 64
    batch = [
        events.FileEvent(events.FileAction.CREATED, "/a", artefact=art(x, "source_code")),
        events.FileEvent(events.FileAction.WRITTEN, "/b", artefact=art(y, "dataset", (z,))),
        events.FileEvent(events.FileAction.WRITTEN, "/a", artefact=art(x, "model_weights")),
        events.FileEvent(events.FileAction.WRITTEN, "/c", artefact=events.Artefact(None, 0)),
        events.FileEvent(events.FileAction.WRITTEN, "/d", artefact=art(y, "dataset", (x,))),
    ]
    rows = batch_rows(HOST, batch)
    assert [(r["sha256"], r["kinds"]) for r in rows.artefacts] == [
        (x, ["model_weights"]),
        (y, ["dataset"]),
    ]
    assert sorted((r["parent_sha256"], r["child_sha256"]) for r in rows.lineage) == [(x, y), (z, y)]
    assert len(rows.file_events) == 5


def test_sqlite_binds_file_event_rows_as_the_dict_path_does(tmp_path: Path) -> None:
    """The SQLite writer's compiled row function gives, value for value, the tuple that
    binding `file_event_row`'s dict through the columns' processors gives."""
    from agent.store import rows as R
    from agent.store.tables import file_events
    from agent.store.upserts import bound_rows, sqlite_file_event_rows, sqlite_upsert

    engine = _engine(f"sqlite:///{tmp_path / 'store.db'}")
    sample = [e for e in _sample() if isinstance(e, events.FileEvent)]
    skipped = events.Artefact(
        "c" * 64, 9, "zip", parents=("c" * 64,), skipped="timeout", skipped_at="member 3"
    )
    sample += [
        events.FileEvent(events.FileAction.MOVED, "/a/x\x00y", dest_path="/b/é", artefact=skipped),
        events.FileEvent(events.FileAction.DELETED, "/a/gone", events.Channel.REMOVABLE),
    ]
    _sql, row_of = sqlite_file_event_rows(engine)
    dicts = [R.file_event_row(e, HOST) for e in sample]
    keys = tuple(dicts[0])
    _, processors = sqlite_upsert(engine, file_events, keys, (), ())
    assert [row_of(e, HOST) for e in sample] == bound_rows(dicts, keys, processors)
    assert len({len(r) for r in bound_rows(dicts, keys, processors)}) == 1
