"""Pure conversion of pipeline events into store rows (dicts per table).

Kept apart from the writer so it can be tested without a database. Paths arrive as
`os.fsdecode()`d strings; bytes that are not UTF-8 are kept readable and lossless for
people as `\\xNN` escapes, because no database text column takes lone surrogates.
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
    ProcessInfo,
)

_MATCH_FIELDS = tuple(f.name for f in fields(CategoryMatch))


def storable_text(s: str | None) -> str | None:
    if s is None:
        return None
    if s.isascii():  # nearly every path and command line: no encoding, nothing escaped
        return s.replace("\x00", "\\x00") if "\x00" in s else s
    try:
        s.encode("utf-8")
        return s.replace("\x00", "\\x00")
    except UnicodeEncodeError:
        try:  # file names: os.fsdecode's escapes (U+DC80..U+DCFF) back to their bytes
            raw = s.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # any other lone surrogate: as \uXXXX text
            raw = s.encode("utf-8", "backslashreplace")
        return raw.decode("utf-8", "backslashreplace").replace("\x00", "\\x00")


def _process_cols(p: ProcessInfo | None) -> dict[str, Any]:
    if p is None:
        return {"pid": None, "exe": None, "cmdline": None, "uid_num": None, "user": None}
    return {
        "pid": p.pid,
        "exe": storable_text(p.exe),
        "cmdline": storable_text(p.cmdline),
        "uid_num": p.uid,
        "user": p.user,
    }


def file_event_row(e: FileEvent, host_id: str) -> dict[str, Any]:
    a = e.artefact
    return {
        "uid": e.uid,
        "host_id": host_id,
        "time": e.time,
        "action": str(e.action),
        "path": storable_text(e.path),
        "dest_path": storable_text(e.dest_path),
        "channel": str(e.channel),
        "origin": str(e.origin),
        "sensor": e.sensor,
        "size": e.size,
        "inode": e.inode,
        "device": e.device,
        "mtime_ns": e.mtime_ns,
        "sha256": a.sha256 if a else None,
        "kinds": list(a.kinds) if a else None,
        "categories": [m.category for m in a.matches] if a else None,
        "skipped": a.skipped[:32] if a and a.skipped else None,
        "skipped_at": a.skipped_at[:64] if a and a.skipped_at else None,
        **_process_cols(e.process),
    }


def flow_row(f: Flow, host_id: str) -> dict[str, Any]:
    return {
        "uid": f.uid,
        "host_id": host_id,
        "start_time": f.start,
        "end_time": f.end,
        "protocol": f.protocol,
        "src_ip": f.src_ip,
        "src_port": f.src_port,
        "dst_ip": f.dst_ip,
        "dst_port": f.dst_port,
        "bytes_out": f.bytes_out,
        "bytes_in": f.bytes_in,
        "byte_source": f.byte_source,
        "name": f.name,
        "name_source": f.name_source,
        "sni": f.sni,
        "http_host": f.http_host,
        "dest_class": f.dest_class,
        "country": f.country,
        "close_reason": f.close_reason,
        "dest_org": storable_text(f.dest_org),
        "service": storable_text(f.service),
        "service_category": f.service_category,
        "community_id": f.community_id,
        **_process_cols(f.process),
    }


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
            "uid": f"{e.uid}:{i}",
            "host_id": host_id,
            "time": e.time,
            "subject_kind": kind,
            "subject_uid": e.uid,
            "pack": d.pack,
            "rule_id": d.rule_id,
            "severity": str(d.severity),
            "action": d.action,
            "policy_version": d.policy_version,
            "reason": d.reason,
            "categories": list(d.categories),
            "regime": d.regime,
            "legal_ref": d.legal_ref,
            "item": d.item,
            "in_force": d.in_force,
            "control_state": d.control_state,
            "confidence": d.confidence,
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
