"""The PostgreSQL bulk path (COPY + merge) stores exactly what the plain writer stores."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
import sqlalchemy.exc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from agent.events import Event, FileAction, FileEvent, ProcessInfo
from agent.store import rollup
from agent.store.bulk import Mark, copy_batch, copy_direct
from agent.store.db import make_engine, register_host, upgrade
from agent.store.writer import write_batch
from tests.store.test_event_rollup import assert_exact
from tests.store.test_spool_codec import artefacts, decisions, paths, times

HOST = "bulk-host"
# per table: the columns compared (ids are surrogates; first/last_seen are "now" per call)
SNAPSHOT = {
    "file_events": "uid, host_id, time, action, path, dest_path, channel, origin, sensor, size, "
    "inode, device, mtime_ns, sha256, kinds::text, categories::text, pid, exe, cmdline, "
    'uid_num, "user"',
    "flows": "uid, host_id, start_time, end_time, protocol, src_ip, src_port, dst_ip, dst_port, "
    "bytes_out, bytes_in, name, sni, dest_class, country, pid, exe",
    "decisions": "uid, host_id, time, subject_kind, subject_uid, pack, rule_id, severity, action, "
    "policy_version, reason, categories::text",
    "artefacts": "sha256, size, content_type, kinds::text, tags::text, matches::text",
    "lineage": "parent_sha256, child_sha256, relation",
    "file_state": "host_id, path, size, inode, mtime_ns, sha256, updated_at",
}

processes = st.builds(
    ProcessInfo,
    pid=st.none() | st.integers(0, 2**22),
    exe=st.none() | paths,
    uid=st.none() | st.integers(0, 2**31 - 1),
    user=st.none() | st.text(max_size=10),
)
file_events = st.builds(
    FileEvent,
    action=st.sampled_from(FileAction),
    path=st.sampled_from(["/a", "/b", "/c/d"]) | paths,  # repeats exercise file_state
    dest_path=st.none() | st.sampled_from(["/a", "/e"]),
    size=st.none() | st.integers(0, 2**40),
    inode=st.none() | st.integers(0, 2**40),
    process=st.none() | processes,
    time=times,
    artefact=st.none() | artefacts,
    decisions=st.lists(decisions, max_size=2).map(tuple),
)


def _snapshot(engine: Engine) -> dict[str, list[Any]]:
    with engine.connect() as c:
        return {
            t: sorted(map(tuple, c.execute(text(f"SELECT {cols} FROM {t}")).all()), key=repr)
            for t, cols in SNAPSHOT.items()
        }


def _clear(engine: Engine) -> None:
    with engine.begin() as c:
        c.execute(text("TRUNCATE " + ", ".join([*SNAPSHOT, rollup.TABLE])))


@pytest.fixture
def pg(pg_url: str) -> Any:
    engine = make_engine(pg_url)
    upgrade(engine)
    register_host(engine, HOST, "bulk")
    yield engine
    engine.dispose()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(file_events, min_size=1, max_size=30), st.integers(0, 30))
def test_copy_batch_equals_write_batch_and_is_idempotent(
    pg: Engine, events: list[Event], cut: int
) -> None:
    _clear(pg)
    try:
        write_batch(pg, HOST, events)
    except sqlalchemy.exc.DataError:  # e.g. a NUL in a text: refused both ways
        with pytest.raises(psycopg.DataError):
            copy_batch(pg, HOST, events)
        with pytest.raises(psycopg.DataError):
            copy_direct(pg, HOST, events)
        return
    expected = _snapshot(pg)
    _clear(pg)
    # a half-committed earlier attempt, then the whole batch again, then a re-send
    copy_batch(pg, HOST, events[:cut])
    copy_batch(pg, HOST, events)
    copy_batch(pg, HOST, events)
    assert _snapshot(pg) == expected
    assert_exact(pg)  # the per-host rollup counted each stored row once
    _clear(pg)
    # the forwarder's direct COPY: a batch whose tail (not its first event) is stored
    # meets the key and merges; a batch whose first event is stored merges at once
    copy_direct(pg, HOST, events[cut:])
    copy_direct(pg, HOST, events)
    copy_direct(pg, HOST, events, Mark("spool-a", 7))
    assert _snapshot(pg) == expected
    assert_exact(pg)
