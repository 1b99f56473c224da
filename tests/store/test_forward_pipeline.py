"""The pipelined rows path (agent/store/rows_pipeline.py): exactly once under failures.

The forwarder on its PostgreSQL bulk path spools COPY rows and keeps the next batch open
(event rows COPYed, not committed) on a second connection while it finishes the current
one. A hypothesis state machine appends, forwards and injects the failures that matter
here: the backend holding the batch opened ahead is terminated (a cut connection, or the
agent killed: PostgreSQL rolls it back), the commit succeeds and the acknowledgement is
lost, and the forwarder is abandoned mid-pipeline and a new one started on the same spool
(a crash and restart). After every step: each uid stored once, the store holds a prefix
of what was spooled in order, the spool the rest, and file state matches the stored
events.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from concurrent import futures
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from sqlalchemy import Engine, text

from agent.events import Event, FileAction, FileEvent, Flow
from agent.store import spool_rows
from agent.store.db import make_engine, register_host, upgrade
from agent.store.forwarder import Forwarder
from agent.store.spool import Spool, SpooledEvent, split

HOST = "host-pipeline"
BATCH = 5


class AckLost(Exception):
    """The store committed the batch; the spool never heard (the agent died first)."""


def _event(i: int) -> Event:
    if i % 4 == 3:
        now = datetime.now(UTC)
        return Flow("tcp", "10.0.0.1", 40000 + i % 1000, "203.0.113.9", 443, now, now, i)
    if i % 6 == 5:  # removes a path written earlier: a file-state delete in the batch
        return FileEvent(action=FileAction.DELETED, path=f"/p/{i - 5:06d}")
    return FileEvent(action=FileAction.WRITTEN, path=f"/p/{i:06d}", size=i)


def _uid(record: SpooledEvent) -> str:
    """The uid in a spooled rows text: first field of its file-event or flow line."""
    sections = record.text.split(spool_rows.SECTION)
    line = sections[0] or sections[1]
    return line.split("\t", 1)[0]


APP = "pipeline-forwarder"  # the forwarder's sessions, named so that only they are cut


def _terminate_forwarder(engine: Engine) -> int:
    """Terminate the forwarder's backends (what a cut link or its death does to them)."""
    with engine.connect() as c:
        n = c.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = :app"
            ),
            {"app": APP},
        ).scalar_one()
    return int(n)


class PipelineMachine(RuleBasedStateMachine):
    engine: Engine  # the forwarder's central store
    admin: Engine  # a second engine on the same database, to look and to terminate

    def __init__(self) -> None:
        super().__init__()
        with self.admin.begin() as c:
            for t in ("file_events", "flows", "decisions", "file_state", "artefacts", "lineage"):
                c.execute(text(f"DELETE FROM {t}"))
        self.dir = Path(tempfile.mkdtemp(prefix="pipeline-sm-"))
        self.accepted: list[str] = []
        self.events: list[Event] = []  # every event spooled, in order
        self.counter = 0
        self._open()

    def _open(self) -> None:
        self.spool = Spool(self.dir / "spool.db", 1 << 30)
        self.fwd = Forwarder(self.spool, self.engine, HOST, "pipeline", batch_size=BATCH)
        assert self.fwd._as_rows, "the bulk path spools rows"

    @rule(n=st.integers(1, 17))
    def enqueue(self, n: int) -> None:
        events = [_event(self.counter + i) for i in range(n)]
        self.counter += n
        assert self.fwd.commit(events)["events_kept"] == n
        self.accepted += [e.uid for e in events]
        self.events += events

    @rule(times=st.integers(1, 4))
    def forward(self, times: int) -> None:
        for _ in range(times):
            self.fwd.forward_once()

    @rule()
    def drain(self) -> None:
        while self.fwd.forward_once():
            pass
        assert len(self.spool) == 0

    @rule(settled=st.booleans())
    def cut_connections(self, settled: bool) -> None:
        """The link dies: the batch opened ahead (if any) is rolled back by the server.

        `settled`: after that batch's COPY is done (its commit fails), else wherever the
        opening is (its COPY fails, or its reading does not reach the store yet).
        """
        ahead = self.fwd.runs.ahead
        if settled and ahead is not None:
            futures.wait([ahead])
        _terminate_forwarder(self.admin)
        try:
            while self.fwd.forward_once():
                pass
        except Exception:  # the first attempt meets the dead connection, as in the agent
            self.fwd.engine.dispose()

    @rule()
    def ack_lost(self) -> None:
        """One batch commits and its deletion from the spool fails; it is sent again."""
        spool = self.spool
        real = spool.acknowledge

        def lose(records: list[SpooledEvent]) -> None:
            spool.acknowledge = real  # type: ignore[method-assign]
            raise AckLost

        spool.acknowledge = lose  # type: ignore[method-assign]
        try:
            self.fwd.forward_once()
            # the pipelined path deletes in its ack thread: a failed delete surfaces at
            # the next attempt (after that one's commit, or before its read)
            self.fwd.forward_once()
        except AckLost:
            pass
        spool.acknowledge = real  # type: ignore[method-assign]

    @rule()
    def crash_and_restart(self) -> None:
        """The agent dies mid-pipeline (its connections end with it) and starts again."""
        self.fwd.forward_once()
        _terminate_forwarder(self.admin)  # what the process's death does to its sessions
        self.fwd.runs.ahead = None  # a dead process discards nothing: abandon it as it is
        self.spool.close()
        self.fwd.engine.dispose()
        self._open()

    @invariant()
    def exactly_once_in_order(self) -> None:
        with self.admin.connect() as c:
            stored = list(
                c.execute(text("SELECT uid FROM file_events UNION ALL SELECT uid FROM flows"))
                .scalars()
                .all()
            )
        assert len(stored) == len(set(stored)), "a uid was stored twice"
        spooled = [_uid(e) for r in self.spool.peek(10**6) for e in split(r)]
        k = len(stored)
        assert set(stored) == set(self.accepted[:k]), "the store holds a prefix, in order"
        j = len(self.accepted) - len(spooled)
        assert spooled == self.accepted[j:]
        assert j <= k, "an event left the spool before the store had it"

    @invariant()
    def file_state_follows_the_stored_events(self) -> None:
        with self.admin.connect() as c:
            stored = set(c.execute(text("SELECT uid FROM file_events")).scalars().all())
            state = dict(
                c.execute(text("SELECT path, size FROM file_state WHERE host_id = :h"), {"h": HOST})
                .tuples()
                .all()
            )
        expected: dict[str, int] = {}
        for e in self.events:
            if not isinstance(e, FileEvent) or e.uid not in stored:
                continue
            if e.action is FileAction.DELETED:
                expected.pop(e.path, None)
            else:
                expected[e.path] = e.size or 0
        assert state == expected

    def teardown(self) -> None:
        self.fwd.runs.discard()
        self.spool.close()
        self.fwd.engine.dispose()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.mark.slow
def test_pipelined_forwarding_is_exactly_once_through_failures(pg_url: str) -> None:
    engine = make_engine(pg_url, connect_args={"application_name": APP})
    upgrade(engine)
    register_host(engine, HOST, "pipeline")
    admin = make_engine(pg_url)
    machine = type("Machine", (PipelineMachine,), {"engine": engine, "admin": admin})
    store_log = logging.getLogger("agent.store")
    level = store_log.level
    store_log.setLevel(logging.CRITICAL)  # the machine's cut connections log by design
    try:
        run_state_machine_as_test(
            machine,
            settings=settings(
                max_examples=40,
                stateful_step_count=30,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
    finally:
        store_log.setLevel(level)
        engine.dispose()
        admin.dispose()
