"""`store.filestate.known_under`: the file_state rows a rescan compares with the disk,
read back from a real SQLite store the writer filled."""

from __future__ import annotations

from pathlib import Path

from agent.events import FileAction, FileEvent
from agent.store import filestate
from agent.store.db import make_engine, upgrade
from agent.store.writer import write_batch


def test_rows_under_a_prefix_of_one_host(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'agent.db'}")
    upgrade(engine)

    def written(path: str, inode: int | None = 7) -> FileEvent:
        return FileEvent(FileAction.WRITTEN, path, size=3, inode=inode, mtime_ns=9)

    write_batch(
        engine,
        "host-1",
        [
            written("/r/a"),
            written("/r/sub/b", inode=None),  # known, never seen whole
            written("/r_x/c"),  # `_` is a LIKE wildcard: must not count as under /r/
            written("/r%/d"),
            written("/rest"),
        ],
    )
    write_batch(engine, "host-2", [written("/r/other-host")])
    got = dict(filestate.known_under(engine, "host-1", "/r/"))
    assert got == {"/r/a": (7, 3, 9), "/r/sub/b": None}
    assert dict(filestate.known_under(engine, "host-1", "/r%")) == {"/r%/d": (7, 3, 9)}
    everything = dict(filestate.known_under(engine, "host-1", "/"))
    assert set(everything) == {"/r/a", "/r/sub/b", "/r_x/c", "/r%/d", "/rest"}
    engine.dispose()
