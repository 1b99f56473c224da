"""Spool and forwarder: conservation under failures, checked by a hypothesis state machine.

The machine appends batches to a real, small spool (so it fills), forwards to a real
store (SQLite per example; PostgreSQL in one run), and injects the failures that matter:
the central store refusing a batch, committing it and losing the acknowledgement, and
committing only half of it before the connection dies; plus restarts that reopen the
spool file. After every step: what the spool accepted is in the store or still spooled
(nothing lost), the store holds a prefix of it in order, each uid once, and what the
spool refused is counted.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from prometheus_client import REGISTRY
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from agent.events import Event, FileAction, FileEvent, Flow
from agent.store import codec
from agent.store.bulk import copy_batch, copy_direct
from agent.store.db import make_engine, upgrade
from agent.store.forwarder import Forwarder
from agent.store.spool import Spool
from agent.store.writer import write_batch

HOST = "host-machine"
SPOOL_BYTES = 12_000  # ~40 events: full episodes happen within a few steps


class Injected(OperationalError):
    def __init__(self) -> None:
        super().__init__("forward", {}, Exception("injected failure"))


def _event(i: int) -> Event:
    if i % 5 == 4:
        now = datetime.now(UTC)
        return Flow("tcp", "10.0.0.1", 40000 + i % 1000, "203.0.113.9", 443, now, now, i)
    return FileEvent(action=FileAction.WRITTEN, path=f"/m/{i:06d}", size=i)


def _dropped(reason: str) -> float:
    labels = {"queue": "spool", "reason": reason}
    return REGISTRY.get_sample_value("egress_agent_events_dropped_total", labels) or 0.0


def _stored_uids(engine: Engine) -> list[str]:
    with engine.connect() as c:
        return [
            r[0]
            for r in c.execute(
                text("SELECT uid FROM file_events UNION ALL SELECT uid FROM flows")
            ).all()
        ]


def _reset(engine: Engine) -> None:
    with engine.begin() as c:
        for t in ("file_events", "flows", "decisions", "file_state", "artefacts", "lineage"):
            c.execute(text(f"DELETE FROM {t}"))


class SpoolForwarderMachine(RuleBasedStateMachine):
    engine: Engine  # set per test: the central store, migrated once

    def __init__(self) -> None:
        super().__init__()
        _reset(self.engine)
        self.dir = Path(tempfile.mkdtemp(prefix="spool-sm-"))
        self.fault: str | None = None
        self.accepted: list[str] = []  # uids the spool kept, in order
        self.offered = 0
        self.refused = 0
        self.counter = 0
        self.dropped_before = _dropped("spool_full")
        self._open()

    def _open(self) -> None:
        self.spool = Spool(self.dir / "spool.db", SPOOL_BYTES)
        self.fwd = Forwarder(
            self.spool, self.engine, HOST, "machine", batch_size=7, write=self._write
        )

    def _write(self, engine: Engine, host: str, events: Sequence[Event]) -> dict[str, int]:
        fault, self.fault = self.fault, None
        if fault == "refused":
            raise Injected()
        if fault == "half":  # the first half commits, then the link dies
            copy_direct(engine, host, events[: len(events) // 2])
            raise Injected()
        counts = copy_direct(engine, host, events)
        if fault == "ack_lost":  # committed, but the forwarder never hears back
            raise Injected()
        return counts

    @rule(n=st.integers(1, 25))
    def enqueue(self, n: int) -> None:
        events = [_event(self.counter + i) for i in range(n)]
        self.counter += n
        kept = self.spool.append(HOST, events)
        self.accepted += [e.uid for e in events[:kept]]
        self.offered += n
        self.refused += n - kept

    @rule(fault=st.sampled_from([None, None, "refused", "half", "ack_lost"]))
    def forward(self, fault: str | None) -> None:
        self.fault = fault
        try:
            self.fwd.forward_once()
        except Injected:
            assert fault is not None
        self.fault = None  # an empty spool writes nothing, so the fault never fired

    @rule()
    def drain(self) -> None:
        while self.fwd.forward_once():
            pass
        assert len(self.spool) == 0

    @rule()
    def restart(self) -> None:
        self.spool.close()
        self._open()

    @invariant()
    def conservation(self) -> None:
        stored = _stored_uids(self.engine)
        assert len(stored) == len(set(stored)), "a uid was stored twice"
        spooled = [codec.decode(r.text).uid for r in self.spool.peek(10**6)]
        assert len(self.spool) == len(spooled)
        # in order: the store has a prefix of what was accepted, the spool the rest
        k = len(stored)
        assert set(stored) == set(self.accepted[:k])
        j = len(self.accepted) - len(spooled)
        assert spooled == self.accepted[j:]
        assert j <= k, "an event left the spool before the store had it"
        assert self.offered == len(self.accepted) + self.refused
        counted = _dropped("spool_full")
        assert counted - self.dropped_before == self.refused

    def teardown(self) -> None:
        self.spool.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _run(engine: Engine, examples: int) -> None:
    machine = type("Machine", (SpoolForwarderMachine,), {"engine": engine})
    logging.getLogger("agent.store.spool").setLevel(logging.CRITICAL)
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def test_conservation_sqlite(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'central.db'}")
    upgrade(engine)
    _run(engine, 150)


@pytest.mark.slow
def test_conservation_postgresql(pg_url: str) -> None:
    engine = make_engine(pg_url)
    upgrade(engine)
    try:
        _run(engine, 30)
    finally:
        engine.dispose()


def test_full_spool_counts_and_logs_once_per_episode(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path / "spool.db", 4000)
    before = _dropped("spool_full")
    batch = [_event(i) for i in range(100)]
    with caplog.at_level(logging.WARNING, logger="agent.store.spool"):
        kept = spool.append(HOST, batch)
        assert 0 < kept < 100
        assert spool.append(HOST, batch) == 0
        full_logs = [r for r in caplog.records if "is full" in r.message]
        assert len(full_logs) == 1  # one log for the episode, not one per batch
        spool.acknowledge(spool.peek(kept))  # the forwarder makes room
        assert spool.append(HOST, batch[:1]) == 1
        assert any("has room again" in r.message for r in caplog.records)
    dropped = _dropped("spool_full") - before
    assert dropped == 200 - kept
    assert REGISTRY.get_sample_value("egress_agent_spool_events") == 1
    spool.close()


def test_spool_is_durable_and_ordered_across_reopen(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", 1 << 20)
    events = [_event(i) for i in range(10)]
    spool.append(HOST, events)
    spool.acknowledge(spool.peek(3))
    spool.close()
    again = Spool(tmp_path / "spool.db", 1 << 20)
    assert len(again) == 7
    assert again.stats().bytes == sum(len(r.text) for r in again.peek(100))
    assert [codec.decode(r.text).uid for r in again.peek(100)] == [e.uid for e in events[3:]]
    again.acknowledge(again.peek(100))
    again.append(HOST, events[:1])
    assert again.peek(1)[0].seq > 10  # AUTOINCREMENT: positions are never reused
    again.close()


def test_corrupt_record_is_skipped_and_counted(tmp_path: Path) -> None:
    central = make_engine(f"sqlite:///{tmp_path / 'central.db'}")
    upgrade(central)
    spool = Spool(tmp_path / "spool.db", 1 << 20)
    spool.append(HOST, [_event(0)])
    spool._db.execute("INSERT INTO spool (host_id, event) VALUES (?, ?)", (HOST, "{not json"))
    spool.append(HOST, [_event(1)])
    spool._events += 1
    spool._bytes += len("{not json")
    before = _dropped("corrupt")
    fwd = Forwarder(spool, central, HOST, "h", write=write_batch)
    assert fwd.forward_once() == 3
    assert len(_stored_uids(central)) == 2
    assert _dropped("corrupt") - before == 1
    assert len(spool) == 0
    spool.close()


def test_refused_event_is_isolated_not_retried_forever(pg_url: str, tmp_path: Path) -> None:
    from agent.events import Decision, Severity

    central = make_engine(pg_url)
    upgrade(central)
    spool = Spool(tmp_path / "spool.db", 1 << 20)
    events = [_event(i) for i in range(10)]
    poison = Decision("r", "p", Severity.HIGH, "alert", "v1", "a NUL \x00 PostgreSQL refuses")
    events[4] = FileEvent(action=FileAction.WRITTEN, path="/poison", decisions=(poison,))
    spool.append(HOST, events)
    before = _dropped("rejected")
    fwd = Forwarder(spool, central, HOST, "h", write=copy_batch)
    assert fwd.forward_once() == 10
    stored = set(_stored_uids(central))
    assert stored == {e.uid for i, e in enumerate(events) if i != 4}
    assert _dropped("rejected") - before == 1
    assert fwd.forwarded == 9
    assert len(spool) == 0
    spool.close()
    central.dispose()


@pytest.mark.parametrize("as_rows", [False, True])
def test_a_drained_spool_gives_its_disk_space_back(tmp_path: Path, as_rows: bool) -> None:
    """All but `keep_free` of it: a spool drained after every batch is not compacted."""
    path = tmp_path / "spool.db"
    spool = Spool(path, 1 << 30, keep_free=1 << 20)
    for i in range(20):
        spool.append(HOST, [_event(i * 500 + j) for j in range(500)], as_rows=as_rows)
    spool._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    full = path.stat().st_size
    assert full > 2_000_000
    while batch := spool.peek(1000):
        spool.acknowledge(batch)
    spool._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    drained = path.stat().st_size
    assert (1 << 20) <= drained < (1 << 20) + full / 10
    for _ in range(2):  # a small backlog drained: it reuses the pages kept, none go back
        spool.append(HOST, [_event(j) for j in range(100)], as_rows=as_rows)
        spool.acknowledge(spool.peek(1000))
        spool._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert path.stat().st_size == drained
    spool.close()


def test_writer_counts_only_what_the_spool_kept(tmp_path: Path) -> None:
    from agent.store.writer import StoreWriter

    central = make_engine(f"sqlite:///{tmp_path / 'central.db'}")
    spool = Spool(tmp_path / "spool.db", 4000)
    fwd = Forwarder(spool, central, HOST, "h")
    writer = StoreWriter(central, HOST, batch_size=50, commit=fwd.commit)
    before = _dropped("spool_full")
    writer.start()
    for i in range(100):
        writer.submit(_event(i))
    writer.stop()
    assert 0 < writer.written == len(spool) < 100
    assert _dropped("spool_full") - before == 100 - writer.written
    spool.close()
