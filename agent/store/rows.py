"""Pure conversion of pipeline events into store rows (dicts per table).

Kept apart from the writer so it can be tested without a database. An event's row is a
projection of its record (agent/store/schema_map.py: which fields are renamed, left out
or escaped), so a field added to an event needs no edit here. Text from outside the
agent goes through `storable_text`, which no database text column refuses.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import fields
from datetime import datetime
from typing import Any

from agent.events import (
    Artefact,
    CategoryMatch,
    Event,
    FileAction,
    FileEvent,
    Flow,
)
from agent.store.schema_map import DECISION_ROW, FILE_EVENT_ROW, FLOW_ROW, storable_text

_MATCH_FIELDS = tuple(f.name for f in fields(CategoryMatch))


def file_event_row(e: FileEvent, host_id: str) -> dict[str, Any]:
    row = FILE_EVENT_ROW(e)
    row["host_id"] = host_id
    return row


def flow_row(f: Flow, host_id: str) -> dict[str, Any]:
    row = FLOW_ROW(f)
    row["host_id"] = host_id
    return row


def artefact_row(a: Artefact, seen: datetime) -> dict[str, Any] | None:
    if not a.sha256:
        return None
    return {
        "sha256": a.sha256,
        "size": a.size,
        "content_type": a.content_type,
        "kinds": list(a.kinds),
        "tags": [{"kind": t.kind, "evidence": t.evidence, "details": t.details} for t in a.tags],
        # CategoryMatch holds scalars only: a shallow dict is what asdict's deep copy gave
        "matches": [{f: getattr(m, f) for f in _MATCH_FIELDS} for m in a.matches],
        "first_seen": seen,
        "last_seen": seen,
    }


def decision_rows(e: Event, host_id: str) -> list[dict[str, Any]]:
    kind = "file_event" if isinstance(e, FileEvent) else "flow"
    return [
        {
            **DECISION_ROW(d),
            "uid": f"{e.uid}:{i}",
            "host_id": host_id,
            "time": e.time,
            "subject_kind": kind,
            "subject_uid": e.uid,
        }
        for i, d in enumerate(e.decisions)
    ]


def lineage_rows(a: Artefact, seen: datetime) -> list[dict[str, Any]]:
    if not a.sha256:
        return []
    return [
        {"parent_sha256": p, "child_sha256": a.sha256, "relation": "derived", "first_seen": seen}
        for p in a.parents
        if p != a.sha256
    ]


def file_state_changes(
    events: Iterable[Event],
) -> tuple[dict[str, dict[str, Any]], set[str]]:
    """The net effect of a batch on what the agent knows of each path.

    Returns (path -> latest known state, paths that no longer exist). Later events in
    the batch win, so "created then deleted" leaves the path deleted.
    """
    upserts: dict[str, dict[str, Any]] = {}
    deletes: set[str] = set()

    def gone(path: str) -> None:
        upserts.pop(path, None)
        deletes.add(path)

    for e in events:
        if not isinstance(e, FileEvent):
            continue
        if e.action == FileAction.DELETED:
            gone(storable_text(e.path) or "")
            continue
        if e.action == FileAction.READ:
            continue
        if e.action == FileAction.MOVED:
            gone(storable_text(e.path) or "")
            if e.dest_path is None:
                continue
        path = storable_text(e.current_path) or ""
        deletes.discard(path)
        upserts[path] = {
            "path": path,
            "size": e.size,
            "inode": e.inode,
            "mtime_ns": e.mtime_ns,
            "sha256": e.artefact.sha256 if e.artefact else None,
            "updated_at": e.time,
        }
    return upserts, deletes
