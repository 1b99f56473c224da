"""Reconciling rescans: what the file system holds against what the store knows.

After lost events (queue overflow, watch limit, a full pipeline) or on the inventory
schedule, a root is walked and each file's (inode, size, mtime_ns) compared with the
`file_state` table — the writer keeps it from every stored event — overlaid with the
sensor's memory of events emitted but perhaps not yet committed. The differences come
out as events with `origin=rescan`: a file the agent never saw or saw differently is
`written` (`created` for what is not a regular file), a file the agent knew and that is
gone is `deleted` (or `moved` with no destination, when its directory left the watched
area). `plan` is the pure comparison; `known_state` is the one store query.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from sqlalchemy import Engine, or_, select

from agent.events import FileAction
from agent.store.models import FileState
from agent.store.rows import storable_text

StatKey = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class OnDisk:
    path: str  # the real path (surrogate escapes for non-UTF-8 bytes)
    key: StatKey
    regular: bool


@dataclass(frozen=True, slots=True)
class Step:
    action: FileAction
    path: str  # real path when on disk, else the stored text
    entry: OnDisk | None


def store_key(path: str) -> str:
    """The form a path takes in the store (non-UTF-8 bytes as `\\xNN`)."""
    return storable_text(path) or ""


def under(path: str, prefix: str) -> bool:
    p = prefix.rstrip("/")
    return path == prefix or path.startswith(p + "/")


def plan(
    disk: Mapping[str, OnDisk],
    known: Mapping[str, StatKey | None],
    gone_action: FileAction = FileAction.DELETED,
) -> Iterator[Step]:
    """The events that bring `known` (store key -> state, None = gone) in line with `disk`
    (store key -> what is there now)."""
    for k, entry in disk.items():
        before = known.get(k)
        if before is None:
            action = FileAction.WRITTEN if entry.regular else FileAction.CREATED
            yield Step(action, entry.path, entry)
        elif before != entry.key:
            yield Step(FileAction.WRITTEN, entry.path, entry)
    for k, state in known.items():
        if state is not None and k not in disk:
            yield Step(gone_action, k, None)


def known_state(engine: Engine, host_id: str, prefix: str) -> dict[str, StatKey | None]:
    """file_state rows at or below `prefix` for this host, as store key -> state."""
    p = store_key(prefix).rstrip("/") or "/"
    q = select(FileState.path, FileState.inode, FileState.size, FileState.mtime_ns).where(
        FileState.host_id == host_id
    )
    if p != "/":
        q = q.where(or_(FileState.path == p, FileState.path.startswith(p + "/", autoescape=True)))
    out: dict[str, StatKey | None] = {}
    with engine.connect() as conn:
        for path, inode, size, mtime_ns in conn.execute(q):
            if inode is None or size is None or mtime_ns is None:
                out[path] = (-1, -1, -1)  # known but never fully seen: compare unequal
            else:
                out[path] = (int(inode), int(size), int(mtime_ns))
    return out
