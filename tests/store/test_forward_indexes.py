"""The indexes every forwarded file event pays for (migration 0008), and the look-ups kept.

Each index of `file_events` costs the backend CPU on every stored row, and forwarding is
bounded by that CPU: the path index (no query used it) is gone, and the sha256 one holds
only hashed events, still serving the look-up by content.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, inspect, text

from agent.store.db import make_engine, upgrade
from agent.store.partitions import partition_name


def _indexes(engine: Engine, table: str) -> dict[tuple[str, ...], str]:
    return {tuple(ix["column_names"]): ix["name"] for ix in inspect(engine).get_indexes(table)}


def test_postgresql_file_events_keep_the_query_indexes_and_hash_only_hashed_rows(
    pg_url: str,
) -> None:
    engine = make_engine(pg_url)
    keys = {("uid", "time")}  # the idempotency key (a unique constraint)
    assert set(_indexes(engine, "file_events")) == {
        ("time",),
        ("host_id", "time"),
        ("sha256",),
        *keys,
    }
    now = datetime.now(UTC)
    with engine.begin() as c:
        c.execute(
            text(
                "INSERT INTO file_events (uid, host_id, time, action, path, channel, origin, "
                "sensor, sha256) SELECT 'u' || g, 'h', :now, 'written', '/p/' || g, 'local', "
                "'watch', 'files', CASE WHEN g % 20 = 0 THEN md5(g::text) END "
                "FROM generate_series(1, 20000) g"
            ),
            {"now": now},
        )
        c.execute(text("ANALYZE file_events"))
        # each partition's copy of the parent's indexes
        defs = c.execute(
            text(
                "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) "
                "FROM pg_index i JOIN pg_inherits h ON h.inhrelid = i.indrelid "
                "WHERE h.inhparent = 'file_events'::regclass"
            )
        ).all()
        assert defs and all("(path)" not in d for _n, d in defs)
        hashed = [d for _n, d in defs if "(sha256)" in d]
        assert hashed and all("WHERE (sha256 IS NOT NULL)" in d for d in hashed)
        plan = "\n".join(
            c.execute(
                text("EXPLAIN SELECT uid FROM file_events WHERE sha256 = :s"),
                {"s": "c4ca4238a0b923820dcc509a6f75849b"},
            ).scalars()
        )
    # the day holding the rows is read through its index (empty days are scanned: no rows)
    day = partition_name("file_events", now.date())
    assert f"Index Scan using {day}_sha256_idx" in plan, plan
    assert f"Seq Scan on {day} " not in plan, plan
    engine.dispose()


def test_sqlite_indexes_after_the_same_migration(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'agent.db'}")
    upgrade(engine)
    assert set(_indexes(engine, "file_events")) == {("time",), ("host_id", "time"), ("sha256",)}
    with engine.connect() as c:
        sql = c.execute(
            text("SELECT sql FROM sqlite_master WHERE name = 'ix_file_events_sha256_set'")
        ).scalar_one()
        assert "WHERE sha256 IS NOT NULL" in sql
        c.execute(
            text(
                "INSERT INTO file_events (uid, host_id, time, action, path, channel, origin, "
                "sensor, sha256) VALUES ('a', 'h', '2026-12-07', 'written', '/x', 'local', "
                "'watch', 'files', 'ab')"
            )
        )
        plan = " ".join(
            str(r[-1])
            for r in c.execute(
                text("EXPLAIN QUERY PLAN SELECT uid FROM file_events WHERE sha256 = :s"),
                {"s": "ab"},
            )
        )
    assert "ix_file_events_sha256_set" in plan, plan
    engine.dispose()
