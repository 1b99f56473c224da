"""The store's side of the `maintenance` job: what keeps the local store small and fast.

SQLite: fold the write-ahead log back into the database file and refresh the planner's
statistics. PostgreSQL: the event tables' day partitions are created ahead
(partitions.ensure_ahead), called by the job directly. `store_size_bytes` is what
`egress_agent_store_size_bytes` measures at each scrape.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine

__all__ = ["checkpoint_and_optimize", "store_size_bytes"]


def checkpoint_and_optimize(engine: Engine) -> None:
    """SQLite only: `wal_checkpoint(TRUNCATE)`, then `PRAGMA optimize` (ANALYZE as needed)."""
    if engine.dialect.name != "sqlite":
        return
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        # ANALYZE reads, then writes its statistics: taking the write lock first waits for
        # the store writer (busy timeout) instead of failing at once when both would
        # upgrade a read lock
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            conn.exec_driver_sql("PRAGMA optimize")
        finally:
            conn.exec_driver_sql("COMMIT")


def store_size_bytes(engine: Engine) -> int:
    """Bytes of a SQLite store on disk (database, WAL and shared memory); 0 elsewhere."""
    db = engine.url.database
    if engine.dialect.name != "sqlite" or not db:
        return 0
    total = 0
    for suffix in ("", "-wal", "-shm"):
        try:
            total += Path(db + suffix).stat().st_size
        except OSError:
            pass
    return total
