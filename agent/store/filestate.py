"""File state as a reconciling rescan reads it: what the store believes of each path.

The writer keeps `file_state` from every stored file event (agent/store/writer.py); a
rescan of the file sensor compares it with what is on disk. This is the one place that
reads the table for it: rows stream in batches (a server-side cursor on PostgreSQL), so
a root holding a million files never has them in memory at once.
"""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import Engine, or_, select

from agent.store.tables import file_state

StatKey = tuple[int, int, int]  # (inode, size, mtime_ns), as the file sensor compares them


def known_under(engine: Engine, host_id: str, prefix: str) -> Iterator[tuple[str, StatKey | None]]:
    """This host's file_state rows at or below `prefix` (in its stored form, as
    `agent.store.rows.storable_text` makes it): (path, stat key), the key None for a
    path the agent knew of but never saw whole (no inode, size or mtime stored)."""
    p = prefix.rstrip("/") or "/"
    q = select(
        file_state.c.path, file_state.c.inode, file_state.c.size, file_state.c.mtime_ns
    ).where(file_state.c.host_id == host_id)
    if p != "/":
        q = q.where(
            or_(file_state.c.path == p, file_state.c.path.startswith(p + "/", autoescape=True))
        )
    with engine.connect() as conn:
        rows = conn.execution_options(stream_results=True, yield_per=5000).execute(q)
        for path, inode, size, mtime_ns in rows:
            if inode is None or size is None or mtime_ns is None:
                yield path, None
            else:
                yield path, (int(inode), int(size), int(mtime_ns))
