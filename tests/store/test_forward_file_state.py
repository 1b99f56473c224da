"""Forwarded file-state deletions: one host's paths only, whatever the host tracks.

The forwarder deletes a batch's gone paths by probing the `(host_id, path)` key per path
(agent/store/bulk.py, `_shared_text`); another host's row for the same path must stay,
and the statement must not read the host's whole file state.
"""

from __future__ import annotations

from typing import Any

from psycopg import sql
from sqlalchemy import Engine, text

from agent.events import Event, FileAction, FileEvent
from agent.store import spool_rows
from agent.store.bulk import DELETE_GONE, Mark, copy_rows
from agent.store.db import make_engine, register_host, upgrade


def _rows(host: str, events: list[Event], first_seq: int) -> spool_rows.RowsBatch:
    texts = [spool_rows.encode(host, e) or "" for e in events]
    return spool_rows.batch(texts, spool_rows.layout(), first_seq)


def _state(engine: Engine) -> set[tuple[Any, ...]]:
    with engine.connect() as c:
        return set(c.execute(text("SELECT host_id, path, size FROM file_state")).tuples())


def test_a_gone_path_leaves_the_other_hosts_row_and_probes_the_key(pg_url: str) -> None:
    engine = make_engine(pg_url)
    upgrade(engine)
    for host in ("a", "b"):
        register_host(engine, host, host)
    many = [f"/bulk/{i}" for i in range(3000)]  # a host tracking many paths
    odd = ["/t\tab", "/back\\slash", "/é"]
    for n, host in enumerate(("a", "b")):
        written: list[Event] = [
            FileEvent(action=FileAction.WRITTEN, path=p, size=n) for p in [*odd, "/keep", *many]
        ]
        copy_rows(engine, host, _rows(host, written, 1), Mark(f"spool-{host}", len(written)))
    # more gone paths than a small merge takes (values_merge.SMALL): the staged delete
    gone: list[Event] = [
        FileEvent(action=FileAction.DELETED, path=p) for p in [*odd, "/none", *many[:40]]
    ]
    with engine.begin() as c:
        c.execute(text("ANALYZE file_state"))
    rows = _rows("a", gone, 5000)
    copy_rows(engine, "a", rows, Mark("spool-a", 5000 + len(gone)))
    state = _state(engine)
    assert {(h, p) for h, p, _ in state if p in odd} == {("b", p) for p in odd}
    assert ("a", "/keep", 0) in state and ("b", "/keep", 1) in state
    assert len(state) == 2 * (len(many) + 1) + len(odd) - 40
    assert not {p for h, p, _ in state if h == "a"} & set(many[:40])
    # the plan: per gone path one probe of the key, not a scan of the host's rows
    with engine.connect() as c:
        raw = c.connection.driver_connection
        with raw.cursor() as cur:  # type: ignore[union-attr]
            cur.execute("CREATE TEMP TABLE g AS SELECT path FROM file_state LIMIT 3")
            explain = "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) " + DELETE_GONE
            cur.execute(sql.SQL(explain).format(sql.Identifier("g")), ("a",))
            plan = "\n".join(r[0] for r in cur.fetchall())
        c.rollback()
    assert "Index Scan using file_state_pkey" in plan and "loops=3" in plan, plan
    assert "Seq Scan on file_state" not in plan and "Hash" not in plan, plan
    engine.dispose()
