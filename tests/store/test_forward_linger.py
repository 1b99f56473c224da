"""`database.forward_linger`: small batches wait for more events, never past the linger.

A central store's cost is mostly per transaction for small batches, so the forwarder
holds a batch that is not full until `linger` has passed since the first event spooled
after the last send. Checked on a real PostgreSQL by the transactions that stored the
rows (their `xmin`): a trickle of single events goes in a few transactions, a lone event
waits its linger and no longer, and a full batch or a stop is sent at once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from agent.events import FileAction, FileEvent
from agent.store.db import make_engine, register_host, upgrade
from agent.store.forwarder import Forwarder
from agent.store.spool import Spool

HOST = "host-linger"


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    eng = make_engine(pg_url)
    upgrade(eng)
    register_host(eng, HOST, "linger")
    yield eng
    eng.dispose()


def _forwarder(engine: Engine, tmp_path: Path, linger: float, batch_size: int = 5000) -> Forwarder:
    spool = Spool(tmp_path / "spool.db", 1 << 26)
    return Forwarder(spool, engine, HOST, "linger", batch_size=batch_size, linger=linger)


def _event(i: int) -> FileEvent:
    return FileEvent(action=FileAction.WRITTEN, path=f"/src/f{i:05d}.py", size=i)


def _stored(engine: Engine) -> tuple[int, int]:
    """(rows, transactions that wrote them) in file_events."""
    with engine.connect() as c:
        rows, txs = c.execute(
            text("SELECT count(*), count(DISTINCT xmin::text) FROM file_events")
        ).one()
    return int(rows), int(txs)


def _wait_rows(engine: Engine, n: int, timeout: float) -> float:
    """Seconds until `n` rows are stored (fails past `timeout`)."""
    started = time.monotonic()
    while _stored(engine)[0] < n:
        assert time.monotonic() - started < timeout, f"only {_stored(engine)[0]} of {n} stored"
        time.sleep(0.02)
    return time.monotonic() - started


def test_a_trickle_of_events_goes_in_few_transactions(engine: Engine, tmp_path: Path) -> None:
    fwd = _forwarder(engine, tmp_path, linger=0.5)
    fwd.start(wait=10)
    try:
        started = time.monotonic()
        for i in range(25):  # one event every 40 ms for a second, as a quiet host's writer
            fwd.commit([_event(i)])
            time.sleep(0.04)
        fed = time.monotonic() - started
        _wait_rows(engine, 25, timeout=10)
    finally:
        fwd.close()
    rows, txs = _stored(engine)
    assert rows == 25
    # one transaction per linger of feeding, and one for the tail
    assert txs <= int(fed / 0.5) + 2, (txs, fed)


def test_a_lone_event_waits_its_linger_and_no_longer(engine: Engine, tmp_path: Path) -> None:
    fwd = _forwarder(engine, tmp_path, linger=0.6)
    fwd.start(wait=10)
    try:
        fwd.commit([_event(1)])
        took = _wait_rows(engine, 1, timeout=10)
    finally:
        fwd.close()
    assert took >= 0.5, f"sent after {took:.2f} s, before its linger"


def test_a_full_batch_and_a_stop_are_sent_at_once(engine: Engine, tmp_path: Path) -> None:
    fwd = _forwarder(engine, tmp_path, linger=60, batch_size=10)
    fwd.start(wait=10)
    try:
        fwd.commit([_event(i) for i in range(10)])
        _wait_rows(engine, 10, timeout=10)  # not 60 s: the batch is full
        fwd.commit([_event(10)])
        time.sleep(0.3)
        assert _stored(engine)[0] == 10  # a lone event lingers...
        started = time.monotonic()
        fwd.stop()  # ...until the stop, which sends it
        assert time.monotonic() - started < 10
        assert _stored(engine)[0] == 11
        assert len(fwd.spool) == 0
    finally:
        fwd.close()
